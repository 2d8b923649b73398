"""The folder layout is the architecture: these tests fail when an import crosses a layer the
wrong way (CONTRIBUTING.md, "Where things go")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from testdata import REPO

PACKAGE = REPO / "polymodal"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node but those under `if TYPE_CHECKING:` (annotations only, never imported)."""
    nodes: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def _imports(path: Path) -> set[str]:
    """Modules `path` imports when it runs (absolute names, relative imports resolved),
    anywhere in the file: lazy imports inside functions count too."""
    tree = ast.parse(path.read_text())
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def _files(sub: str) -> list[Path]:
    return sorted((PACKAGE / sub).rglob("*.py"))


def test_codecs_import_nothing_above_them_and_no_torch():
    for path in _files("codecs"):
        for name in _imports(path):
            assert not name.startswith("torch"), f"{path.name} imports {name}"
            if name.startswith("polymodal"):
                assert name.startswith("polymodal.codecs"), f"{path.name} imports {name}"


def test_importing_the_codecs_loads_no_torch():
    code = (
        "import sys, polymodal.codecs.audio, polymodal.codecs.video, polymodal.codecs.images, "
        "polymodal.codecs.points, polymodal.codecs.encoders; "
        "print(sorted(m for m in sys.modules if m == 'torch' or "
        "(m.startswith('polymodal.') and not m.startswith('polymodal.codecs'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("below", ["datasets", "pipelines", "cli"])
def test_adapters_never_import_datasets_or_pipelines(below):
    for path in _files("adapters"):
        for name in _imports(path):
            assert not name.startswith(f"polymodal.{below}"), f"{path.name} imports {name}"


def test_the_model_imports_nothing_of_the_data_side():
    for path in _files("perceiver"):
        for name in _imports(path):
            if name.startswith("polymodal."):
                assert name.startswith(("polymodal.perceiver", "polymodal.errors")), (
                    f"{path.name} imports {name}"
                )


def test_no_two_modules_import_each_other():
    """Not even lazily: a module that must import another inside a function to dodge a loop
    is in the wrong place (writer ↔ parquet, stream ↔ loader, config ↔ tasks once were)."""
    graph = {
        _module(p): {n for n in _imports(p) if n.startswith("polymodal")}
        for p in PACKAGE.rglob("*.py")
    }
    loops = sorted(
        (a, b)
        for a, deps in graph.items()
        for b in deps
        if a < b
        and b in graph
        and a in graph[b]
        and not b.startswith(a + ".")  # a package and its own modules
        and not a.startswith(b + ".")
    )
    assert loops == []


def _wing(name: str) -> list[Path]:
    return _files(f"pipelines/{name}")


@pytest.mark.parametrize(
    ("wing", "never"),
    [("stream", ("train", "preprocess")), ("preprocess", ("train",))],
)
def test_the_wings_import_only_downwards(wing, never):
    """The streaming reader knows no trainer and no shard-to-shard job; the jobs know no
    trainer (materialise reads the stream's field spec, not the training config)."""
    for path in _wing(wing):
        for name in _imports(path):
            for other in never:
                assert not name.startswith(f"polymodal.pipelines.{other}"), (
                    f"pipelines/{wing}/{path.name} imports {name}"
                )


def test_only_training_imports_the_model():
    """The Perceiver is the trainer's: data, jobs, the stream and the command line reach it
    only through `pipelines/train`. Adapters build their device half from `perceiver.io`,
    the input encoders, never the model."""
    for path in PACKAGE.rglob("*.py"):
        inside = path.relative_to(PACKAGE).as_posix()
        if inside.startswith(("perceiver/", "pipelines/train/")) or inside == "__init__.py":
            continue
        allowed = ("polymodal.perceiver.io",) if inside.startswith("adapters/") else ()
        for name in _imports(path):
            if name.startswith("polymodal.perceiver"):
                assert allowed and name.startswith(allowed), f"{inside} imports {name}"


def test_build_and_index_load_no_torch(tmp_path):
    """Making a dataset is data work: `polymodal build` and `polymodal index` run in a real
    process and finish without torch ever being imported (it costs seconds at start)."""
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "src" / label).mkdir(parents=True)
        for i in range(2):
            pixels = Image.new("RGB", (8, 8), (40 * i, 200, 40))
            pixels.save(tmp_path / "src" / label / f"{label}{i}.png")
    code = (
        "import sys; from polymodal.cli import main; "
        "rc = main(sys.argv[1:]); print('torch' in sys.modules); sys.exit(rc)"
    )
    out = tmp_path / "ds"
    for argv in (["build", str(tmp_path / "src"), str(out), "--quiet"], ["index", str(out)]):
        run = subprocess.run(
            [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=False
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip().splitlines()[-1] == "False", f"{argv[0]} imported torch"
    assert (out / "index.json").exists()
