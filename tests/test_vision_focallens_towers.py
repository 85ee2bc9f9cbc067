"""FocalLens with any encoder as its image tower (`--tower timm:NAME | registered name | hf:PATH`): FiLM on
each feature stage of CNN-like models, condition tokens in the sequence of ViT-style ones; initial weights,
training, save -> load (an hf: tower without its source directory), explanations and the CLI. Also the
condition-aware augmentation (`vision.augment`) and `train focallens --augment`.

Tiny timm test models (`test_resnet`, `test_vit`) and a tiny transformers ViT written by the test; the real
(offline) all-MiniLM-L6-v2 encodes instructions."""

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import one_line_error, run
from PIL import Image
from safetensors.torch import save_file

from indexes.errors import UserError
from vision.augment import TRANSFORMS, allowed_table, allowed_transforms, augment
from vision.digits import DIGIT_FACTORS
from vision.explain import explain_pair
from vision.focallens import FocalLens, create_focallens, load_focallens
from vision.synthetic import FACTORS, make_conditional, write_conditional
from vision.train_focallens import TrainSettings, save_model, train_focallens

COLOUR, SHAPE = "focus on the colour", "focus on the shape"


@pytest.fixture(scope="module")
def data():
    return make_conditional(n=192, size=32, seed=3)


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
    """A tiny transformers ViT (weights + image processor) in a directory, as `hf:` towers are given."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    path = tmp_path_factory.mktemp("hf-vit")
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)
    ViTModel(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.45, 0.5],
                      image_std=[0.2, 0.25, 0.3]).save_pretrained(path)
    return path


def _embed(model, data, condition=COLOUR):
    return model.embed(data["test"].images[:8], condition if model.conditional else None, device="cpu")


def test_a_cnn_tower_gets_film_on_every_stage_starting_at_the_identity():
    torch.manual_seed(0)
    model = FocalLens(image_size=32, tower="timm:test_resnet")
    stages = model.encoder.backbone.model.feature_info
    assert not model.encoder.uses_tokens and len(model.encoder.film) == len(stages) == 5
    assert [g.out_features for g in model.encoder.film] == [2 * s["num_chs"] for s in stages]
    pixels = torch.randn(4, 3, 32, 32)
    model.eval()
    baseline = model.proj(model.encoder(pixels))  # no instruction: the hooks leave the backbone alone
    for instructions in (torch.randn(4, 384), torch.zeros(4, 384)):  # FiLM starts at gamma = 1, beta = 0
        assert torch.allclose(model.proj(model.encoder(pixels, instructions)), baseline, atol=1e-6)
    with torch.no_grad():
        model.encoder.film[2].weight.normal_()
    first, second = torch.randn(1, 384).expand(4, -1), torch.randn(1, 384).expand(4, -1)
    assert not torch.allclose(model(pixels, first), model(pixels, second), atol=1e-4)


def test_a_vit_tower_carries_condition_tokens():
    torch.manual_seed(0)
    model = FocalLens(image_size=32, tower="timm:test_vit", condition_tokens=3).eval()
    vit = model.encoder.backbone.model
    seen = {}
    vit.blocks[0].register_forward_pre_hook(lambda _m, inputs: seen.update(length=inputs[0].shape[1]))
    model(torch.randn(2, 3, 32, 32), torch.randn(2, 384))
    patches = (32 // vit.patch_embed.patch_size[0]) ** 2
    assert model.encoder.uses_tokens and model.encoder.film is None
    assert seen["length"] == vit.num_prefix_tokens + patches + 3
    baseline = FocalLens(image_size=32, tower="timm:test_vit", conditional=False)
    assert baseline.encoder.tokens is None and baseline(torch.randn(2, 3, 32, 32)).shape == (2, 384)


@pytest.mark.parametrize("tower", ["timm:test_resnet", "timm:test_vit"])
def test_an_encoder_tower_trains_and_reloads_identically(tower, data, tmp_path):
    torch.manual_seed(0)
    model = FocalLens(image_size=32, tower=tower)
    log = train_focallens(model, data["train"], TrainSettings(epochs=4, batch_size=32, lr=3e-3, device="cpu"))
    assert log["loss"][-1] < log["loss"][0]
    again = load_focallens(save_model(model, tmp_path / "model"))
    assert again.image_tower == tower
    np.testing.assert_array_equal(_embed(again, data), _embed(model, data))
    assert not np.allclose(_embed(model, data, COLOUR), _embed(model, data, SHAPE), atol=1e-3)


def test_tower_weights_start_the_tower_and_set_its_normalisation(tmp_path):
    import timm

    torch.manual_seed(1)
    source = timm.create_model("test_resnet", num_classes=0)
    save_file(source.state_dict(), tmp_path / "weights.safetensors")
    model = create_focallens("timm:test_resnet", tmp_path / "weights.safetensors", image_size=32)
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.encoder.backbone.model.state_dict()[name], tensor), name
    assert torch.allclose(model.mean.flatten(), torch.tensor(source.pretrained_cfg["mean"]))
    save_file({"conv1.weight": torch.zeros(3)}, tmp_path / "wrong.safetensors")
    with pytest.raises(UserError, match="do not fit"):
        create_focallens("timm:test_resnet", tmp_path / "wrong.safetensors", image_size=32)
    with pytest.raises(UserError, match="tower weights are for encoder towers"):
        create_focallens("cnn", tmp_path / "weights.safetensors", image_size=32)


def test_an_hf_tower_starts_from_its_directory_and_reloads_without_it(hf_vit, data, tmp_path):
    from transformers import ViTModel

    model = create_focallens(f"hf:{hf_vit}", image_size=32)
    source = ViTModel.from_pretrained(hf_vit)
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.encoder.backbone.model.state_dict()[name], tensor), name
    assert model.encoder.uses_tokens
    assert torch.allclose(model.std.flatten(), torch.tensor([0.2, 0.25, 0.3]))
    train_focallens(model, data["train"], TrainSettings(epochs=1, batch_size=32, device="cpu"))
    saved = save_model(model, tmp_path / "model")
    moved = tmp_path / "moved"
    shutil.move(hf_vit, moved)  # the saved model carries the tower's config: the source is not needed
    try:
        np.testing.assert_array_equal(_embed(load_focallens(saved), data), _embed(model, data))
    finally:
        shutil.move(moved, hf_vit)


@pytest.mark.parametrize("tower", ["timm:test_resnet", "timm:test_vit"])
def test_explanations_of_an_encoder_tower(tower, data):
    """Maps for both kinds of tower; on the CNN (the kind whose first stage gives a fine map) they follow
    the condition."""
    torch.manual_seed(0)
    model = FocalLens(image_size=32, tower=tower)
    train_focallens(model, data["train"], TrainSettings(epochs=2, batch_size=32, lr=3e-3, device="cpu"))
    first, second = (Image.fromarray(data["test"].images[i]) for i in (0, 1))
    colour = explain_pair(model, first, second, COLOUR)
    shape = explain_pair(model, first, second, SHAPE)
    for heat in (*colour, *shape):
        assert heat.shape == (32, 32) and np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    if tower == "timm:test_resnet":
        assert not np.allclose(colour[0], shape[0])


def test_cli_trains_an_encoder_tower_and_refuses_unknown_ones(data, tmp_path):
    write_conditional(data, tmp_path / "data")
    out = tmp_path / "model"
    result = run("train", "focallens", "--data", tmp_path / "data", "--out", out, "--tower", "timm:test_resnet",
                 "--epochs", "1", "--batch-size", "32", "--augment", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["settings"]["augment"] is True
    assert load_focallens(out).image_tower == "timm:test_resnet"
    scores = run("eval", "images", "--data", tmp_path / "data", "--model", out, "--json")
    assert scores.exit_code == 0 and "mAP@R" in json.loads(scores.output)["mean"]
    bad = run("train", "focallens", "--data", tmp_path / "data", "--out", tmp_path / "bad", "--tower", "nope_net")
    one_line_error(bad, "unknown encoder")
    assert not (tmp_path / "bad").exists()


# ---- condition-aware augmentation -------------------------------------------------------------------

def test_each_factor_allows_only_transforms_that_keep_its_answer():
    allowed = {f: dict(zip(TRANSFORMS, allowed_transforms(f, a))) for f, a in {**FACTORS, **DIGIT_FACTORS}.items()}
    assert allowed["colour"] == {"colour": False, "crop": True, "flip": True}
    assert allowed["digit"] == {"colour": True, "crop": True, "flip": False}  # a mirrored digit is another glyph
    assert allowed["position"] == {"colour": True, "crop": False, "flip": False}
    assert allowed["size"]["crop"] is False and allowed["shape"] == dict.fromkeys(TRANSFORMS, True)
    assert allowed_transforms("Blond_Hair", ["blond hair", "not blond hair"])[0] is False


def _digit_images(n=16):
    rng = np.random.default_rng(0)
    images = np.zeros((n, 3, 16, 16), np.uint8)
    images[:, :, 4:12, 6:10] = rng.integers(60, 255, (n, 3, 1, 1))  # one coloured bar per image
    return torch.from_numpy(images)


def test_augment_applies_only_what_each_row_allows():
    images = _digit_images()
    generator = torch.Generator().manual_seed(0)
    none = augment(images, torch.zeros(len(images), 3, dtype=torch.bool), generator)
    assert torch.equal(none.round().byte(), images)
    flips = augment(images, torch.tensor([[False, False, True]] * len(images)), generator)
    mirrored = [torch.equal(a.round().byte(), b.flip(-1)) for a, b in zip(flips, images)]
    unchanged = [torch.equal(a.round().byte(), b) for a, b in zip(flips, images)]
    assert all(m or u for m, u in zip(mirrored, unchanged)) and any(mirrored)
    colour = augment(images, torch.tensor([[True, False, False]] * len(images)), generator)
    bar = (slice(None), slice(None), slice(4, 12), slice(6, 10))
    assert torch.equal(colour.amax(1) > 40, images.amax(1) > 0)  # the same pixels lit: the shape is kept
    assert not torch.allclose(colour[bar].float(), images[bar].float(), atol=8)  # its colour is not


def test_asked_about_colour_an_image_keeps_its_colour():
    images = _digit_images()
    table = allowed_table(["colour", "digit"], [DIGIT_FACTORS["colour"], DIGIT_FACTORS["digit"]])
    out = augment(images, table[torch.zeros(len(images), dtype=torch.long)], torch.Generator().manual_seed(1))
    lit = images.amax(1, keepdim=True) > 0
    for before, after, mask in zip(images.float(), out, lit):
        inside = after.amax(0) > 30  # crops move and blur the bar; its colour stays
        assert inside.any()
        colour_before = before[:, mask[0]].mean(1)
        colour_after = after[:, inside].mean(1)
        assert torch.allclose(colour_after / colour_after.sum(), colour_before / colour_before.sum(), atol=0.05)
