"""scripts/bench.py and scripts/benchmark.py: the benchmark's rows, their fields and ratios, the
presets' PyTorch twins, peak memory and the contention mode (tiny settings: a few images)."""

import importlib.util
import json
import os
import time

import benchmark
import numpy as np
import pytest

SCRIPTS = os.path.join(os.path.dirname(__file__), "..", "..", "scripts")


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows_of(result):
    return {row["spec"]: row for row in result["rows"]}


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert load("bench").main(["--workload", "article", "--repeats", "1", "--naive-subset", "1", "--no-memory",
                               "--images", "50", "--backends", "numpy,array_api_strict:CPU_DEVICE",
                               "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = rows_of(report["results"][0])
    assert {"numpy", "array_api_strict:CPU_DEVICE", "naive", benchmark.DEFAULT, benchmark.ONE_THREAD} <= set(rows)
    assert rows[benchmark.ONE_THREAD]["speed_vs_naive"] > 1
    assert "xpcnn/naive" in capsys.readouterr().out


def test_the_rows_compare_with_pytorch_at_the_same_thread_count(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    assert load("bench").main(["--workload", "article", "--repeats", "1", "--naive-subset", "1", "--backends", "numpy",
                               "--threads", "1", "--chunk", "0", "--torch-threads", "1", "--no-memory",
                               "--out", str(out)]) == 0
    rows = rows_of(json.loads(out.read_text())["results"][0])
    held, default = rows["torch-native:cpu, 1 thread"], rows["torch-native:cpu"]
    assert held["threads"] == 1 and not held["default"] and not default["default"]
    one = rows[benchmark.ONE_THREAD]
    assert one["threads"] == 1 and not one["default"]
    assert one["speed_vs_pytorch"] == pytest.approx(held["epoch_s"] / one["epoch_s"])
    ours = rows[benchmark.DEFAULT]
    assert ours["default"] and [r["spec"] for r in rows.values() if r["default"]] == [benchmark.DEFAULT]
    assert ours["speed_vs_pytorch"] == pytest.approx(default["epoch_s"] / ours["epoch_s"])
    table = capsys.readouterr().out
    assert "* xpcnn default (train.py)" in table and "vs pytorch" in table


@pytest.mark.parametrize("workload, shape", [("lenet5", [1, 28, 28]), ("vgg", [3, 32, 32]),
                                             ("resnet20", [3, 32, 32])])
def test_the_preset_workloads_time_xpcnn_against_the_pytorch_twin(workload, shape, tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    assert load("bench").main(["--workload", workload, "--images", "4", "--batch-sizes", "4", "--repeats", "1",
                               "--backends", "numpy", "--no-memory", "--out", str(out)]) == 0
    (result,) = json.loads(out.read_text())["results"]
    assert result["workload"] == workload and result["images"] == 4 and result["image_shape"] == shape
    twin = result["twin"]
    assert twin["parameters"]["xpcnn"] == twin["parameters"]["pytorch"] > 0
    assert twin["ok"] and twin["xpcnn_losses"] == pytest.approx(twin["pytorch_losses"], rel=1e-3)
    assert twin["xpcnn_losses"][1] != twin["xpcnn_losses"][0]  # one step moved the weights
    rows = rows_of(result)
    assert {benchmark.DEFAULT, benchmark.ONE_THREAD, "numpy", "torch-native:cpu",
            "torch-native:cpu, 1 thread"} <= set(rows)
    for row in rows.values():
        assert {"threads", "default", "epoch_s", "images_per_s"} <= set(row)
        assert row["images_per_s"] == pytest.approx(4 / row["epoch_s"])
    assert rows[benchmark.DEFAULT]["executor"]
    text = capsys.readouterr().out
    count = f"{twin['parameters']['xpcnn']:,}"
    assert f"parameters: xpcnn {count}, PyTorch twin {count}" in text and "(agree)" in text


def test_the_cuda_rows_are_skipped_cleanly_without_cuda(tmp_path, capsys):
    pytest.importorskip("torch")
    from xpcnn.backends import available

    cuda = ["cupy:cuda", "torch:cuda", "jax:cuda"]
    out = tmp_path / "bench.json"
    assert load("bench").main(["--workload", "lenet5", "--images", "4", "--batch-sizes", "4", "--repeats", "1",
                               "--backends", ",".join(["numpy", *cuda]), "--torch-threads", "", "--no-memory",
                               "--out", str(out)]) == 0
    missing = [spec for spec in cuda if spec not in available(cuda)]
    text = capsys.readouterr().out
    rows = rows_of(json.loads(out.read_text())["results"][0])
    for spec in missing:
        assert spec in text.split("skipped (not available here):")[1].splitlines()[0]
        assert spec not in rows and f"{spec} compiled" not in rows


def test_nothing_to_time_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        load("bench").main(["--workload", "lenet5", "--backends", "mxnet", "--torch-devices", ""])
    assert info.value.code == 2
    assert "nothing to time" in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [(["--workload", "bench,alexnet"], "--workload"),
                                        (["--images", "0"], "--images"),
                                        (["--torch-devices", "tpu"], "--torch-devices")])
def test_bench_rejects_bad_workloads_and_counts(argv, flag, capsys):
    with pytest.raises(SystemExit) as info:
        load("bench").main(argv)
    assert info.value.code == 2
    assert flag in capsys.readouterr().err


def test_peak_memory_is_measured_above_the_starting_point():
    kept = []
    assert benchmark.peak_above_start_mb(lambda: kept.append(np.ones(60_000_000 // 8))) > 50
    kept.clear()  # the 60 MB stay allocated; the next measurement starts above them
    assert benchmark.peak_above_start_mb(lambda: np.zeros(1000).sum()) < 10


def test_each_row_peak_memory_comes_from_a_child_process_of_its_own():
    settings = {"workload": "bench", "batch": 4, "filters": 2, "dtype": "float32", "specs": ["numpy"],
                "threads": 1, "chunk": None, "torch_threads": [], "images": 8, "im2col": "auto", "torch_on": []}
    peak = benchmark.measure_memory(benchmark.ONE_THREAD, settings)
    assert peak is not None and 0 <= peak < 200


def test_the_busy_child_is_killed_however_the_block_ends():
    with benchmark.busy_core() as child:
        time.sleep(0.2)
        assert child.poll() is None  # busy
    assert child.poll() is not None
    with pytest.raises(KeyboardInterrupt), benchmark.busy_core() as interrupted:
        raise KeyboardInterrupt
    assert interrupted.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(interrupted.pid, 0)


def test_contend_times_every_row_quiet_and_contended(tmp_path, monkeypatch, capsys):
    started = []
    real = benchmark.busy_core

    def counted():
        started.append(1)
        return real()

    monkeypatch.setattr(benchmark, "busy_core", counted)
    out = tmp_path / "bench.json"
    assert load("bench").main(["--workload", "bench", "--images", "16", "--batch-sizes", "8", "--filters", "2",
                               "--repeats", "2", "--backends", "numpy", "--threads", "1", "--chunk", "0",
                               "--naive-subset", "1", "--torch-devices", "", "--no-memory", "--contend",
                               "--out", str(out)]) == 0
    assert len(started) == 2  # one busy child per repeat, around the contended round
    result = json.loads(out.read_text())["results"][0]
    assert result["contend"]
    for row in result["rows"]:
        if row["spec"] == "naive":
            continue
        assert len(row["times_contended"]) == 2
        assert row["slowdown"] == pytest.approx(row["epoch_s_contended"] / row["epoch_s"])
    assert "slowdown" in capsys.readouterr().out


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
    assert load("bench").main(["--workload", "article", "--repeats", "1", "--naive-subset", "1", "--images", "20",
                               "--backends", "numpy", "--torch-devices", "", "--no-memory", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["results"]


def test_the_table_prints_rank_rows_and_marks_the_default_row(capsys):
    rows = [{"impl": "xpcnn default (train.py)", "spec": "default", "threads": 2, "default": True, "epoch_s": 0.5,
             "images_per_s": 9000.0, "speed_vs_pytorch": 1.25, "peak_mb": 40.0},
            {"impl": "xpcnn numpy, 2 MPI ranks", "spec": "numpy, 2 ranks", "ranks": 2, "threads": 2, "default": False,
             "epoch_s": 0.4, "images_per_s": 11250.0, "speed_vs_pytorch": 1.5},
            {"impl": "pytorch nn cpu", "spec": "torch-native:cpu", "threads": 2, "default": False, "epoch_s": 0.625,
             "images_per_s": 7200.0, "peak_mb": 30.0}]
    load("bench").print_table({"workload": "bench", "images": 4500, "image_shape": [1, 28, 28], "batch": 128,
                               "filters": 8, "dtype": "float32", "repeats": 5, "rows": rows})
    lines = capsys.readouterr().out.splitlines()
    default = next(line for line in lines if "xpcnn default" in line)
    assert default.lstrip().startswith("* ") and "1.25x" in default and default.split()[-1] == "40"
    assert next(line for line in lines if "2 MPI ranks" in line).lstrip().startswith("xpcnn")
    assert "workload bench: 4500 images/epoch of 1x28x28, batch 128, filters 8" in lines[1]
