import dataclasses

import numpy as np
import pytest

from xpcnn import data, resolve
from xpcnn.checkpoint import CheckpointError
from xpcnn.training import PRESETS, Config, Diverged, Interrupted, Trainer, build_model, confusion_matrix, random_shift


@pytest.fixture(scope="module")
def small():
    dataset = data.load_embedded()
    return dataset.train.take(600), dataset.validation.take(200)


SMALL = Config(epochs=2, batch_size=50)


def test_default_preset_learns(small):
    train, validation = small
    trainer = Trainer(dataclasses.replace(SMALL, epochs=3), resolve("numpy"))
    history = trainer.fit(train, validation)
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["val_accuracy"] > 0.75


def test_steps_and_evaluation_hold_no_activations_afterwards(small):
    """Nothing a step or an evaluation computed stays alive in the layers (memory between steps)."""
    train, validation = small
    trainer = Trainer(SMALL, resolve("numpy"))
    trainer.step(train.images[:50], train.labels[:50])
    assert all(layer._saved is None for layer in trainer.model.layers)
    trainer.evaluate(validation)
    trainer.predict(validation.images[:10])
    assert all(layer._saved is None for layer in trainer.model.layers)


def test_article_preset_is_the_articles_network():
    config = PRESETS["article"]
    model = build_model(config)
    assert [layer.name for layer in model.layers] == ["Conv2D", "Sigmoid", "Flatten", "Dense", "Sigmoid"]
    assert model.layers[0].params["weight"].shape == (3, 1, 5, 5)
    assert "bias" not in model.layers[0].params  # Z1 = X * f: the article's convolution has no bias
    assert model.layers[3].params["weight"].shape == (1728, 1)
    assert config.loss == "mse" and config.optimizer == "sgd" and config.init == "uniform"
    assert config.task == "binary" and config.train_count == 200
    assert model.layers[0].params["weight"].min() >= 0  # U[0, 1)


def test_resume_mid_epoch_is_bitwise_identical(small, tmp_path, cpu_backend):
    train, _ = small
    config = dataclasses.replace(SMALL, dtype="float64")
    straight = Trainer(config, cpu_backend)
    straight.fit(train)

    interrupted = Trainer(config, cpu_backend)
    calls = {"n": 0}

    def stop_after_some_steps(epoch, step, steps, loss):
        calls["n"] += 1
        if epoch == 2 and step >= 5:
            interrupted.stop_requested = True

    interrupted.sync_every = 1
    path = tmp_path / "ckpt.npz"
    with pytest.raises(Interrupted, match="interrupted at epoch 2, step 5"):
        interrupted.fit(train, progress=stop_after_some_steps, checkpoint_path=path)
    resumed = Trainer(config, cpu_backend)
    resumed.resume(path)
    assert (resumed.state.epoch, resumed.state.step_in_epoch) == (1, 5)
    resumed.fit(train)
    for name, value in straight.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[name], value)
    assert resumed.state.step_losses == straight.state.step_losses
    assert resumed.state.history[1]["loss"] == straight.state.history[1]["loss"]  # the interrupted epoch


def test_checkpoint_made_on_numpy_loads_on_every_backend(small, tmp_path, backend):
    train, validation = small
    config = dataclasses.replace(SMALL, epochs=1)
    source = Trainer(config, resolve("numpy"))
    source.fit(train)
    source.save(tmp_path / "c.npz")
    target = Trainer(config, backend)
    target.resume(tmp_path / "c.npz")
    for name, value in source.model.state_dict().items():
        np.testing.assert_array_equal(target.model.state_dict()[name], value)
    np.testing.assert_allclose(target.evaluate(validation), source.evaluate(validation), rtol=1e-4)


def test_resume_rejects_other_architecture(small, tmp_path):
    train, _ = small
    trainer = Trainer(dataclasses.replace(SMALL, epochs=1), resolve("numpy"))
    trainer.fit(train.take(50))
    trainer.save(tmp_path / "c.npz")
    other = Trainer(dataclasses.replace(PRESETS["article"]), resolve("numpy"))
    before = other.model.state_dict()
    with pytest.raises(CheckpointError, match="architecture .* does not match this model"):
        other.resume(tmp_path / "c.npz")
    for name, value in other.model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    (tmp_path / "junk.npz").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="junk.npz: not a readable checkpoint"):
        other.resume(tmp_path / "junk.npz")


def test_divergence_names_epoch_and_step(small, cpu_backend):
    train, _ = small
    trainer = Trainer(dataclasses.replace(SMALL, lr=1e30, momentum=0.0, optimizer="sgd"), cpu_backend)
    with np.errstate(all="ignore"), pytest.raises(Diverged) as info:
        trainer.fit(train)
    assert info.value.epoch == 1 and 1 <= info.value.step <= 12
    assert f"at epoch 1, step {info.value.step}" in str(info.value)
    assert len(trainer.state.step_losses) == 0 or all(np.isfinite(trainer.state.step_losses))


def test_batches_and_shifts_are_deterministic():
    images = np.random.default_rng(0).integers(0, 255, (5, 28, 28)).astype(np.uint8)
    a = random_shift(images, 2, np.random.default_rng([0, 1, 2]))
    b = random_shift(images, 2, np.random.default_rng([0, 1, 2]))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and a.shape == images.shape
    assert a.sum() <= images.sum()  # pixels only shift out, never appear


def test_confusion_matrix():
    matrix = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    np.testing.assert_array_equal(matrix, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])


def test_memory_does_not_grow(small):
    psutil = pytest.importorskip("psutil")
    train, validation = small
    process, rss = psutil.Process(), {}
    trainer = Trainer(dataclasses.replace(SMALL, epochs=10), resolve("numpy"))
    trainer.fit(train, validation, on_epoch=lambda r: rss.__setitem__(r.epoch, process.memory_info().rss))
    assert rss[10] <= rss[2] * 1.03, {k: v / 1e6 for k, v in rss.items()}


HOST_READS = ("__array__", "__bool__", "__buffer__", "__complex__", "__dlpack__", "__float__", "__index__",
              "__int__", "to_device")


@pytest.mark.parametrize("preset", ["default", "article"])
def test_a_training_step_reads_nothing_back_from_the_device(preset, small, monkeypatch):
    """The issue's GPU rule (no host-device synchronisation inside a step), checked on the CPU:
    every way an array_api_strict array can reach the host or Python raises during the steps;
    only Trainer._sync, which reads the losses for the log, may do it afterwards."""
    array_api_strict = pytest.importorskip("array_api_strict")
    train, _ = small
    config = dataclasses.replace(PRESETS[preset], batch_size=32, train_count=None)
    trainer = Trainer(config, resolve("array_api_strict", "device1"))
    targets = data.task_targets(train.labels, config.task)
    array_type = type(array_api_strict.asarray(0.0))

    def refuse(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"a training step called Array.{name}: a device -> host read")
        return read

    with monkeypatch.context() as patch:
        for name in HOST_READS:
            patch.setattr(array_type, name, refuse(name))
        losses = [trainer.step(train.images[i:i + 32], targets[i:i + 32]) for i in range(0, 96, 32)]
    trainer._sync(losses, 0)
    assert len(trainer.state.step_losses) == 3 and all(np.isfinite(trainer.state.step_losses))


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["default", "article"])
def test_a_cuda_training_step_never_synchronises(preset, small, torch_cuda):
    """The issue's GPU rule on a real GPU: PyTorch's sync debug mode turns every host-device
    synchronisation into an error.  The batch is moved to the device first (a copy from pageable
    host memory waits for the device by design); forward, loss, backward and update must not."""
    import torch

    train, _ = small
    config = dataclasses.replace(PRESETS[preset], batch_size=32, train_count=None)
    trainer = Trainer(config, torch_cuda)
    targets = data.task_targets(train.labels, config.task)
    batches = [(data.to_batch(train.images[i:i + 32], torch_cuda, config.dtype),
                data.targets_to_batch(targets[i:i + 32], torch_cuda, config.dtype)) for i in range(0, 96, 32)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = []
        for x, y in batches:
            losses.append(trainer.loss_fn(trainer.model(x), y))
            trainer.model.backward(trainer.loss_fn.backward(), input_grad=False)
            trainer.optimizer.step(trainer.model)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    trainer._sync(losses, 0)
    assert len(trainer.state.step_losses) == 3 and all(np.isfinite(trainer.state.step_losses))
