"""The README's network built in Python ("A network of your own, from training to ONNX") runs as
written, and its checkpoint round-trips: the Predictor, ``evaluate`` and the ONNX file (run by ONNX
Runtime) agree on the same images."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from xpcnn import data, resolve
from xpcnn.inference import Predictor
from xpcnn.tools.evaluate import evaluate

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def readme_block() -> str:
    blocks = [block for block in re.findall(r"```python\n(.*?)```", open(README).read(), re.S)
              if "runs/mine" in block]
    assert len(blocks) == 1, "the README has one Python example that trains a network of one's own into runs/mine"
    return blocks[0]


def test_the_readme_network_round_trips(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_block(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "image 1x28x28 -> 10 outputs" in out and "epoch   1/1" in out
    checkpoint = tmp_path / "runs" / "mine" / "checkpoint.npz"
    images = data.load_embedded().validation.images[:40]
    expected = Predictor(checkpoint, resolve("numpy")).probabilities(images)
    report = evaluate(checkpoint, "embedded", resolve("numpy"), split="validation")
    assert report.images == 500 and 0.5 < report.accuracy <= 1.0
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from xpcnn.cli import main

    assert main(["export", str(checkpoint), "mine.onnx"]) == 0
    session = ort.InferenceSession("mine.onnx", providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": images.astype(np.float32) / 255})[0]
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probabilities / probabilities.sum(axis=1, keepdims=True), expected, rtol=1e-4,
                               atol=1e-6)
