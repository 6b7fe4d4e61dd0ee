import numpy as np
import pytest
from helpers import normal_array, xp_assert_close

import xpcnn
from xpcnn import (
    AvgPool2D,
    Conv2D,
    Dense,
    Flatten,
    MaxPool2D,
    ReLU,
    Sequential,
    Sigmoid,
    Tanh,
    assert_gradients_ok,
    to_numpy,
)

# -- the article's worked example -------------------------------------------------

def test_article_worked_example(backend):
    conv = Conv2D(1, 1, 2, bias=False)
    conv.params["weight"] = np.array([[[[1.0, 1.0], [0.0, 1.0]]]])
    conv.to(backend, dtype="float64")
    image = backend.asarray(np.array([[[[1, 7, 2], [11, 1, 23], [2, 2, 2]]]]), "float64")
    out = conv(image)
    xp_assert_close(out, [[[[9, 32], [14, 26]]]], xp=backend.xp, device=backend.device, dtype="float64", rtol=0)


@pytest.mark.parametrize("n,f,s,p", [(28, 5, 1, 0), (3, 2, 1, 0), (7, 3, 2, 1), (8, 4, 3, 2), (5, 5, 1, 0)])
def test_output_size_formula(n, f, s, p, rng):
    conv = Conv2D(1, 2, f, stride=s, padding=p)
    out = conv(rng.standard_normal((1, 1, n, n)))
    expected = (n + 2 * p - f) // s + 1
    assert out.shape == (1, 2, expected, expected)
    if s == 1 and p == 0:
        assert expected == n - f + 1  # the article's n - f + 1


# -- gradient checks on every backend --------------------------------------------

CONV_CASES = [
    dict(in_channels=1, out_channels=3, kernel_size=5, stride=1, padding=0, shape=(2, 1, 8, 8)),
    dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1, shape=(3, 2, 7, 7)),
    dict(in_channels=3, out_channels=2, kernel_size=(2, 3), stride=1, padding=2, shape=(2, 3, 5, 6)),
    dict(in_channels=2, out_channels=2, kernel_size=3, stride=3, padding=0, shape=(1, 2, 9, 10), bias=False),
]


@pytest.mark.parametrize("im2col", ["slices", "gather"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"k{c['kernel_size']}s{c['stride']}p{c['padding']}")
def test_conv_gradients(backend, rng, case, im2col):
    case = dict(case)
    shape = case.pop("shape")
    conv = Conv2D(**case, rng=3, im2col=im2col)
    assert_gradients_ok(conv, normal_array(backend, rng, shape))


def test_stacked_conv_gradients(backend, rng):
    model = Sequential(Conv2D(1, 3, 3, padding=1, rng=1), Tanh(), Conv2D(3, 2, 3, stride=2, rng=2), Sigmoid())
    results = assert_gradients_ok(model, normal_array(backend, rng, (2, 1, 7, 7)))
    assert {r.name for r in results} == {"input", "0.weight", "0.bias", "2.weight", "2.bias"}


@pytest.mark.parametrize("layer", [
    lambda: Dense(6, 4, rng=5), lambda: Dense(6, 1, bias=False, rng=5),
    lambda: Sigmoid(), lambda: Tanh(), lambda: ReLU(), lambda: Flatten(),
], ids=["dense", "dense-nobias", "sigmoid", "tanh", "relu", "flatten"])
def test_simple_layer_gradients(backend, rng, layer):
    layer = layer()
    shape = (3, 6) if isinstance(layer, Dense) else (3, 2, 2, 3)
    assert_gradients_ok(layer, normal_array(backend, rng, shape))


@pytest.mark.parametrize("cls,kernel,stride,shape", [
    (MaxPool2D, 2, None, (2, 3, 6, 6)), (MaxPool2D, 3, 2, (2, 2, 7, 8)),
    (AvgPool2D, 2, None, (2, 3, 6, 6)), (AvgPool2D, 3, 1, (1, 2, 5, 5)),
])
def test_pool_gradients(backend, rng, cls, kernel, stride, shape):
    assert_gradients_ok(cls(kernel, stride), normal_array(backend, rng, shape))


def test_article_network_gradients(backend, rng):
    """The article's network (conv 5x5 x3, sigmoid, dense -> 1, sigmoid) with its loss."""
    model = Sequential(Conv2D(1, 3, 5, bias=False, init="uniform", rng=0), Sigmoid(), Flatten(),
                       Dense(3 * 6 * 6, 1, init="uniform", rng=1), Sigmoid())
    x = backend.asarray(rng.random((4, 1, 10, 10)), "float64")
    target = backend.asarray(np.array([[0.0], [1.0], [1.0], [0.0]]), "float64")
    assert_gradients_ok(model, x, loss=xpcnn.MSELoss(), target=target, rtol=1e-4)


# -- input_grad=False: every layer takes it ----------------------------------------

LAYERS_AND_SHAPES = [
    (lambda: Conv2D(2, 3, 3, padding=1, rng=1), (2, 2, 6, 6)),
    (lambda: Dense(6, 4, rng=5), (3, 6)),
    (lambda: Sigmoid(), (3, 2, 2, 3)), (lambda: Tanh(), (3, 2, 2, 3)), (lambda: ReLU(), (3, 2, 2, 3)),
    (lambda: Flatten(), (3, 2, 2, 3)), (lambda: MaxPool2D(2), (2, 2, 4, 6)), (lambda: AvgPool2D(2), (2, 2, 4, 6)),
]


@pytest.mark.parametrize("make,shape", LAYERS_AND_SHAPES,
                         ids=["conv", "dense", "sigmoid", "tanh", "relu", "flatten", "maxpool", "avgpool"])
def test_backward_without_input_grad(backend, rng, make, shape):
    """``backward(g, input_grad=False)`` returns None, leaves the parameter gradients bit for bit
    what ``backward(g)`` gives, and lets go of what forward saved, like a full backward."""
    layer = make().to(backend, dtype="float64")
    x = normal_array(backend, rng, shape)
    grad = backend.xp.ones_like(layer(x))
    full = layer.backward(grad)
    assert full is not None and full.shape == x.shape and full.dtype == x.dtype
    expected = dict(layer.grads)
    layer(x)
    assert layer.backward(grad, input_grad=False) is None
    assert set(layer.grads) == set(expected)
    for name, value in layer.grads.items():
        xp_assert_close(value, expected[name], rtol=0)
    with pytest.raises(RuntimeError, match=f"{layer.name}.backward: no forward pass"):
        layer.backward(grad, input_grad=False)


# -- dtype, device and portability -------------------------------------------------

def test_outputs_keep_dtype_and_device(backend, rng, dtype):
    """Every layer's output and gradients stay in the input's namespace, device and dtype, with the
    numbers of a NumPy float64 run (to float32 rounding)."""
    def model():
        return Sequential(Conv2D(1, 2, 3, padding=1, rng=1), ReLU(), MaxPool2D(2), AvgPool2D(2), Sigmoid(),
                          Flatten(), Dense(8, 3, rng=2), Tanh())
    host_x = rng.standard_normal((2, 1, 8, 8))
    reference, tested = model(), model().to(backend, dtype=dtype)
    expected_out = reference(host_x)
    expected = [expected_out, reference.backward(np.ones_like(expected_out)), *reference.grads.values()]
    out = tested(backend.asarray(host_x, dtype))
    actual = [out, tested.backward(backend.xp.ones_like(out)), *tested.grads.values()]
    assert list(tested.grads) == list(reference.grads)
    tolerance = dict(rtol=1e-4, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
    for name, got, want in zip(["output", "input grad", *tested.grads], actual, expected):
        xp_assert_close(got, want, xp=backend.xp, device=backend.device, dtype=dtype, err_msg=name, **tolerance)


def test_sigmoid_is_finite_and_quiet_at_extremes(backend):
    import warnings
    x = backend.asarray(np.array([-1e4, -800.0, -40.0, 0.0, 40.0, 800.0, 1e4]), "float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = Sigmoid()(x)
    assert np.all(np.isfinite(to_numpy(out)))
    xp_assert_close(out, [0, 0, 0, 0.5, 1, 1, 1], xp=backend.xp, device=backend.device, dtype="float32",
                    rtol=1e-7, atol=1e-7)


def test_maxpool_routes_gradient_to_the_maximum(backend):
    x = backend.asarray(np.array([[[[1.0, 5.0], [3.0, 2.0]]]]), "float64")
    pool = MaxPool2D(2)
    on_backend = dict(xp=backend.xp, device=backend.device, dtype="float64", rtol=0)
    xp_assert_close(pool(x), [[[[5.0]]]], **on_backend)
    grad = pool.backward(backend.asarray(np.array([[[[2.0]]]]), "float64"))
    xp_assert_close(grad, [[[[0.0, 2.0], [0.0, 0.0]]]], **on_backend)


POOL_CASES = [((2, 3, 6, 6), 2, None), ((2, 2, 7, 9), 2, None), ((1, 2, 7, 8), 3, 2), ((2, 1, 6, 7), (2, 3), 1),
              ((1, 2, 9, 9), 2, 3), ((2, 2, 5, 5), 1, None)]


def naive_pool(x, g, kh, kw, stride, maximum):
    """Window by window: the max (or mean), and the gradient to the window's first maximum (or
    spread evenly), added up where windows overlap."""
    n, c, h, w = x.shape
    out_h, out_w = (h - kh) // stride + 1, (w - kw) // stride + 1
    out, grad = np.zeros((n, c, out_h, out_w)), np.zeros_like(x)
    for b in range(n):
        for ch in range(c):
            for r in range(out_h):
                for s in range(out_w):
                    window = x[b, ch, r * stride:r * stride + kh, s * stride:s * stride + kw]
                    if maximum:
                        out[b, ch, r, s] = window.max()
                        i, j = divmod(int(np.argmax(window)), kw)  # the first maximum, row by row
                        grad[b, ch, r * stride + i, s * stride + j] += g[b, ch, r, s]
                    else:
                        out[b, ch, r, s] = window.mean()
                        rows, cols = slice(r * stride, r * stride + kh), slice(s * stride, s * stride + kw)
                        grad[b, ch, rows, cols] += g[b, ch, r, s] / (kh * kw)
    return out, grad


@pytest.mark.parametrize("windows", ["views", "im2col"])
@pytest.mark.parametrize("maximum", [True, False], ids=["max", "avg"])
@pytest.mark.parametrize("shape,kernel,stride", POOL_CASES,
                         ids=[f"{s[2]}x{s[3]}-k{k}-s{st}" for s, k, st in POOL_CASES])
def test_pools_match_a_naive_loop_with_ties(backend, rng, shape, kernel, stride, maximum, windows):
    """Max and average pooling window by window, on inputs full of ties (ReLU's zeros, repeated
    values): each window's gradient goes to its first maximum only, as in PyTorch; windows that
    overlap add up; rows and columns no window covers get none.  Both ways of reading the windows
    (views on a CPU, im2col on a GPU) on every backend."""
    host = np.maximum(np.round(rng.standard_normal(shape) * 2), 0.0)  # about half zeros, many equal values
    layer = (MaxPool2D if maximum else AvgPool2D)(kernel, stride)
    layer.windows = windows
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = backend.asarray(host, "float64")
    out = layer(x)
    g_host = rng.standard_normal(tuple(out.shape))
    expected_out, expected_grad = naive_pool(host, g_host, kh, kw, layer.stride, maximum)
    on_backend = dict(xp=backend.xp, device=backend.device, dtype="float64", rtol=1e-15, atol=1e-15)
    xp_assert_close(out, expected_out, **on_backend)
    xp_assert_close(layer.backward(backend.asarray(g_host, "float64")), expected_grad, **on_backend)


def test_pool_windows_auto_uses_im2col_on_a_gpu_only(backend, rng):
    pool = MaxPool2D(2)
    pool(backend.asarray(rng.standard_normal((1, 1, 4, 4)), "float32"))
    (_, saved) = pool._saved
    assert backend.xp.isdtype(saved.dtype, "integral") == ("cuda" in backend.label), backend.label
    pool.windows = "slices"
    with pytest.raises(ValueError, match="MaxPool2D: windows must be one of auto, views, im2col, got 'slices'"):
        pool(backend.asarray(rng.standard_normal((1, 1, 4, 4)), "float32"))


def test_maxpool_output_is_not_a_view_of_its_input(backend, rng):
    """A 1x1 max-pool returns its own array, as every layer does."""
    x = backend.asarray(rng.standard_normal((1, 1, 3, 3)), "float64")
    out = MaxPool2D(1)(x)
    xp_assert_close(out, x, rtol=0)
    if backend.name == "numpy":
        assert not np.shares_memory(out, x)


# -- validation ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    (dict(in_channels=1, out_channels=2, kernel_size=0), "kernel_size must be >= 1"),
    (dict(in_channels=1, out_channels=2, kernel_size=3, stride=0), "stride must be >= 1"),
    (dict(in_channels=1, out_channels=2, kernel_size=3, padding=-1), "padding must be >= 0"),
    (dict(in_channels=1, out_channels=2, kernel_size=2.5), "kernel_size must be an integer"),
    (dict(in_channels=0, out_channels=2, kernel_size=3), "in_channels must be >= 1"),
    (dict(in_channels=1, out_channels=2, kernel_size=3, im2col="fft"),
     "Conv2D: im2col must be one of auto, slices, gather, got 'fft'"),
])
def test_conv_rejects_bad_construction(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Conv2D(**kwargs)


def test_conv_rejects_wrong_input_shapes(rng):
    conv = Conv2D(3, 4, 5)
    with pytest.raises(ValueError, match=r"Conv2D: expected input of shape \(N, 3, H, W\), got shape \(2, 1, 28, 28\)"):
        conv(rng.random((2, 1, 28, 28)))
    with pytest.raises(ValueError, match=r"Conv2D: expected input of shape \(N, 3, H, W\), got shape \(3, 28, 28\)"):
        conv(rng.random((3, 28, 28)))
    with pytest.raises(ValueError, match="kernel 5x5 is larger than the padded input 4x4"):
        conv(rng.random((1, 3, 4, 4)))


def test_layers_reject_integer_and_mismatched_inputs(rng):
    with pytest.raises(TypeError, match="Conv2D: expected a floating-point input, got dtype int64"):
        Conv2D(1, 1, 3)(np.ones((1, 1, 5, 5), dtype=np.int64))
    with pytest.raises(TypeError, match="Dense: expected a floating-point input, got dtype bool"):
        Dense(4, 2)(np.ones((2, 4), dtype=bool))
    with pytest.raises(ValueError, match=r"Dense: expected input of shape \(N, 4\), got shape \(2, 5\)"):
        Dense(4, 2)(rng.random((2, 5)))
    with pytest.raises(TypeError, match="input dtype float32 does not match parameter dtype float64"):
        Dense(4, 2)(rng.random((2, 4)).astype(np.float32))


def test_mixing_libraries_names_both():
    torch = pytest.importorskip("torch")
    dense = Dense(4, 2)  # numpy parameters
    with pytest.raises(TypeError, match=r"Dense.forward: arrays from different libraries.*"
                                        r"numpy.ndarray and torch.Tensor"):
        dense(torch.ones((2, 4), dtype=torch.float64))


def test_mixing_devices_names_both():
    pytest.importorskip("array_api_strict")
    dense = Dense(4, 2).to("array_api_strict", "device1")
    x = xpcnn.resolve("array_api_strict", "device2").asarray(np.ones((2, 4)), "float64")
    with pytest.raises(ValueError, match="arrays on different devices mixed in one call: device2 and device1"):
        dense(x)
