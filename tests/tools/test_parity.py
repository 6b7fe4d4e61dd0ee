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
