"""The README's Python example runs as written."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_readme_python_example_runs(capsys):
    pytest.importorskip("torch")
    blocks = re.findall(r"```python\n(.*?)```", open(README).read(), re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert "tensor(" in capsys.readouterr().out
