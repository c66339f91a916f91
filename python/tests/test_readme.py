"""The README's Python quick start and docs/python.md's "Ten lines" run as written, from a folder
that looks like the repository's root (so that the scorer file they write lands in a temporary
folder)."""

import contextlib
import io
import os

import oodbox
from conftest import ROOT


def python_blocks(path):
    return [b.split("```")[0] for b in path.read_text().split("```python\n")[1:]]


def run_in(folder, code, name):
    for entry in ("models", "assets", "tests"):
        if not (folder / entry).exists():
            (folder / entry).symlink_to(ROOT / entry)
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, name, "exec"), {})
    finally:
        os.chdir(cwd)
    return out.getvalue().splitlines()


def test_the_readme_example_runs_and_prints_a_line_per_box(tmp_path):
    blocks = python_blocks(ROOT / "README.md")
    assert len(blocks) == 1, blocks
    lines = run_in(tmp_path, blocks[0], "README.md")
    assert lines, "the example printed nothing"
    assert all("p-value" in line for line in lines), lines


def test_the_ten_lines_of_the_python_docs_run_and_write_a_scorer(tmp_path):
    block = python_blocks(ROOT / "docs" / "python.md")[0]
    assert len(block.strip().splitlines()) <= 12, block
    lines = run_in(tmp_path, block, "docs/python.md")
    assert lines and all("p-value" in line for line in lines), lines
    scorer = oodbox.Scorer.load(tmp_path / "knn.safetensors")
    assert scorer.kind == "knn"
