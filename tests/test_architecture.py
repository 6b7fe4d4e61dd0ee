"""docs/architecture.md's worked examples run as written: a layer, a backend, a data format, a step
executor and a training extension, each one file's worth of code and one registration line."""

from __future__ import annotations

import os
import re

import pytest

from xpcnn.backends import ADAPTERS
from xpcnn.data import readers
from xpcnn.nn.base import LAYERS, TOKENS

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "architecture.md")


def _examples() -> dict[str, str]:
    """{heading: code} of every ```python block under a '### ' heading."""
    text = open(DOC, encoding="utf-8").read()
    found = {}
    for section in text.split("\n### ")[1:]:
        heading = section.splitlines()[0].strip()
        blocks = re.findall(r"```python\n(.*?)```", section, re.S)
        if blocks:
            found[heading] = "\n".join(blocks)
    return found


@pytest.fixture
def registries(monkeypatch):
    """Whatever an example registers is gone after it."""
    layers, tokens, adapters = dict(LAYERS), list(TOKENS), dict(ADAPTERS)
    monkeypatch.setattr(readers, "READERS", list(readers.READERS))
    yield
    LAYERS.clear()
    LAYERS.update(layers)
    TOKENS[:] = tokens
    ADAPTERS.clear()
    ADAPTERS.update(adapters)


def _run(heading: str) -> dict:
    namespace: dict = {"__name__": f"architecture_{heading.split()[-1]}"}
    exec(compile(_examples()[heading], f"docs/architecture.md ({heading})", "exec"), namespace)
    return namespace


def test_the_page_has_the_five_examples():
    assert list(_examples()) == ["A layer", "A backend", "A data format", "A step executor", "A training extension"]


def test_a_layer(registries, capsys):
    namespace = _run("A layer")
    assert capsys.readouterr().out.strip() == "['Conv2D', 'Scale', 'ReLU', 'Flatten', 'Dense']"
    assert "scale" in __import__("xpcnn.nn.spec", fromlist=["spec_help"]).spec_help()
    assert LAYERS["Scale"] is namespace["Scale"]


def test_a_backend(registries, capsys):
    _run("A backend")
    assert capsys.readouterr().out.strip() == "numpy2:cpu 3 steps"


def test_a_data_format(registries, capsys):
    _run("A data format")
    assert capsys.readouterr().out.strip() == "(1, 28, 28) 54 training images"


def test_a_step_executor(registries):
    """The clipped step trains; with a bound no gradient reaches it is the plain step, bit for bit,
    and with a small bound it is not."""
    import dataclasses

    from xpcnn import data, resolve
    from xpcnn.training import PRESETS, Trainer, WholeBatchStep

    namespace = _run("A step executor")
    clipped = namespace["trainer"].state.step_losses
    config = dataclasses.replace(PRESETS["default"], epochs=1, batch_size=50)
    train = data.load_embedded().train.take(150)
    losses = {}
    for name, executor in (("plain", WholeBatchStep()), ("unbounded", namespace["ClippedStep"](max_norm=1e30))):
        with Trainer(config, resolve("numpy"), executor=executor) as trainer:
            trainer.fit(train)
        losses[name] = trainer.state.step_losses
    assert losses["unbounded"] == losses["plain"]
    assert len(clipped) == 3 and clipped[0] == losses["plain"][0] and clipped[1:] != losses["plain"][1:]


def test_a_training_extension(registries):
    namespace = _run("A training extension")
    worst, trainer = namespace["worst"].worst, namespace["trainer"]
    assert len(worst) == 2
    for epoch, value in enumerate(worst):
        assert value == max(trainer.state.step_losses[3 * epoch:3 * epoch + 3])


# Which of xpcnn's parts each part may import at module level (imports inside functions, which run
# only when asked, are free to reach further).
LAYERS_BELOW = {
    "backends": set(),
    "io": set(),
    "nn": {"backends", "io"},
    "data": {"backends", "io"},
    "optim": {"backends", "nn"},
    "training": {"backends", "io", "nn", "data", "optim"},
    "distributed": {"backends", "io", "nn", "data", "optim", "training"},
    "tools": {"backends", "io", "nn", "data", "optim", "training"},
    "inference": {"backends", "io", "nn", "data", "optim", "training"},
    "cli": {"backends", "io", "nn", "data", "optim", "training", "distributed", "tools", "inference"},
}


def _top_level_imports(path) -> set[str]:
    """The xpcnn parts a module imports outside any function and outside ``if TYPE_CHECKING:``."""
    import ast

    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def visit(node) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(child, ast.If) and getattr(child.test, "id", "") == "TYPE_CHECKING":
                continue  # annotations only
            names = []
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [child.module] + [f"{child.module}.{alias.name}" for alias in child.names]
            elif isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "xpcnn" and len(parts) > 1 and parts[1] in LAYERS_BELOW:
                    found.add(parts[1])
            visit(child)

    visit(tree)
    return found


def test_lower_layers_never_import_higher_ones():
    from pathlib import Path

    package = Path(__file__).resolve().parent.parent / "xpcnn"
    checked = 0
    for part, allowed in LAYERS_BELOW.items():
        paths = list((package / part).rglob("*.py")) if (package / part).is_dir() else [package / f"{part}.py"]
        for path in paths:
            wrong = _top_level_imports(path) - allowed - {part}
            assert not wrong, f"{path.relative_to(package.parent)} imports {sorted(wrong)} at module level"
            checked += 1
    assert checked > 40
