"""ONNX export (xpcnn/tools/export.py): every layer type xpcnn has, exported and run by ONNX
Runtime (CPU), gives xpcnn's own inference outputs on the same images (float32, rtol 1e-4) --
BatchNorm with its running statistics, Dropout left out, the run's normalisation folded in.  Needs
the 'export' extra (onnx, onnxruntime); CI installs it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from xpcnn import data, resolve
from xpcnn.nn import LAYERS
from xpcnn.nn.spec import parse_spec
from xpcnn.training import PRESETS, Trainer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from xpcnn.tools.export import OPSET, ExportError, export_checkpoint, to_onnx  # noqa: E402

SHAPE = (3, 13, 11)

# Between them, every registered layer type, with the options that change the graph: padding pairs,
# stride pairs, dilation, groups (and depthwise), pooling padding and ceil_mode (an average pool
# whose last window hangs over the edge), BatchNorm1D/2D with and without affine, residual blocks
# with identity and projection shortcuts, nested blocks, Dropout between layers.
SPECS = [
    "conv8k3p1-relu-maxpool2-flatten-dense",
    "conv4k3x5s2x1p1x2-bn-gelu-avgpool3s2p1c-flatten-dense12-tanh-dense",
    "conv6k3d2-leakyrelu0.2-maxpool3s2p1c-flatten-dropout0.5-dense12-bn-sigmoid-dense",
    "conv6k3-conv6k3p1g2-bnnoaffine-relu-avgpool2x3s1x2p1c-conv6k3p1dw-dropout0.3-flatten-dense12-bnnoaffine-dense",
    "conv8k3p1-bn-relu-res(conv8k3p1-bn-relu-conv8k3p1-bn)-relu-res(conv12k3s2p1-bn-relu-res(conv12k3p1-bn)|"
    "conv12k1s2-bn)-relu-gap-dense",
    "conv4k3-avgpool3s2c-maxpool2c-flatten-dense",
    "conv4k5nb-sigmoid-flatten-dense",
]


def randomised(model, rng):
    """Non-trivial BatchNorm running statistics and affine parameters (fresh ones are 0 and 1)."""
    for name, value in list(model.named_buffers()):
        new = rng.normal(size=value.shape) if name.endswith("mean") else rng.uniform(0.5, 2.0, size=value.shape)
        model.set_buffer(name, new.astype(np.float32))
    return model


def run_onnx(proto, images):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


@pytest.mark.parametrize("spec", SPECS)
def test_onnx_runtime_gives_xpcnn_outputs(spec):
    rng = np.random.default_rng(len(spec))
    model = randomised(parse_spec(spec, SHAPE, 10, seed=1).to("numpy", dtype="float32"), rng)
    images = rng.uniform(size=(5, *SHAPE)).astype(np.float32)
    with model.inference():
        expected = np.asarray(model(images))
    proto = to_onnx(model, SHAPE)
    assert proto.opset_import[0].version == OPSET
    assert "Dropout" not in {node.op_type for node in proto.graph.node}
    np.testing.assert_allclose(run_onnx(proto, images), expected, rtol=1e-4, atol=1e-6)


def test_every_registered_layer_type_is_covered():
    covered = {layer.name for spec in SPECS for layer in _all_layers(parse_spec(spec, SHAPE, 10).layers)}
    builtin = {name for name, cls in LAYERS.items() if cls.__module__.startswith("xpcnn.")}  # (not tests' own)
    assert covered == builtin - {"Sequential"}


def _all_layers(layers):
    for layer in layers:
        yield layer
        if layer.name == "Residual":
            yield from _all_layers(list(layer.inner_layers()))


def test_a_ceil_mode_average_pool_corrects_its_divisor():
    """The last window of avgpool3s2c on 11 columns hangs over: PyTorch divides by the cells it
    covers, which the graph does with a constant factor (and matches xpcnn: the test above)."""
    model = parse_spec("avgpool3s2c-flatten-dense", (1, 6, 6), 2).to("numpy", dtype="float32")
    ops = [node.op_type for node in to_onnx(model, (1, 6, 6)).graph.node]
    assert ops[:3] == ["Pad", "AveragePool", "Mul"]


def test_the_batch_size_is_free_and_normalisation_is_folded_in():
    rng = np.random.default_rng(3)
    model = parse_spec("conv4k3-relu-flatten-dense", SHAPE, 10).to("numpy", dtype="float32")
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    proto = to_onnx(model, SHAPE, {"mean": mean, "std": std})
    for batch in (1, 7):
        images = rng.uniform(size=(batch, *SHAPE)).astype(np.float32)
        normalised = (images - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1))
        with model.inference():
            expected = np.asarray(model(normalised.astype(np.float32)))
        np.testing.assert_allclose(run_onnx(proto, images), expected, rtol=1e-4, atol=1e-6)


def test_a_network_that_does_not_take_the_images_is_an_export_error():
    model = parse_spec("conv4k3-flatten-dense", SHAPE, 10)
    with pytest.raises(ExportError, match="does not take"):
        to_onnx(model, (3, 20, 20))


def test_a_normalised_float64_checkpoint_exports_as_float32_with_its_preprocessing(tmp_path):
    """A whole run's checkpoint: uint8 pixels / 255 into the file give the Predictor's probabilities."""
    config = dataclasses.replace(PRESETS["default"], epochs=1, batch_size=50, dtype="float64", normalize=True,
                                 model="conv4k3-bn-relu-maxpool2-flatten-dropout0.2-dense")
    digits = data.load_embedded().train
    with Trainer(config, resolve("numpy")) as trainer:
        trainer.fit(digits.take(100))
        trainer.save(tmp_path / "checkpoint.npz")
    written = export_checkpoint(tmp_path / "checkpoint.npz", tmp_path / "model.onnx")
    assert written["output_shape"] == [10] and written["opset"] == OPSET
    proto = onnx.load(str(tmp_path / "model.onnx"))
    props = {entry.key: entry.value for entry in proto.metadata_props}
    assert props["xpcnn.image_shape"] == "1,28,28" and props["xpcnn.class_names"].split("\n") == list("0123456789")
    from xpcnn.inference import Predictor

    images = digits.images[300:320]
    logits = run_onnx(proto, images.astype(np.float32) / 255)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    expected = Predictor(tmp_path / "checkpoint.npz", resolve("numpy")).probabilities(images)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)
