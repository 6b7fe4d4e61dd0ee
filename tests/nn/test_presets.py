"""The residual and depthwise-separable presets (xpcnn/nn/presets.py): resnet20 (He et al. 2016's CIFAR
ResNet, option B projections) and mobilenet, for any C x H x W input: their structure, output shapes
and parameter counts, and one forward and backward pass."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from xpcnn.nn import Conv2D, GlobalAvgPool2D, Residual, Sequential
from xpcnn.nn.presets import mobilenet_spec, preset_network, resnet20_spec

# (preset, image shape) -> parameters for 10 classes (BatchNorm's scale and shift counted, running
# statistics not): resnet20's are the paper's 0.27M (269,722 with option A's parameter-free
# shortcuts) plus the two 1x1 projections with their batch normalisation, (16*32 + 2*32) + (32*64 + 2*64).
COUNTS = {
    ("resnet20", (3, 32, 32)): 272_474,
    ("resnet20", (1, 28, 28)): 272_186,
    ("mobilenet", (3, 32, 32)): 67_914,
    ("mobilenet", (1, 28, 28)): 67_338,
}


def count(model: Sequential) -> int:
    return sum(int(np.prod(value.shape)) for _, value in model.named_parameters())


@pytest.mark.parametrize("preset,shape", list(COUNTS))
def test_output_shape_and_parameter_count(preset, shape):
    model = preset_network(preset, 10, "he", 0, shape)
    assert model.infer_shape(shape) == (10,)
    assert count(model) == COUNTS[preset, shape]
    binary = preset_network(preset, 1, "he", 0, shape)
    assert binary.infer_shape(shape) == (1,) and binary.layers[-1].name == "Sigmoid"


def test_resnet20_is_three_stages_of_three_basic_blocks():
    model = preset_network("resnet20", 10, "he", 0, (3, 32, 32))
    blocks = [layer for layer in model.layers if isinstance(layer, Residual)]
    assert len(blocks) == 9 and isinstance(model.layers[-2], GlobalAvgPool2D) and model.layers[-1].name == "Dense"
    assert [layer.name for layer in model.layers[:3]] == ["Conv2D", "BatchNorm2D", "ReLU"]
    shape = (16, 32, 32)
    for index, block in enumerate(blocks):
        assert [layer.name for layer in block.body.layers] == ["Conv2D", "BatchNorm2D", "ReLU", "Conv2D",
                                                               "BatchNorm2D"]
        first = block.body.layers[0]
        projects = index in (3, 6)  # the first block of stages 2 and 3
        assert first.out_channels == 16 * 2 ** (index // 3) and (first.stride in (2, (2, 2))) == projects
        if projects:
            conv, bn = block.shortcut.layers
            assert isinstance(conv, Conv2D) and (conv.kh, conv.kw) == (1, 1) and not conv.bias
            assert bn.name == "BatchNorm2D"
        else:
            assert block.shortcut is None
        shape = block.infer_shape(shape)
    assert shape == (64, 8, 8)
    weighted = [layer for layer in model.layers if layer.name == "Conv2D"] + [
        layer for block in blocks for layer in block.body.layers if layer.name == "Conv2D"]
    assert len(weighted) + 1 == 20  # 19 convolutions on the main path + the dense layer
    assert not any(conv.bias for conv in weighted)  # batch normalisation follows each


def test_mobilenet_is_depthwise_separable():
    model = preset_network("mobilenet", 10, "he", 0, (3, 32, 32))
    convs = [layer for layer in model.layers if isinstance(layer, Conv2D)]
    depthwise = [conv for conv in convs if conv.config().get("groups", 1) > 1]
    assert [conv.in_channels for conv in depthwise] == [32, 64, 128, 128]
    assert all(conv.config()["groups"] == conv.in_channels == conv.out_channels for conv in depthwise)
    pointwise = [conv for conv in convs if (conv.kh, conv.kw) == (1, 1)]
    assert [conv.out_channels for conv in pointwise] == [64, 128, 128, 256]
    assert model.infer_shape((3, 32, 32)) == (10,) and model.layers[-2].infer_shape((256, 8, 8)) == (256,)


def test_specs_are_the_presets_text():
    assert resnet20_spec().count("res(") == 9 and resnet20_spec().count("|") == 2
    assert mobilenet_spec().count("dw") == 4 and mobilenet_spec().endswith("-gap-dense")


@pytest.mark.parametrize("preset", ["resnet20", "mobilenet"])
def test_forward_backward_and_records(preset):
    """Odd sizes too (7x9): the strided blocks' paths agree for any size."""
    model = preset_network(preset, 4, "he", 0, (2, 7, 9))
    out = model(np.random.default_rng(0).normal(size=(2, 2, 7, 9)))
    assert out.shape == (2, 4) and np.isfinite(out).all()
    model.backward(np.ones_like(out), input_grad=False)
    assert dict(model.named_gradients()).keys() == dict(model.named_parameters()).keys()
    again = Sequential.from_config(json.loads(json.dumps(model.config())))
    again.load_state_dict(model.state_dict())
    x = np.random.default_rng(1).normal(size=(2, 2, 7, 9))
    with model.inference(), again.inference():
        np.testing.assert_array_equal(again(x), model(x))


# The records the original presets' networks have always had in checkpoints (written by xpcnn before
# Conv2D, pooling and BatchNorm took new options): a resume compares the stored architecture with the
# rebuilt one exactly, so a plain layer's record must not change when options are added.
STORED_RECORDS = os.path.join(os.path.dirname(__file__), "stored_records.json")


@pytest.mark.parametrize("preset", ["article", "default", "lenet5", "vgg"])
def test_the_records_of_plain_layers_are_the_ones_checkpoints_store(preset):
    with open(STORED_RECORDS, encoding="utf-8") as handle:
        stored = json.load(handle)[preset]
    shape = (3, 32, 32) if preset == "vgg" else (1, 28, 28)
    model = preset_network(preset, 1 if preset == "article" else 10, "he", 0, shape)
    assert json.loads(json.dumps(model.config())) == stored
