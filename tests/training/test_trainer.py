import dataclasses
import json

import numpy as np
import pytest
from helpers import refuse_host_reads

from xpcnn import data, resolve
from xpcnn.io.checkpoint import CheckpointError
from xpcnn.training import (
    PRESETS,
    Checkpointer,
    Config,
    Diverged,
    Interrupted,
    Lambda,
    Trainer,
    build_model,
    confusion_matrix,
    random_shift,
)


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

    def stop_after_some_steps(trainer, values):
        calls["n"] += 1
        if trainer.state.epoch == 1 and trainer.state.step_in_epoch >= 5:
            trainer.stop_requested = True

    interrupted.sync_every = 1
    path = tmp_path / "ckpt.npz"
    with pytest.raises(Interrupted, match="interrupted at epoch 2, step 5"):
        interrupted.fit(train, extensions=[Lambda(on_losses=stop_after_some_steps), Checkpointer(path)])
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
    trainer.fit(train, validation,
                extensions=[Lambda(on_epoch_end=lambda t, r: rss.__setitem__(r["epoch"], process.memory_info().rss))])
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

    with monkeypatch.context() as patch:
        refuse_host_reads(patch, array_type, HOST_READS)
        losses = [trainer.step(train.images[i:i + 32], targets[i:i + 32]) for i in range(0, 96, 32)]
    trainer._sync(losses, trainer.extensions)
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
    trainer._sync(losses, trainer.extensions)
    assert len(trainer.state.step_losses) == 3 and all(np.isfinite(trainer.state.step_losses))


# -- the library does what the command line does ---------------------------------------------------

def test_binary_task_from_python_trains_like_the_cli(small):
    """The task -> loss rule lives in Config: a binary run from Python takes BCE (not softmax CE)."""
    train, validation = small
    config = Config(task="binary", epochs=1, batch_size=50)
    assert config.loss == "bce" and config.outputs == 1
    assert Config(task="multiclass", loss="mse").loss == "softmax_ce"
    assert dataclasses.replace(PRESETS["article"], task="binary").loss == "mse"  # the article's choice stays
    with Trainer(config, resolve("numpy")) as trainer:
        history = trainer.fit(train, validation)
    assert np.isfinite(history[0]["loss"]) and 0.5 < history[0]["val_accuracy"] <= 1


@pytest.mark.parametrize("preset,task", [("default", "multiclass"), ("default", "binary"),
                                         ("article", "binary"), ("article", "multiclass")])
def test_every_preset_and_task_trains_bitwise_the_same_from_python_and_the_cli(tmp_path, preset, task, capsys):
    from xpcnn.cli import train_main
    from xpcnn.training import standard_extensions

    dataset = data.load_embedded()
    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=dataset.train.images[:330], y_train=dataset.train.labels[:330],
             x_test=dataset.validation.images[:60], y_test=dataset.validation.labels[:60])
    # The preset's shifts are named: on data it was not made for, the CLI would otherwise train without them.
    assert train_main(["--data", str(npz), "--eval-data", str(npz), "--preset", preset, "--task", task,
                       "--epochs", "2", "--batch-size", "40", "--shift", str(PRESETS[preset].shift),
                       "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    loaded = data.load(str(npz))
    config = dataclasses.replace(PRESETS[preset], task=task, epochs=2, batch_size=40)
    with Trainer(config, resolve("numpy"), extensions=standard_extensions(
            out=str(tmp_path / "lib"), test=loaded.test, test_label=f"test ({npz})", source=str(npz),
            verbose=False, progress=False)) as trainer:
        trainer.fit(loaded.train, loaded.validation)
    cli = np.load(tmp_path / "cli" / "checkpoint.npz")
    lib = np.load(tmp_path / "lib" / "checkpoint.npz")
    assert sorted(cli.files) == sorted(lib.files)
    for key in cli.files:
        if key != "meta":
            np.testing.assert_array_equal(cli[key], lib[key], err_msg=key)
    cli_metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    lib_metrics = json.loads((tmp_path / "lib" / "metrics.json").read_text())
    assert cli_metrics["final"] == lib_metrics["final"] and cli_metrics["step_losses"] == lib_metrics["step_losses"]
    assert cli_metrics["config"] == lib_metrics["config"] == json.loads(json.dumps(dataclasses.asdict(config)))
    assert [json.loads(line)["epoch"] for line in (tmp_path / "lib" / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_from_checkpoint_applies_the_resume_policy(small, tmp_path):
    train, _ = small
    config = dataclasses.replace(SMALL, epochs=1, dtype="float64")
    with Trainer(config, resolve("numpy"), extensions=[Checkpointer(tmp_path / "c.npz")]) as first:
        first.fit(train)
    with Trainer.from_checkpoint(tmp_path / "c.npz", resolve("numpy"), epochs=2) as resumed:
        assert resumed.config == dataclasses.replace(config, epochs=2) and resumed.state.epoch == 1
        resumed.fit(train)
    with Trainer(dataclasses.replace(config, epochs=2), resolve("numpy")) as straight:
        straight.fit(train)
    for name, value in straight.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[name], value)
    other = Trainer(dataclasses.replace(config, lr=0.5), resolve("numpy"))
    with pytest.raises(CheckpointError,
                       match=r"only epochs may change, not lr \(0.05 in the checkpoint, 0.5 asked for\)"):
        other.resume(tmp_path / "c.npz")


# -- extensions -------------------------------------------------------------------------------

def test_extensions_run_in_priority_order_at_each_event(small):
    from xpcnn.training import Extension
    from xpcnn.training.extensions import PRIORITY_EDITOR, PRIORITY_READER, PRIORITY_WRITER

    train, validation = small
    seen = []

    def recorder(name, priority):
        class Recorder(Extension):
            def on_fit_start(self, trainer): seen.append((name, "fit_start"))
            def on_epoch_end(self, trainer, record):
                seen.append((name, "epoch_end", record["val_accuracy"] is not None, trainer.state.epoch))
            def on_fit_end(self, trainer): seen.append((name, "fit_end"))
            def close(self): seen.append((name, "close"))
        recorder_ = Recorder()
        recorder_.priority = priority
        return recorder_

    with Trainer(dataclasses.replace(SMALL, epochs=1), resolve("numpy")) as trainer:
        trainer.fit(train.take(100), validation.take(50),
                    extensions=[recorder("reader", PRIORITY_READER), recorder("writer", PRIORITY_WRITER + 10),
                                recorder("editor", PRIORITY_EDITOR)])
    assert seen == [("writer", "fit_start"), ("editor", "fit_start"), ("reader", "fit_start"),
                    ("writer", "epoch_end", False, 1),  # runs before the evaluator (PRIORITY_WRITER)
                    ("editor", "epoch_end", True, 1), ("reader", "epoch_end", True, 1),
                    ("writer", "fit_end"), ("editor", "fit_end"), ("reader", "fit_end"),
                    ("writer", "close"), ("editor", "close"), ("reader", "close")]


def test_learning_rate_schedule_is_an_extension_from_the_config(small):
    train, _ = small
    rates = []
    config = dataclasses.replace(SMALL, epochs=3, lr=0.1, lr_decay=0.5)
    with Trainer(config, resolve("numpy")) as trainer:
        trainer.fit(train.take(100), extensions=[Lambda(on_epoch_end=lambda t, r: rates.append(t.optimizer.lr))])
    assert rates == [0.1, 0.05, 0.025]


def test_early_stopping_stops_at_the_end_of_an_epoch_and_resume_decides_alike(small, tmp_path):
    from xpcnn.training import EarlyStopping

    train, validation = small
    config = dataclasses.replace(SMALL, epochs=8, lr=1.0, optimizer="sgd", dtype="float64")  # too high: it stalls
    stopper = EarlyStopping("val_accuracy", patience=1, mode="max", min_delta=0.5)  # no epoch improves by 50%
    with Trainer(config, resolve("numpy"), extensions=[stopper, Checkpointer(tmp_path / "c.npz")]) as trainer:
        history = trainer.fit(train.take(100), validation.take(50))
    assert len(history) == 2 and trainer.state.epoch == 2
    with pytest.raises(ValueError, match="EarlyStopping: mode"):
        EarlyStopping(mode="up")
    with Trainer(config, resolve("numpy"), extensions=[EarlyStopping("val_loss")]) as trainer:
        with pytest.raises(ValueError, match="no 'val_loss'"):
            trainer.fit(train.take(100))


def test_log_report_writes_json_lines_of_the_whole_history(small, tmp_path):
    from xpcnn.training import LogReport

    train, validation = small
    path = tmp_path / "log.jsonl"
    with Trainer(dataclasses.replace(SMALL, epochs=2), resolve("numpy"), extensions=[LogReport(path)]) as trainer:
        trainer.fit(train.take(100), validation.take(50))
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == json.loads(json.dumps(trainer.state.history))
    assert [r["epoch"] for r in records] == [1, 2] and all(r["val_accuracy"] is not None for r in records)


def test_lambda_rejects_unknown_events():
    with pytest.raises(TypeError, match="unknown event"):
        Lambda(on_batch=print)


def test_fit_refuses_other_data_than_the_checkpoint_trained_on(small, tmp_path):
    train, _ = small
    with Trainer(dataclasses.replace(SMALL, epochs=1), resolve("numpy"),
                 extensions=[Checkpointer(tmp_path / "c.npz")]) as trainer:
        trainer.fit(train.take(100))
    with Trainer(dataclasses.replace(SMALL, epochs=2), resolve("numpy")) as resumed:
        resumed.resume(tmp_path / "c.npz")
        with pytest.raises(CheckpointError, match="trained on 100 images per epoch; this data has 150"):
            resumed.fit(train.take(150))


# -- any dataset: normalisation, classes, image shapes ---------------------------------------------

def colour_split(n=120, classes=3, shape=(3, 9, 11), seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 200, (n, *shape)).astype(np.uint8)
    images[np.arange(n), labels % shape[0]] += 55  # the class shows as a brighter channel
    return data.Split(images, labels.astype(np.int64))


def test_normalisation_is_computed_once_stored_and_resumed_bitwise(tmp_path):
    train = colour_split()
    config = Config(preset="lenet5", model="conv4k3p1-relu-maxpool2-flatten-dense", image_shape=(3, 9, 11), classes=3,
                    normalize=True, epochs=2, batch_size=30, dtype="float64")
    with Trainer(config, resolve("numpy"), extensions=[Checkpointer(tmp_path / "c.npz")]) as straight:
        straight.fit(train)
    mean, std = data.channel_stats(train)
    np.testing.assert_allclose(straight.state.normalization["mean"], mean)
    np.testing.assert_allclose(straight.state.normalization["std"], std)
    with Trainer.from_checkpoint(tmp_path / "c.npz", resolve("numpy"), epochs=3) as resumed:
        assert resumed.state.normalization == straight.state.normalization
        resumed.fit(colour_split(seed=0))
    assert resumed.state.history[-1]["epoch"] == 3
    # a run with other numbers would differ: the normalisation reaches the model
    with Trainer(dataclasses.replace(config, normalize=False), resolve("numpy")) as plain:
        plain.fit(train)
    assert not np.array_equal(plain.model.state_dict()["0.weight"], straight.model.state_dict()["0.weight"])


def test_fit_refuses_images_of_another_shape_and_labels_beyond_the_classes():
    config = Config(model="flatten-dense", image_shape=(3, 9, 11), classes=3, epochs=1)
    with Trainer(config, resolve("numpy")) as trainer:
        with pytest.raises(ValueError, match=r"the images are \(3, 9, 10\), the config's image_shape \(3, 9, 11\)"):
            trainer.fit(colour_split(shape=(3, 9, 10)))
        with pytest.raises(data.DataError, match="labels must lie in 0-2 for task 'multiclass', found 0-4"):
            trainer.fit(colour_split(classes=5))


def test_a_colour_dataset_with_k_classes_learns_and_reports_a_k_by_k_confusion_matrix():
    train, test = colour_split(300), colour_split(90, seed=1)
    config = Config(model="conv6k3p1-relu-maxpool2-flatten-dense", image_shape=(3, 9, 11), classes=3, epochs=3,
                    batch_size=30, optimizer="adam", lr=0.01, shift=0)
    with Trainer(config, resolve("numpy")) as trainer:
        trainer.fit(train)
        evaluation = trainer.test(test)
    assert evaluation.confusion.shape == (3, 3) and evaluation.confusion.sum() == 90
    assert evaluation.accuracy > 0.8


def test_on_step_start_comes_before_every_step_with_the_steps_done_so_far(small):
    train, _ = small
    seen = []
    with Trainer(dataclasses.replace(SMALL, epochs=2), resolve("numpy")) as trainer:
        trainer.fit(train.take(100), extensions=[Lambda(on_step_start=lambda t: seen.append(
            (t.state.epoch, t.state.step_in_epoch, t.state.global_step, len(t.state.step_losses))))])
    assert [entry[:3] for entry in seen] == [(0, 0, 0), (0, 1, 1), (1, 0, 2), (1, 1, 3)]
    assert all(losses <= done for _, _, done, losses in seen)  # (losses are read back every few steps)
