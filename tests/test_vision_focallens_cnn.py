"""FocalLens's CNN tower (`tower="cnn"`): a small ResNet-style CNN conditioned by FiLM. Shapes, FiLM's
identity initialisation, training, save -> load, `train focallens --tower cnn` / `eval images` / an image
index under a condition through the CLI, and explanation maps that follow the condition.

The real (offline) all-MiniLM-L6-v2 encodes instructions and answers.
"""

import json

import numpy as np
import pytest
import torch
from helpers import run
from PIL import Image
from safetensors.torch import load_file, save_file

from indexes.errors import UserError
from vision.explain import explain_pair, target_layer
from vision.focallens import CNN_WIDTHS, FiLMCNN, FocalLens, load_focallens
from vision.synthetic import make_conditional, write_conditional
from vision.train_focallens import TrainSettings, save_model, train_focallens

COLOUR, SHAPE = "focus on the colour", "focus on the shape"


@pytest.fixture(scope="module")
def trained():
    """A CNN-tower FocalLens after a few epochs on generated data, its training log, and the data."""
    data = make_conditional(n=320, size=32, seed=1)
    torch.manual_seed(0)
    model = FocalLens(image_size=32, tower="cnn")
    return model, train_focallens(model, data["train"], TrainSettings(epochs=6, batch_size=64, lr=3e-3, device="cpu")), data


@pytest.fixture(scope="module")
def splits(trained):
    return trained[2]


@pytest.mark.parametrize("size", [16, 28, 32, 64])
def test_cnn_tower_shapes(size):
    torch.manual_seed(0)
    model = FocalLens(image_size=size, tower="cnn").eval()
    assert not hasattr(model, "vit") and model.cnn.film is not None and len(model.cnn.film) == len(CNN_WIDTHS)
    pixels, instructions = torch.randn(3, 3, size, size), torch.randn(3, 384)
    features = {}
    model.cnn.stages[0].register_forward_hook(lambda _m, _i, out: features.setdefault("first", out))
    assert model.cnn(pixels, instructions).shape == (3, CNN_WIDTHS[-1])
    assert features["first"].shape == (3, CNN_WIDTHS[0], size // 2, size // 2)  # the stem strides by 2
    out = model(pixels, instructions)
    assert out.shape == (3, 384) and torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    with pytest.raises(UserError, match="give an instruction"):
        model(pixels)
    baseline = FocalLens(image_size=size, tower="cnn", conditional=False)
    assert baseline.cnn.film is None and baseline(pixels).shape == (3, 384)


def test_film_starts_as_the_identity():
    """At init the conditional CNN is the unconditional CNN with the same weights, whatever the instruction."""
    torch.manual_seed(0)
    plain = FocalLens(image_size=32, tower="cnn", conditional=False)
    film = FocalLens(image_size=32, tower="cnn")
    result = film.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys and result.missing_keys
    assert all(key.startswith("cnn.film.") for key in result.missing_keys)
    for generator in film.cnn.film:  # gamma = 1, beta = 0 for any instruction
        gamma, beta = generator(torch.randn(2, 384)).chunk(2, dim=1)
        assert torch.equal(gamma, torch.ones_like(gamma)) and torch.equal(beta, torch.zeros_like(beta))
    pixels = torch.randn(4, 3, 32, 32)
    for mode in (False, True):  # running statistics, then batch statistics (which update the running ones)
        plain.train(mode), film.train(mode)
        expected = plain(pixels)
        for instructions in (torch.randn(4, 384), torch.zeros(4, 384)):
            assert torch.allclose(film(pixels, instructions), expected, atol=1e-6)


def test_film_generators_get_gradients():
    torch.manual_seed(0)
    model = FocalLens(image_size=32, tower="cnn")
    model(torch.randn(4, 3, 32, 32), torch.randn(4, 384)).sum().backward()
    for generator in model.cnn.film:
        assert generator.weight.grad is not None and generator.weight.grad.abs().sum() > 0


def test_training_lowers_the_loss_and_conditions_change_the_embedding(trained, splits):
    model, log, _ = trained
    assert log["loss"][-1] < log["loss"][0] * 0.9
    image = splits["test"].images[:4]
    colour, shape = (model.embed(image, c, device="cpu") for c in (COLOUR, "what shape is the object?"))
    assert colour.shape == (4, 384) and np.allclose(np.linalg.norm(colour, axis=1), 1.0, atol=1e-5)
    assert (np.sum(colour * shape, axis=1) < 0.95).all()
    assert any(not torch.equal(g.weight, torch.zeros_like(g.weight)) for g in model.cnn.film)  # FiLM learned


def test_unconditional_cnn_ignores_the_instruction(splits):
    torch.manual_seed(0)
    model = FocalLens(image_size=32, tower="cnn", conditional=False)
    train_focallens(model, splits["train"], TrainSettings(epochs=1, batch_size=64, device="cpu"))
    images = splits["test"].images[:4]
    assert np.array_equal(model.embed(images, COLOUR, device="cpu"), model.embed(images, None, device="cpu"))


def test_save_and_load_give_identical_embeddings(trained, splits, tmp_path):
    model, _, _ = trained
    path = save_model(model, tmp_path / "lens")
    assert json.loads((path / "config.json").read_text())["tower"] == "cnn"
    again = load_focallens(path)
    assert again.image_tower == "cnn" and again.conditional
    images = splits["test"].images[:8]
    assert np.array_equal(model.embed(images, "focus on the size", device="cpu"),
                          again.embed(images, "focus on the size", device="cpu"))


def test_old_configs_load_as_vit_and_bad_towers_are_refused(tmp_path):
    torch.manual_seed(0)
    path = save_model(FocalLens(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, condition_tokens=2),
                      tmp_path / "vit")
    config = json.loads((path / "config.json").read_text())
    assert config.pop("tower") == "vit"
    (path / "config.json").write_text(json.dumps(config))  # a model saved before the setting existed
    expected = load_focallens(path).embed(np.zeros((2, 32, 32, 3), np.uint8), "focus on the size", device="cpu")
    old_names = {"condition.project.0.": "condition.0.", "condition.project.1.": "condition.1.",
                 "condition.pos": "condition_pos"}  # the tensor names of that release
    state = load_file(path / "model.safetensors")
    save_file({next((old_names[new] + k[len(new):] for new in old_names if k.startswith(new)), k): v
               for k, v in state.items()}, path / "model.safetensors")
    old = load_focallens(path)
    assert old.image_tower == "vit"
    assert np.array_equal(old.embed(np.zeros((2, 32, 32, 3), np.uint8), "focus on the size", device="cpu"), expected)
    for bad, message in (("resnet", "unknown encoder 'resnet'"), (1, "tower must be"), (None, "tower must be")):
        (path / "config.json").write_text(json.dumps({**config, "tower": bad}))
        with pytest.raises(UserError, match=message):
            load_focallens(path)
    (path / "config.json").write_text(json.dumps({**config, "tower": "cnn"}))  # a ViT's weights, a CNN's config
    with pytest.raises(UserError, match="does not fit its config"):
        load_focallens(path)


def test_cnn_explain_maps_follow_the_condition(trained, splits):
    model, _, _ = trained
    layer, reshape = target_layer(model)
    assert layer is model.cnn.stages[0] and reshape is None
    first, second = (Image.fromarray(splits["test"].images[i]) for i in (0, 1))
    under = {c: explain_pair(model, first, second, condition=c) for c in (COLOUR, SHAPE)}
    for maps in under.values():
        assert all(m.shape == (32, 32) and np.isfinite(m).all() and 0 <= m.min() and m.max() <= 1 for m in maps)
    assert any(m.max() > 0 for maps in under.values() for m in maps)
    assert not np.allclose(under[COLOUR][0], under[SHAPE][0], atol=1e-3)


def test_cli_train_eval_and_index_with_the_cnn_tower(tmp_path):
    data = tmp_path / "bench"
    write_conditional(make_conditional(n=120, size=32, seed=0), data)
    model = tmp_path / "lens"
    trained = run("train", "focallens", "--data", data, "--out", model, "--tower", "cnn", "--epochs", 2,
                  "--batch-size", 32, "--device", "cpu", "--json")
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.stdout)["steps"] == 6 and json.loads((model / "config.json").read_text())["tower"] == "cnn"
    result = run("eval", "images", "--data", data, "--model", model, "--condition", "colour", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)) == {"colour", "mean"}
    baseline = tmp_path / "baseline"
    assert run("train", "focallens", "--data", data, "--out", baseline, "--tower", "cnn", "--unconditional",
               "--epochs", 1, "--batch-size", 32, "--device", "cpu").exit_code == 0
    assert load_focallens(baseline).cnn.film is None
    built = run("index", "build", "--corpus", "images", "--images", data / "test.npz", "--model", model,
                "--condition", COLOUR, "--name", "cnn-colours", "--device", "cpu", "--json")
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["rows"] == 24
    query = tmp_path / "q.png"
    with np.load(data / "test.npz") as archive:
        Image.fromarray(archive["images"][3]).save(query)
    hits = run("index", "query", "cnn-colours", "--image", query, "-k", 2, "--device", "cpu", "--json")
    assert hits.exit_code == 0, hits.output
    assert json.loads(hits.stdout)[0]["id"] == "3" and json.loads(hits.stdout)[0]["score"] == pytest.approx(1.0, abs=1e-4)
    bad = run("train", "focallens", "--data", data, "--out", tmp_path / "never", "--tower", "resnet")
    assert bad.exit_code == 2 and not (tmp_path / "never").exists()


def test_film_cnn_alone_without_a_condition_is_a_plain_cnn():
    torch.manual_seed(0)
    cnn = FiLMCNN(widths=(8, 16), text_dim=None)
    assert cnn(torch.randn(2, 3, 16, 16)).shape == (2, 16) and cnn.film is None


def test_validation_split_stops_early_and_keeps_the_best_epoch(tmp_path):
    from vision.synthetic import make_conditional
    from vision.train_focallens import TrainSettings, split_validation, train_focallens

    data = make_conditional(n=200, size=16, seed=3)["train"]
    train, valid = split_validation(data, 0.25, seed=0)
    assert len(train) + len(valid) == len(data) and len(valid) == 40
    assert split_validation(data, 0.0, seed=0) == (data, None)
    torch.manual_seed(0)
    lens = FocalLens(image_size=16, tower="cnn")
    log = train_focallens(lens, data, TrainSettings(epochs=30, batch_size=32, lr=2e-3, device="cpu",
                                                    valid_fraction=0.25, patience=1))
    scores = log["valid_mAP@R"]
    assert len(log["loss"]) == len(scores) < 30  # it stopped
    assert log["best_epoch"] == int(np.argmax(scores)) + 1 and len(scores) - log["best_epoch"] == 1
    from vision.evaluate import evaluate_focallens

    conditions = {factor: phrasings[0] for factor, phrasings in valid.phrasings.items()}
    assert evaluate_focallens(lens, valid, conditions, device="cpu")["mean"]["mAP@R"] == pytest.approx(max(scores))
