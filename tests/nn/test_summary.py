"""Sequential.summary (xpcnn/nn/summary.py): output shapes against a real forward pass, parameter
counts against the state dict, multiply-adds against PyTorch's FLOP counter (2 FLOPs per
multiply-add of its convolutions and matrix products), activation memory from the shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xpcnn.nn.presets import preset_network
from xpcnn.nn.spec import parse_spec

SHAPE = (3, 13, 11)
SPECS = ["conv8k3p1-relu-maxpool2-flatten-dense",
         "conv6k3x5s2x1p1x2d2-bn-gelu-avgpool3s2p1c-conv6k3p1g3-conv6k3dw-flatten-dense12-bn-tanh-dropout0.5-dense",
         "conv8k3-leakyrelu-gap-dense"]


def test_output_shapes_are_those_of_a_forward_pass():
    model = parse_spec(SPECS[1], SHAPE, 10).to("numpy", dtype="float32")
    rows = model.summary(SHAPE).rows
    x = np.random.default_rng(0).uniform(size=(2, *SHAPE)).astype(np.float32)
    with model.inference():
        for layer, row in zip(model.layers, rows):
            x = layer(x)
            assert row.output_shape == tuple(x.shape[1:]), row
            assert row.activation_bytes == math.prod(x.shape[1:]) * 4


@pytest.mark.parametrize("spec", SPECS)
def test_parameters_are_the_state_dicts_and_mult_adds_torchs(spec):
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    model = parse_spec(spec, SHAPE, 10)
    summary = model.summary(SHAPE, "float32")
    assert summary.parameters == sum(int(np.prod(value.shape)) for _, value in model.named_parameters())
    assert [row.parameters for row in summary.rows] == [
        sum(int(np.prod(v.shape)) for v in layer.params.values()) for layer in model.layers]
    reference = torch.nn.Sequential(*(_torch_layer(torch, layer) for layer in model.layers)).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        reference(torch.zeros(1, *SHAPE))
    batchnorm = sum(row.mult_adds for row in summary.rows if row.name.startswith("BatchNorm"))  # torch: none
    assert counter.get_total_flops() == 2 * (summary.mult_adds - batchnorm)
    assert batchnorm == sum(math.prod(row.output_shape) for row in summary.rows if row.name.startswith("BatchNorm"))


def _torch_layer(torch, layer):
    nn = torch.nn
    name = layer.name
    if name == "Conv2D":
        return nn.Conv2d(layer.in_channels, layer.out_channels, (layer.kh, layer.kw), (layer.sh, layer.sw),
                         (layer.ph, layer.pw), (layer.dh, layer.dw), layer.groups, bias=layer.bias)
    if name == "Dense":
        return nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
    if name in ("MaxPool2D", "AvgPool2D"):
        pool = nn.MaxPool2d if name == "MaxPool2D" else nn.AvgPool2d
        return pool((layer.kh, layer.kw), (layer.sh, layer.sw), (layer.ph, layer.pw), ceil_mode=layer.ceil_mode)
    if name == "GlobalAvgPool2D":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if name == "BatchNorm2D":
        return nn.BatchNorm2d(layer.size)
    if name == "BatchNorm1D":
        return nn.BatchNorm1d(layer.size)
    return {"ReLU": nn.ReLU, "GELU": nn.GELU, "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid, "LeakyReLU": nn.LeakyReLU,
            "Flatten": nn.Flatten, "Dropout": nn.Dropout}[name]()


def test_a_residual_block_counts_its_paths_once():
    summary = preset_network("resnet20", 10, "he", 0, (3, 32, 32)).summary((3, 32, 32), "float32")
    assert summary.parameters == 272_474  # He et al.'s 0.27M
    top = [row for row in summary.rows if row.depth == 0]
    for row in top:
        if row.name == "Residual":
            inner = [r for r in summary.rows if r.index.startswith(row.index + ".") and r.depth == 1]
            assert row.parameters == sum(r.parameters for r in inner) and row.mult_adds == sum(r.mult_adds
                                                                                              for r in inner)
    assert summary.mult_adds == sum(row.mult_adds for row in top)
    assert 40e6 < summary.mult_adds < 42e6  # ResNet-20 on CIFAR-10: 41M multiply-adds


def test_the_table_and_the_one_line():
    summary = preset_network("default", 10, "he", 0).summary((1, 28, 28), "float32")
    text = str(summary)
    assert "0 Conv2D" in text and "16x24x24" in text and "23,466" in text
    assert summary.one_line() == ("image 1x28x28 -> 10 outputs; 23,466 parameters (91.7 KiB float32); "
                                  "253K multiply-adds per image")
    assert summary.as_dict()["layers"][0] == {"index": "0", "type": "Conv2D", "output_shape": [16, 24, 24],
                                              "parameters": 416, "mult_adds": 16 * 24 * 24 * 25,
                                              "activation_bytes": 16 * 24 * 24 * 4}


def test_a_layer_that_does_not_fit_is_named():
    model = parse_spec("conv4k3-flatten-dense", SHAPE, 10)
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2D"):
        model.summary((3, 2, 2))
