"""Batches: their seeded order, and host images scaled on the device."""

import numpy as np

from xpcnn import data


def test_to_batch_scales_on_device(backend):
    images = np.array([[[[0, 255], [51, 102]]]], dtype=np.uint8)
    batch = data.to_batch(images, backend, "float32")
    assert tuple(batch.shape) == (1, 1, 2, 2)
    from xpcnn import to_numpy
    np.testing.assert_allclose(to_numpy(batch)[0, 0], [[0, 1], [0.2, 0.4]], rtol=1e-6)
    import array_api_compat
    assert array_api_compat.device(batch) == backend.device and str(batch.dtype).endswith("float32")


def test_batch_order_is_seeded_and_complete():
    first = data.batch_indices(10, 4, np.random.default_rng(3))
    again = data.batch_indices(10, 4, np.random.default_rng(3))
    assert [b.tolist() for b in first] == [b.tolist() for b in again]
    assert sorted(np.concatenate(first).tolist()) == list(range(10))
    assert [len(b) for b in first] == [4, 4, 2]
    assert [len(b) for b in data.batch_indices(10, 4, None, drop_last=True)] == [4, 4]
