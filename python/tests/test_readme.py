"""The README's Python quick start runs as written, from the repository root."""

import contextlib
import io
import os

from conftest import ROOT


def test_the_readme_example_runs_and_prints_a_line_per_box():
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("```")[0] for b in text.split("```python\n")[1:]]
    assert len(blocks) == 1, blocks
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(blocks[0], "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    lines = out.getvalue().splitlines()
    assert lines, "the example printed nothing"
    assert all("p-value" in line for line in lines), lines
