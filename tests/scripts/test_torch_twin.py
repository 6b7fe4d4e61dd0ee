"""scripts/torch_twin.py builds PyTorch's twin of an xpcnn network: the same layers, parameter count
and starting weights, so the same outputs (what makes its epoch times a like-for-like comparison)."""

import numpy as np
import pytest

from xpcnn import resolve
from xpcnn.backends import to_numpy
from xpcnn.nn.presets import preset_network
from xpcnn.nn.spec import parse_spec

SPECS = [
    "conv8k3psame-bn-leakyrelu0.2-res(conv8k3p1dw-bn-gelu-conv8k1|conv8k1nb)-maxpool3s2p1"
    "-conv12k3x1s1x2p2x1d2g4-bnnoaffine-tanh-avgpool2c-flatten-dense7-relu-dropout0.3-dense",
    "conv6k5p2-sigmoid-res(conv12k3s2p1-bn-relu-conv12k3p1-bn|conv12k1s2-bn)-relu-gap-dense",
]


@pytest.mark.parametrize("spec", SPECS)
def test_the_twin_computes_what_xpcnn_computes(spec):
    torch = pytest.importorskip("torch")
    import torch_twin

    model = parse_spec(spec, image_shape=(3, 13, 11), outputs=5, seed=3).to(resolve("numpy"), dtype="float32")
    net = torch_twin.twin(model).eval()
    assert torch_twin.parameter_count(model) == sum(p.numel() for p in net.parameters())
    x = np.random.default_rng(0).standard_normal((4, 3, 13, 11)).astype(np.float32)
    with model.inference():
        ours = to_numpy(model(x))
    with torch.no_grad():
        theirs = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("preset", ["resnet20", "mobilenet", "vgg", "lenet5"])
def test_the_presets_twins_have_the_same_parameter_count(preset):
    torch = pytest.importorskip("torch")  # noqa: F841
    import torch_twin

    model = preset_network(preset, 10, "he", 0, (3, 32, 32))
    assert torch_twin.parameter_count(model) == sum(p.numel() for p in torch_twin.twin(model).parameters())
