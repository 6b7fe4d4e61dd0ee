"""The recipe a run starts from: a preset's on the data it was tuned on, its own for a --model."""

from __future__ import annotations

import dataclasses

import pytest

from xpcnn.training.config import MODEL_RECIPE, PRESET_DATA, PRESETS, Config, ConfigError, default_recipe


def test_a_model_without_a_preset_gets_the_model_recipe():
    config, words = default_recipe(None, "flatten-dense", "my.npz")
    assert config is MODEL_RECIPE and words == "the --model recipe (no --preset)"
    assert (config.optimizer, config.lr, config.schedule, config.shift) == ("adam", 3e-3, "cosine", 0)


def test_a_named_preset_keeps_its_recipe_with_a_model_too():
    config, words = default_recipe("lenet5", "flatten-dense", "embedded")
    assert config == PRESETS["lenet5"] and words == "preset lenet5"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_presets_shifts_follow_only_its_own_data(preset):
    base = PRESETS[preset]
    for data in PRESET_DATA[preset]:
        assert default_recipe(preset, None, data) == (base, f"preset {preset}")
    config, words = default_recipe(preset, None, "/data/fashion")
    assert config == dataclasses.replace(base, shift=0)
    if base.shift:
        assert f"its shifts of {base.shift} pixels are for --data" in words and "none here" in words
        assert default_recipe(preset, None, "/data/fashion", shift_given=True)[1] == f"preset {preset}"
    else:
        assert words == f"preset {preset}"


def test_no_preset_and_no_model_is_the_default_preset():
    assert default_recipe(None, None, "embedded") == (PRESETS["default"], "preset default")
    assert default_recipe(None, None, "digits.npz")[0].shift == 0


def test_every_preset_names_its_data():
    assert set(PRESET_DATA) == set(PRESETS)


def test_config_fields_are_checked():
    with pytest.raises(ConfigError, match="shift must be <= 16, got 17"):
        Config(shift=17)
    with pytest.raises(ConfigError, match="classes must be <= 100000"):
        Config(classes=100_001)
