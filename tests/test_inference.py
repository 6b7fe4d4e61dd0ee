"""xpcnn predict (xpcnn.inference): a checkpoint classifies image and array files on any
backend with the training run's preprocessing; bad inputs get one line each and the others go on."""

import json

import numpy as np
import pytest

from xpcnn import data, resolve
from xpcnn.cli import main as console
from xpcnn.cli import predict_main
from xpcnn.inference import Predictor
from xpcnn.training import Checkpointer, Config, Trainer


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """A normalised 3-class colour run on 9x11 images and its checkpoint."""
    folder = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 240)
    images = rng.integers(0, 150, (240, 3, 9, 11)).astype(np.uint8)
    images[np.arange(240), labels] += 100
    train = data.Split(images[:200], labels[:200].astype(np.int64))
    config = Config(model="conv6k3p1-relu-maxpool2-flatten-dense", image_shape=(3, 9, 11), classes=3, epochs=3,
                    batch_size=20, optimizer="adam", lr=0.01, shift=0, normalize=True)
    with Trainer(config, resolve("numpy"), extensions=[Checkpointer(folder / "c.npz")]) as trainer:
        trainer.fit(train)
        expected = trainer.predict(images[200:])
    return folder / "c.npz", images[200:], expected


def test_predictor_gives_the_trainers_classes_on_every_backend(colour_run, cpu_backend):
    path, images, expected = colour_run
    predictor = Predictor(path, cpu_backend)
    probabilities = predictor.probabilities(images)
    assert probabilities.shape == (40, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), expected)  # normalisation applied as in training


def test_cli_classifies_images_and_arrays_and_reports_bad_inputs(colour_run, tmp_path, capsys):
    pil = pytest.importorskip("PIL.Image")
    path, images, expected = colour_run
    np.save(tmp_path / "batch.npy", images[:4].transpose(0, 2, 3, 1))  # channels last, as Keras stores them
    pil.fromarray(images[5].transpose(1, 2, 0)).save(tmp_path / "one.png")
    pil.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    inputs = [str(tmp_path / name) for name in ("batch.npy", "small.png", "one.png", "broken.png", "missing.npy")]
    assert predict_main([str(path), *inputs]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"{inputs[0]}[{i}]" for i in range(4)] + [inputs[2]]
    assert [int(line.split("class ")[1].split(",")[0]) for line in lines] == [*expected[:4], expected[5]]
    assert len(err.splitlines()) == 3 and "Traceback" not in err
    assert "small.png: error: image of 5x5 pixels, RGB; the network takes 11x9 pixels, RGB (no resizing" in err
    assert "broken.png: error: not a readable image" in err and "missing.npy: error: " in err
    assert console(["predict", str(path), inputs[2], "--json", "--backend", "array_api_strict"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["input"] == inputs[2] and record["class"] == expected[5] and 0 < record["probability"] <= 1


def test_image_files_beside_float_arrays_keep_their_own_scaling(colour_run, tmp_path):
    """uint8 pixels are scaled by 1/255 on the way in, float ones taken as given: a PNG classified
    beside a float array gets exactly what it gets alone."""
    pil = pytest.importorskip("PIL.Image")
    path, images, _ = colour_run
    predictor = Predictor(path, resolve("numpy"))
    pil.fromarray(images[5].transpose(1, 2, 0)).save(tmp_path / "one.png")
    scaled = (images[:3] / 255).astype(np.float32)
    np.save(tmp_path / "scaled.npy", scaled)
    (alone,) = predictor.classify([str(tmp_path / "one.png")])
    mixed = predictor.classify([str(tmp_path / "scaled.npy"), str(tmp_path / "one.png")])
    assert mixed[3] == alone
    assert mixed[:3] == predictor.predict([f"{tmp_path / 'scaled.npy'}[{i}]" for i in range(3)], scaled)


def test_bad_checkpoint_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "c.npz").write_bytes(b"nope")
    with pytest.raises(SystemExit) as info:
        predict_main([str(tmp_path / "c.npz"), "x.png"])
    assert info.value.code == 2 and "not a readable checkpoint" in capsys.readouterr().err


def test_binary_checkpoint_names_its_two_classes(tmp_path):
    train = data.load_embedded().train.take(100)
    with Trainer(Config(task="binary", epochs=1, batch_size=50), resolve("numpy"),
                 extensions=[Checkpointer(tmp_path / "b.npz")]) as trainer:
        trainer.fit(train)
    predictor = Predictor(tmp_path / "b.npz", resolve("numpy"))
    (prediction,) = predictor.predict(["x"], train.images[:1])
    assert prediction.name in ("digit <= 4", "digit > 4") and 0.5 <= prediction.probability <= 1
