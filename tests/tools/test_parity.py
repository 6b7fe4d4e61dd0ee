import os

import pytest

from xpcnn import data
from xpcnn.backends import available
from xpcnn.tools import parity
from xpcnn.training import Config

CPU_SPECS = ["numpy", "torch:cpu", "jax:cpu", "array_api_strict:device1"]


@pytest.fixture(scope="module")
def train():
    return data.load_embedded().train.take(300)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cpu_backends_agree(train, dtype):
    specs = available(CPU_SPECS)
    assert len(specs) >= 2
    report = parity.compare(specs, Config(epochs=1, batch_size=50, dtype=dtype), train)
    assert report["result"] == "PASS", parity.format_report(report)
    assert [b["backend"].split(":")[0] for b in report["backends"]] == [s.split(":")[0] for s in specs]
    for comparison in report["comparisons"]:
        assert set(comparison["parameters"]) == {"0.weight", "0.bias", "4.weight", "4.bias"}
    if dtype == "float64":
        worst = max(p["max_abs_diff"] for c in report["comparisons"] for p in c["parameters"].values())
        assert worst < 1e-12
    strict = [c for c in report["comparisons"] if c["backend"].startswith("array_api_strict")]
    assert all(p["max_abs_diff"] == 0 for c in strict for p in c["parameters"].values())  # numpy underneath


def test_zero_tolerance_can_fail(train):
    specs = available(["numpy", "torch:cpu", "jax:cpu"])
    if len(specs) < 2:
        pytest.skip("needs torch or jax beside numpy")
    report = parity.compare(specs[:2], Config(epochs=1, batch_size=50, dtype="float32"), train, rtol=0, atol=0)
    assert report["result"] == "FAIL"
    assert "parity FAIL" in parity.format_report(report)


def test_needs_two_backends(train):
    with pytest.raises(ValueError, match="at least two backends"):
        parity.compare(["numpy"], Config(), train)


# -- the command line: lockstep for float32, executor targets, the heat map -----------------------------

@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    """120 embedded digits as an mnist-style .npz."""
    import numpy as np

    split = data.load_embedded().train.take(120)
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, x_train=split.images, y_train=split.labels)
    return str(path)


def _usage_error(capsys, *argv) -> str:
    from xpcnn.cli import train_main

    with pytest.raises(SystemExit) as info:
        train_main(list(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_float32_compare_runs_in_lockstep(capsys, tmp_path, small_npz):
    import json

    from xpcnn.cli import train_main

    code = train_main(["--compare", "numpy,array_api_strict:device1,numpy@chunk=8", "--data", small_npz,
                       "--dtype", "float32", "--batch-size", "20", "--out", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "parity (lockstep)" in out and "lockstep parity PASS (float32" in out
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["mode"] == "lockstep" and report["steps"] == 6  # 108 training images, batches of 20
    assert [c["target"] for c in report["comparisons"]] == ["array_api_strict:device1", "numpy@chunk=8"]
    assert report["comparisons"][0]["max_ratio"] == 0
    assert len(report["comparisons"][1]["heat"]) == 6


def test_lockstep_fail_exits_1_and_names_the_layer(capsys, tmp_path, small_npz, monkeypatch):
    from xpcnn.cli import train_main
    from xpcnn.nn.dense import Dense

    original = Dense.forward

    def faulty(self, x):  # on array_api_strict only: the output one part in 1e4 too large
        out = original(self, x)
        return out * 1.0001 if "array_api_strict" in type(out).__module__ else out

    monkeypatch.setattr(Dense, "forward", faulty)
    code = train_main(["--compare", "numpy,array_api_strict", "--data", small_npz, "--dtype", "float32",
                       "--batch-size", "20", "--out", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL at step 1, layer 4.Dense, tensor out" in out


def test_executor_targets_in_a_whole_run_comparison(capsys, tmp_path, small_npz):
    from xpcnn.cli import train_main

    code = train_main(["--compare", "numpy,numpy@threads=2", "--data", small_npz, "--dtype", "float64",
                       "--batch-size", "20", "--out", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "numpy:cpu@threads=2" in out and "parity PASS (float64" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--compare", "numpy,numpy@fast"], "unknown executor 'fast'"),
    (["--compare", "numpy@threads=2,numpy", "--dtype", "float32"], "the first target is the reference"),
    (["--compare", "numpy,array_api_strict", "--threshold", "0"], "--threshold must be a number > 0"),
    (["--compare", "numpy,array_api_strict", "--lockstep", "--rtol", "1e-3"], "--rtol/--atol are"),
])
def test_compare_usage_errors(capsys, small_npz, argv, message):
    assert message in _usage_error(capsys, *argv, "--data", small_npz)


def test_lockstep_heat_map(tmp_path, small_npz):
    pytest.importorskip("matplotlib")
    from xpcnn.tools.lockstep import lockstep
    from xpcnn.tools.plots import plot_lockstep

    report = lockstep(["numpy", "array_api_strict"], Config(dtype="float32", batch_size=20),
                      data.load_embedded().train.take(60), steps=2)
    path = plot_lockstep(report, str(tmp_path / "parity.png"))
    assert os.path.getsize(path) > 1000
