"""xpcnn.nn.presets: the presets, the text spec of any Sequential network, and JSON architectures."""

import json

import numpy as np
import pytest

from xpcnn.nn.presets import preset_network
from xpcnn.nn.spec import SpecError, architecture_network, parse_spec


def names(model):
    return [layer.name for layer in model.layers]


def test_spec_builds_the_network_it_names_with_sizes_from_the_images():
    model = parse_spec("conv32k3p1-relu-maxpool2-conv64k3s2nb-tanh-avgpool2s1-flatten-dense128-sigmoid-dense",
                       (3, 17, 23), 37, seed=4)
    assert names(model) == ["Conv2D", "ReLU", "MaxPool2D", "Conv2D", "Tanh", "AvgPool2D", "Flatten", "Dense",
                            "Sigmoid", "Dense"]
    conv1, conv2 = model.layers[0], model.layers[3]
    assert (conv1.in_channels, conv1.out_channels, conv1.kh, conv1.padding, conv1.bias) == (3, 32, 3, 1, True)
    assert (conv2.in_channels, conv2.stride, conv2.bias) == (32, 2, False)
    assert model.layers[5].stride == 1
    # 17x23 -> pool 8x11 -> conv s2: 3x5 -> avgpool 2 stride 1: 2x4; 64*2*4 = 512
    assert model.layers[7].in_features == 512 and model.layers[-1].out_features == 37
    assert model.infer_shape((3, 17, 23)) == (37,)


def test_spec_is_seeded_like_the_presets():
    a = parse_spec("conv4k3-relu-flatten-dense", (1, 8, 8), 3, seed=1).state_dict()
    b = parse_spec("conv4k3-relu-flatten-dense", (1, 8, 8), 3, seed=1).state_dict()
    c = parse_spec("conv4k3-relu-flatten-dense", (1, 8, 8), 3, seed=2).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a) and not np.array_equal(a["0.weight"], c["0.weight"])


def test_binary_task_ends_in_one_sigmoid_output():
    model = parse_spec("flatten-dense", (1, 4, 4), 1)
    assert names(model) == ["Flatten", "Dense", "Sigmoid"] and model.infer_shape((1, 4, 4)) == (1,)


@pytest.mark.parametrize("spec,message", [
    ("", "the network spec is empty"),
    ("conv8k3-relu-conv-dense", "token 3 'conv': not a layer token"),
    ("conv8k3-dense10", "token 2 'dense10': a dense layer needs a flat input"),
    ("conv8k40-flatten-dense", "token 1 'conv8k40': Conv2D: kernel 40x40 is larger than the padded input 28x28"),
    ("flatten-dense12-dense5", "the network ends in shape (5,); the task needs 10 output(s)"),
    ("flatten-dense-dense", "token 2 'dense': give the width"),
    ("conv8k3", "the network ends in shape (8, 26, 26)"),
    ("flatten-conv2k3", "token 2 'conv2k3': a conv layer needs images"),
    ("maxpool50-flatten-dense", "token 1 'maxpool50': MaxPool2D: kernel 50x50 does not fit"),
    ("dropout1.5-flatten-dense", "token 1 'dropout1.5'"),
])
def test_bad_specs_name_the_token(spec, message):
    with pytest.raises(SpecError) as info:
        parse_spec(spec, (1, 28, 28), 10)
    assert message in str(info.value)


def test_presets_follow_the_data():
    assert preset_network("lenet5", 10, "he", 0, (1, 28, 28)).infer_shape((1, 28, 28)) == (10,)
    assert preset_network("lenet5", 3, "he", 0, (3, 32, 32)).layers[0].padding == 0  # the original's 32x32 input
    vgg = preset_network("vgg", 10, "he", 0, (3, 32, 32))
    assert vgg.infer_shape((3, 32, 32)) == (10,) and "BatchNorm2D" in names(vgg) and "Dropout" in names(vgg)
    with pytest.raises(SpecError, match="preset 'default' is MNIST's network"):
        preset_network("default", 10, "he", 0, (3, 32, 32))
    with pytest.raises(ValueError, match="unknown preset 'resnet'"):
        preset_network("resnet", 10, "he", 0, (1, 28, 28))


def test_json_architecture_round_trips_a_model_config():
    model = parse_spec("conv4k3p1-relu-maxpool2-flatten-dense7", (2, 6, 6), 7, seed=3)
    text = json.dumps(model.config())
    rebuilt = architecture_network(text, (2, 6, 6), 7, seed=3)
    assert rebuilt.config() == model.config()
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(rebuilt.state_dict()[name], value)  # same seed, same draws


@pytest.mark.parametrize("text,message", [
    ("[", "not valid JSON"),
    ("{}", "non-empty JSON list"),
    ('[{"type": "Conv3D"}]', "layer 0 (Conv3D): unknown layer type"),
    ('[{"type": "Dense", "in_features": 5, "out_features": 10}]',
     "layer 0 (Dense): Dense: expected input of shape (N, 5)"),
    ('[{"type": "Flatten"}, {"type": "Dense", "in_features": 784, "out_features": 10, "color": 1}]',
     "layer 1 (Dense): "),
])
def test_bad_json_architectures_name_the_layer(text, message):
    with pytest.raises(SpecError) as info:
        architecture_network(text, (1, 28, 28), 10)
    assert message in str(info.value)


def test_a_layer_right_before_batch_norm_has_no_bias():
    model = parse_spec("conv4k3-bn-relu-conv4k3-relu-flatten-dense8-bn-dense", (1, 9, 9), 3)
    assert [getattr(layer, "bias", None) for layer in model.layers if layer.name in ("Conv2D", "Dense")] == \
        [False, True, False, True]
