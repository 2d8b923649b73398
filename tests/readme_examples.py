"""Run README.md's Python examples, in order, in one namespace, in a workspace holding what
they name: `clip001.mp4`, `photo.jpg`, `clips/` (class folders of one-second h264/aac clips),
`shards/` (tar shards written by webdataset, no index). Blocks that begin with `# needs the`
(a download) are left out and counted. Prints `ran N of M`; any failure is a traceback and a
non-zero exit.

    python tests/readme_examples.py README.md WORKSPACE
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import webdataset as wds

from polymodal.datasets.synthetic import encode_image, photo
from polymodal.pipelines.train.demo import make_clips

SKIP = "# needs the"


def blocks(readme: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)


def workspace(root: Path) -> None:
    make_clips(root / "clips", samples=24, classes=2)
    shutil.copy(next((root / "clips").rglob("*.mp4")), root / "clip001.mp4")
    (root / "photo.jpg").write_bytes(encode_image(photo(0, 64)))
    (root / "shards").mkdir()
    for shard in range(3):
        with wds.TarWriter(str(root / "shards" / f"shard-{shard:06d}.tar")) as writer:
            for i in range(4):
                clip = (root / "clip001.mp4").read_bytes()
                writer.write({"__key__": f"s{shard}{i}", "mp4": clip, "cls": str(i % 2)})


def main() -> int:
    readme, root = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    root.mkdir(parents=True, exist_ok=True)
    workspace(root)
    os.chdir(root)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    found = blocks(readme)
    ran = 0
    for n, code in enumerate(found):
        if code.lstrip().startswith(SKIP):
            continue
        if Path("data/train").exists() and not Path("data/raw").exists():
            for name in ("raw", "web", "studio", "audioset"):  # what later examples read
                shutil.copytree("data/train", f"data/{name}")
        exec(compile(code, f"README.md python block {n}", "exec"), namespace)
        ran += 1
    print(f"ran {ran} of {len(found)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
