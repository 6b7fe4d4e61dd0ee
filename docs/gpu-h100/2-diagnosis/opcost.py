"""Host cost per call of single array operations (throwaway diagnostic, not part of xpcnn)."""
import sys, time, statistics
import numpy as np
import array_api_compat
sys.path.insert(0, ".")
from xpcnn.backends import resolve, split_spec, synchronize

def cost(backend, name, fn, n=400):
    for _ in range(20):
        fn()
    synchronize(backend)
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        synchronize(backend)
        runs.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(runs)

for spec in sys.argv[1:]:
    b = resolve(*split_spec(spec)); xp = b.xp
    raw = {"cupy": "cupy", "torch": "torch"}.get(b.name)
    raw = __import__(raw) if raw else None
    rng = np.random.default_rng(0)
    a = b.asarray(rng.random((512, 8, 576)).astype(np.float32))
    m = b.asarray(rng.random((512, 4608)).astype(np.float32))
    w = b.asarray(rng.random((4608, 10)).astype(np.float32))
    f = b.asarray(rng.random((8, 26)).astype(np.float32))
    c = b.asarray(rng.random((512, 26, 576)).astype(np.float32))
    img = b.asarray(rng.random((512, 1, 28, 28)).astype(np.float32))
    small = b.asarray(rng.random((512, 10)).astype(np.float32))
    host = (rng.random((512, 1, 28, 28)) * 255).astype(np.uint8)
    lab = rng.integers(0, 10, 512)
    ops = {
        "a * 0.5 (operator)": lambda: a * 0.5,
        "xp.multiply(a, a)": lambda: xp.multiply(a, a),
        "xp.tanh(a)": lambda: xp.tanh(a),
        "small - small": lambda: small - small,
        "xp.sum(small, axis=1)": lambda: xp.sum(small, axis=1),
        "xp.max(small, axis=1, keepdims)": lambda: xp.max(small, axis=1, keepdims=True),
        "xp.sum(a) all": lambda: xp.sum(a),
        "xp.astype(small, float64)": lambda: xp.astype(small, xp.float64),
        "xp.reshape(contig)": lambda: xp.reshape(a, (512, -1)),
        "xp.reshape(strided slice) copy": lambda: xp.reshape(img[:, 0, 1:25, :], (512, -1)),
        "xp.stack 5 slices": lambda: xp.stack([img[:, :, :, j:j + 24] for j in range(5)], axis=2),
        "xp.concat 6": lambda: xp.concat([c[:, :4]] * 6, axis=1),
        "xp.ones((512,1,576))": lambda: xp.ones((512, 1, 576), dtype=a.dtype, device=b.device),
        "xp.matmul 2D (512x4608 @ 4608x10)": lambda: xp.matmul(m, w),
        "xp.matmul bcast (8x26 @ 512x26x576)": lambda: xp.matmul(f, c),
        "xp.matmul batched a @ c^T": lambda: xp.matmul(a, xp.permute_dims(c, (0, 2, 1))),
        "array_namespace(a, w)": lambda: array_api_compat.array_namespace(a, w),
        "array_api_compat.device(a)": lambda: array_api_compat.device(a),
        "b.asarray(uint8 512x784)": lambda: b.asarray(host),
        "b.asarray(int64 512)": lambda: b.asarray(lab),
    }
    if raw is not None:
        ops["raw sum(small, axis=1)"] = lambda: raw.sum(small, axis=1)
        ops["raw max(small, axis=1)"] = lambda: (raw.max(small, axis=1, keepdims=True) if b.name == "cupy" else raw.amax(small, dim=1, keepdim=True))
        ops["raw matmul bcast"] = lambda: raw.matmul(f, c)
    print(f"\n{spec}: host microseconds per call (median of 5 x 400, device synchronised)")
    for name, fn in ops.items():
        print(f"  {name:<40} {cost(b, name, fn):8.1f}")
