"""The README's Python example runs as written."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_readme_python_example_runs(capsys, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)  # the examples write runs/...
    blocks = re.findall(r"```python\n(.*?)```", open(README).read(), re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "tensor(" in out and "epoch   1/" in out
    assert (tmp_path / "runs" / "py" / "checkpoint.npz").exists() and (tmp_path / "runs" / "py" / "log.jsonl").exists()
