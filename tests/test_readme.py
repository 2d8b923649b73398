"""README's Python examples run as written, in order, on media made here (a real process: an
example registers nothing in the test process, and its Ray and DataLoader workers are its own).
The one that needs a download from the Hugging Face Hub is left out."""

import subprocess
import sys

import pytest
from testdata import REPO, TESTS


@pytest.mark.slow
def test_the_readmes_python_examples_run(tmp_path):
    readme = REPO / "README.md"
    total = readme.read_text().count("```python\n")
    skipped = readme.read_text().count("```python\n# needs the")
    run = subprocess.run(
        [sys.executable, str(TESTS / "readme_examples.py"), str(readme), str(tmp_path / "ws")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == f"ran {total - skipped} of {total}"
    assert skipped <= 1
