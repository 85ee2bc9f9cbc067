"""FocalLens: the conditional benchmark generator, the model, its training loop, retrieval metrics,
contact sheets, and the `data make-conditional` / `train focallens` / `eval images` commands.

Tiny everything: 32x32 images, a depth-1 ViT of width 32, a handful of steps; the real (offline)
all-MiniLM-L6-v2 encodes instructions and answers.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run
from indexes.errors import UserError
from vision.evaluate import parse_conditions, retrieval_metrics
from vision.focallens import FocalLens, load_focallens
from vision.sheet import CAPTION_HEIGHT, GAP, write_contact_sheet
from vision.synthetic import FACTORS, PHRASINGS, load_split, make_conditional, write_conditional
from vision.train_focallens import TrainSettings, contrastive_loss, save_model, train_focallens

TINY = dict(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, condition_tokens=2)



@pytest.fixture(scope="module")
def splits():
    return make_conditional(n=320, size=32, seed=1)


@pytest.fixture(scope="module")
def trained(splits):
    """A tiny FocalLens after a few steps, and its training log."""
    torch.manual_seed(0)
    model = FocalLens(**TINY)
    log = train_focallens(model, splits["train"], TrainSettings(epochs=6, batch_size=64, lr=3e-3, device="cpu"))
    return model, log


# ---- generator ----------------------------------------------------------------------------------
def test_generator_is_deterministic_by_seed():
    a, b, c = (make_conditional(n=50, size=32, seed=s) for s in (7, 7, 8))
    assert np.array_equal(a["train"].images, b["train"].images) and a["test"].labels.equals(b["test"].labels)
    assert not np.array_equal(a["train"].images, c["train"].images)
    assert (len(a["train"]), len(a["test"])) == (40, 10) and a["train"].images.shape[1:] == (32, 32, 3)


def test_factors_are_independent_and_drawn():
    labels = make_conditional(n=4000, size=16, seed=0)["train"].labels
    for f, values in FACTORS.items():
        assert sorted(labels[f].unique()) == sorted(values)
    for i, f in enumerate(FACTORS):
        for g in list(FACTORS)[i + 1:]:
            table = labels.group_by(f, g).len().pivot(on=g, index=f, values="len").drop(f).to_numpy().astype(float)
            expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
            cramers_v = np.sqrt(((table - expected) ** 2 / expected).sum() / table.sum() / (min(table.shape) - 1))
            assert cramers_v < 0.06, (f, g, cramers_v)


def test_rendered_pixels_follow_the_factors():
    data = make_conditional(n=200, size=32, seed=2)["train"]
    saturated = data.images.max(-1).astype(int) - data.images.min(-1) > 80  # the object; the background is grey
    ys, xs = np.mgrid[0:32, 0:32]
    area = saturated.sum((1, 2))
    cx, cy = (saturated * xs).sum((1, 2)) / area, (saturated * ys).sum((1, 2)) / area
    position = data.labels["position"].to_numpy()
    assert np.all((cx > 16) == np.char.endswith(position.astype(str), "right"))
    assert np.all((cy > 16) == np.char.startswith(position.astype(str), "bottom"))
    small = data.labels["size"].to_numpy() == "small"
    assert area[small].mean() * 2 < area[~small].mean()
    red = data.labels["colour"].to_numpy() == "red"
    mean_rgb = (data.images * saturated[..., None]).sum((1, 2)) / area[:, None]
    assert np.all(mean_rgb[red, 0] > 150) and np.all(mean_rgb[red, 1:] < 100)


def test_triples_cover_every_factor_and_phrasing(splits):
    data = splits["test"]
    triples = data.triples()
    assert len(triples) == len(data) * sum(len(p) for p in PHRASINGS.values())
    row = triples.filter(image=3, factor="colour").row(0, named=True)
    assert row["answer"] == data.labels["colour"][3] and row["instruction"] in PHRASINGS["colour"]


def test_written_dataset_reads_back(tmp_path, splits):
    write_conditional(splits, tmp_path / "bench")
    test = load_split(tmp_path / "bench", "test")
    assert np.array_equal(test.images, splits["test"].images) and test.labels.equals(splits["test"].labels)
    assert test.phrasings == PHRASINGS
    with pytest.raises(UserError, match="no 'val' split"):
        load_split(tmp_path / "bench", "val")
    generated = load_split("generated", "test", image_size=16)
    assert len(generated) == 2000 and generated.images.shape[1:] == (16, 16, 3)


# ---- model and training -------------------------------------------------------------------------
def test_contrastive_loss_treats_duplicate_answers_as_positives():
    answers = torch.eye(3)
    images = answers[[0, 0, 1]]
    loss = contrastive_loss(images, torch.tensor([0, 0, 1]), answers, torch.tensor(50.0))
    assert loss.item() < 1e-3  # duplicates are positives together; as negatives the loss would be about log 2
    wrong = contrastive_loss(answers[[1, 0, 0]], torch.tensor([0, 0, 1]), answers, torch.tensor(50.0))
    assert wrong.item() > 10


def test_training_lowers_the_loss_and_conditions_change_the_embedding(trained, splits):
    model, log = trained
    assert log["loss"][-1] < log["loss"][0] * 0.9
    image = splits["test"].images[:1]
    colour, shape = (model.embed(image, c, device="cpu") for c in ("focus on the colour", "what shape is the object?"))
    assert colour.shape == (1, 384) and float(colour[0] @ shape[0]) < 0.95
    assert np.allclose(np.linalg.norm(colour, axis=1), 1.0, atol=1e-5)


def test_save_and_load_give_identical_embeddings(trained, splits, tmp_path):
    model, _ = trained
    path = save_model(model, tmp_path / "lens")
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    again = load_focallens(path)
    images = splits["test"].images[:8]
    assert np.array_equal(model.embed(images, "focus on the size", device="cpu"), again.embed(images, "focus on the size", device="cpu"))


def test_pil_and_array_inputs_agree(trained, splits):
    model, _ = trained
    images = splits["test"].images[:4]
    pil = [Image.fromarray(a) for a in images]
    assert np.allclose(model.embed(images, "focus on the size", device="cpu"), model.embed(pil, "focus on the size", device="cpu"), atol=1e-6)


def test_unconditional_baseline_ignores_the_instruction(splits):
    model = FocalLens(**TINY, conditional=False)
    train_focallens(model, splits["train"], TrainSettings(epochs=1, batch_size=64, device="cpu"))
    images = splits["test"].images[:4]
    assert np.array_equal(model.embed(images, "focus on the colour", device="cpu"), model.embed(images, None, device="cpu"))


def test_empty_condition_is_a_user_error(trained, splits):
    model, _ = trained
    for bad in (None, "", "   "):
        with pytest.raises(UserError, match="non-empty"):
            model.embed(splits["test"].images[:1], bad, device="cpu")


# ---- metrics and sheets -------------------------------------------------------------------------
def test_retrieval_metrics_on_a_hand_checked_case():
    # unit vectors at angles a0=0, a1=0.1, b0=0.25, a2=0.45: neighbours are the nearest angles
    angles = np.array([0.0, 0.1, 0.25, 0.45])
    emb = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    out = retrieval_metrics(emb, np.array(["a", "a", "b", "a"]), ks=(1, 2))
    # rankings: a0 -> a1 b0 a2 | a1 -> a0 b0 a2 | b0 -> a1 a2 a0 | a2 -> b0 a1 a0
    assert out["Success@1"] == pytest.approx(2 / 4)  # a0, a1 hit first; b0 has no other b; a2 misses
    assert out["P@2"] == pytest.approx((0.5 + 0.5 + 0 + 0.5) / 4)
    # mAP@R (R=2 for the a's, 0 for b0): a0 1/2, a1 1/2, b0 0, a2 (hit at rank 2: precision 1/2) / 2
    assert out["mAP@R"] == pytest.approx((0.5 + 0.5 + 0 + 0.25) / 4)


def test_parse_conditions():
    phr = {"colour": ("focus on the colour", "what colour?"), "shape": ("focus on the shape",)}
    assert parse_conditions([], phr) == {"colour": "focus on the colour", "shape": "focus on the shape"}
    assert parse_conditions(["shape", "colour=which hue?"], phr) == {"shape": "focus on the shape", "colour": "which hue?"}
    with pytest.raises(UserError, match="empty"):
        parse_conditions(["colour= "], phr)
    with pytest.raises(UserError, match="unknown condition"):
        parse_conditions(["texture"], phr)


def test_contact_sheet_is_written(tmp_path, splits):
    images = [Image.fromarray(a) for a in splits["test"].images[:4]]
    path = write_contact_sheet(tmp_path / "out" / "sheet.png", images[0], [(im, f"id{i}", 0.9 - i / 10) for i, im in enumerate(images[1:])], thumb=64)
    with Image.open(path) as sheet:
        assert sheet.format == "PNG" and sheet.size == (4 * (64 + GAP) + GAP, 64 + CAPTION_HEIGHT + 2 * GAP)
        assert np.array_equal(np.asarray(sheet)[GAP + 10, GAP + 64 + GAP + 10], np.asarray(images[1].resize((64, 64), Image.NEAREST))[10, 10])



def test_cli_make_train_eval(tmp_path):
    data = tmp_path / "bench"
    made = run("data", "make-conditional", "--out", data, "--n", 120, "--size", 32, "--json")
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["splits"] == {"train": 96, "test": 24}
    assert run("data", "make-conditional", "--out", data).exit_code == 2  # exists, no --overwrite
    model = tmp_path / "lens"
    trained = run("train", "focallens", "--data", data, "--out", model, "--epochs", 2, "--batch-size", 32, "--embed-dim", 32,
                  "--depth", 1, "--heads", 2, "--device", "cpu", "--json")
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.stdout)["steps"] == 6 and (model / "model.safetensors").is_file()
    result = run("eval", "images", "--data", data, "--model", model, "--condition", "colour", "--condition", "size=how big is it?",
                 "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert set(metrics) == {"colour", "size", "mean"} and 0.0 <= metrics["mean"]["mAP@R"] <= 1.0
    assert metrics["mean"]["Success@1"] == pytest.approx((metrics["colour"]["Success@1"] + metrics["size"]["Success@1"]) / 2)
    encoder = run("eval", "images", "--data", data, "--encoder", "timm:test_vit", "--device", "cpu", "--json")
    assert encoder.exit_code == 0, encoder.output
    assert set(json.loads(encoder.stdout)) == {*FACTORS, "mean"}


def test_cli_errors_exit_2_and_write_nothing(tmp_path):
    data = tmp_path / "bench"
    write_conditional(make_conditional(n=40, size=32, seed=0), data)
    out = tmp_path / "never"
    cases = [
        ("train", "focallens", "--data", tmp_path / "missing", "--out", out),
        ("eval", "images", "--data", data, "--model", tmp_path / "missing"),
        ("eval", "images", "--data", data),
        ("eval", "images", "--data", data, "--model", out, "--condition", "colour="),
        ("data", "make-conditional", "--out", out, "--test-fraction", 1.5),
    ]
    for args in cases:
        result = run(*args)
        assert result.exit_code == 2 and result.output.startswith("error:"), (args, result.output)
    assert not out.exists()


def test_clip_text_tower_encodes_instructions(tmp_path):
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModelWithProjection

    from indexes.text_encoder import text_encoder_path
    from vision.focallens import TextTower

    tokenizer = AutoTokenizer.from_pretrained(text_encoder_path())  # any tokenizer will do for a random tower
    config = CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, projection_dim=16, max_position_embeddings=64,
                            eos_token_id=tokenizer.sep_token_id)  # CLIP pools at the end-of-text token
    torch.manual_seed(0)
    CLIPTextModelWithProjection(config).save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    tower = TextTower(f"hf:{tmp_path / 'clip'}")
    emb = tower.encode(["focus on the colour", "what shape is it?"])
    assert tower.dim == 16 and emb.shape == (2, 16) and torch.allclose(emb.norm(dim=1), torch.ones(2))
    assert not torch.allclose(emb[0], emb[1])
    model = FocalLens(**TINY, text_dim=16, text_encoder=f"hf:{tmp_path / 'clip'}")
    assert model.embed(np.zeros((2, 32, 32, 3), np.uint8), "focus on the colour", device="cpu").shape == (2, 16)
