"""xpcnn.nn.presets: the presets, the text spec of any Sequential network, and JSON architectures."""

import json
import os

import numpy as np
import pytest

from xpcnn.nn.presets import preset_network
from xpcnn.nn.spec import (
    SpecError,
    activation_values,
    architecture_network,
    check_parameter_count,
    json_depth,
    parameter_count,
    parse_spec,
    read_model_file,
)


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
    ("{}", 'or {"layers": [...]} with nothing else'),
    ("[]", "non-empty list of layer records"),
    ('{"layers": [{"class_name": "Dense", "config": {"units": 10}}]}', "layer 0 is a Keras record"),
    ('[{"type": ["Dense"]}]', 'layer 0 (["Dense"]): unknown layer type'),
    ('[{"type": "Flatten"}, {"type": "Dense", "out_features": 1' + "0" * 400 + '}]',
     "layer 1 (Dense): Dense: its weight of shape 784x~10^400 would hold ~10^402 values, more than the cap"),
    ("[" * 40 + "]" * 40, "JSON nested 40 levels deep, more than 32"),
    ('[{"type": "Flatten", "x": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}]', "layer 0 (Flatten): got an unexpected"),
    ('[{"type": "Conv2D", "out_channels": 4, "kernel_size": 3}, {"type": "Dense", "out_features": 10}]',
     "layer 1 (Dense): its input is 4x26x26, not a vector: put {\"type\": \"Flatten\"} before it"),
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


# -- the JSON model format (docs/models.md): inferred input sizes, {"layers": ...}, files, caps --------------

def test_records_without_input_sizes_take_them_from_shape_inference():
    records = [{"type": "Conv2D", "out_channels": 4, "kernel_size": 3, "padding": 1}, {"type": "BatchNorm2D"},
               {"type": "ReLU"}, {"type": "MaxPool2D", "kernel_size": 2}, {"type": "Flatten"},
               {"type": "Dense", "out_features": 6}, {"type": "BatchNorm1D"}, {"type": "Dense", "out_features": 3}]
    model = architecture_network(json.dumps({"layers": records}), (2, 8, 8), 3)
    config = model.config()
    assert config[0]["in_channels"] == 2 and config[1]["channels"] == 4
    assert config[5]["in_features"] == 4 * 4 * 4 and config[6]["features"] == 6 and config[7]["in_features"] == 6
    assert model.infer_shape((2, 8, 8)) == (3,)


def test_residual_paths_take_their_input_sizes_from_the_blocks_input():
    block = {"type": "Residual",
             "body": [{"type": "Conv2D", "out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1},
                      {"type": "BatchNorm2D"}, {"type": "ReLU"}],
             "shortcut": [{"type": "Conv2D", "out_channels": 8, "kernel_size": 1, "stride": 2}]}
    records = [{"type": "Conv2D", "out_channels": 4, "kernel_size": 3, "padding": 1}, block,
               {"type": "GlobalAvgPool2D"}, {"type": "Dense", "out_features": 3}]
    config = architecture_network(records, (1, 8, 8), 3).config()
    body, shortcut = config[1]["body"], config[1]["shortcut"]
    assert body[0]["in_channels"] == 4 and body[1]["channels"] == 8 and shortcut[0]["in_channels"] == 4
    assert config[3]["in_features"] == 8
    spelled = parse_spec("conv4k3p1-res(conv8k3s2p1-bn-relu|conv8k1s2)-gap-dense", (1, 8, 8), 3)
    assert spelled.config()[1]["body"][0]["in_channels"] == 4
    assert [r["type"] for r in spelled.config()[1]["body"]] == [r["type"] for r in body]


def test_a_spec_that_is_json_is_read_as_layer_records():
    text = '[{"type": "Flatten"}, {"type": "Dense", "out_features": 5}]'
    assert [layer.name for layer in parse_spec(text, (1, 4, 4), 5).layers] == ["Flatten", "Dense"]
    assert parse_spec("  {\"layers\": " + text + "}", (1, 4, 4), 5).config()[1]["in_features"] == 16


@pytest.mark.parametrize("spec,message", [
    ("conv1000000000000k3-relu-flatten-dense",
     "token 1 'conv1000000000000k3': a weight of shape (1,000,000,000,000, 1, 3, 3) would hold "
     "9,000,000,000,000 values, more than the cap of 2,147,483,647"),
    ("flatten-dense1000000000000-dense", "token 2 'dense1000000000000': a weight of shape (64, 1,000,000,000,000)"),
    ("conv1k1p30000-relu-flatten-dense",
     "token 1 'conv1k1p30000': Conv2D: its output per image, of shape 1x60,008x60,008, would hold 3,600,960,064"),
])
def test_sizes_are_checked_before_anything_is_allocated(spec, message):
    with pytest.raises(SpecError) as info:
        parse_spec(spec, (1, 8, 8), 10)
    assert message in str(info.value)


def test_the_parameter_count_has_a_cap():
    layers = parse_spec("flatten-dense7", (1, 4, 4), 7).layers
    assert check_parameter_count(layers) == 16 * 7 + 7 == parameter_count(layers)
    with pytest.raises(ValueError, match="the network would have 119 parameters, more than the cap of 100"):
        check_parameter_count(layers, limit=100)


def test_activation_values_sum_each_layers_output():
    model = parse_spec("conv3k3-relu-maxpool2-flatten-dense5", (1, 8, 8), 5)
    assert activation_values(model, (1, 8, 8)) == 3 * 6 * 6 * 2 + 3 * 3 * 3 * 2 + 5  # conv, relu, pool, flatten, dense


def test_json_depth_skips_strings():
    assert json_depth('[{"a": [1, "]]]][[[[[["]}]') == 3
    assert json_depth("[]") == 1 and json_depth('"[["') == 0


def test_model_files_are_bounded_and_regular(tmp_path):
    good = tmp_path / "m.json"
    good.write_text('{"layers": [{"type": "Flatten"}, {"type": "Dense", "out_features": 3}]}')
    assert read_model_file(str(good)) == [{"type": "Flatten"}, {"type": "Dense", "out_features": 3}]
    with pytest.raises(SpecError, match="more than a model file's cap of 10"):
        read_model_file(str(good), limit=10)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(SpecError, match="fifo.json: not a regular file"):
        read_model_file(str(fifo))  # refused before it is opened: opening a FIFO blocks
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(SpecError, match="deep.json: JSON nested 100000 levels deep, more than 32"):
        read_model_file(str(deep))
    with pytest.raises(SpecError, match="missing.json: cannot read: No such file"):
        read_model_file(str(tmp_path / "missing.json"))
