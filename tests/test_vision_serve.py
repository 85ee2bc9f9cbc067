"""Image indexes through the CLI: `index build --corpus images` with a FocalLens model (under a condition)
or an encoder spec, `index query --image` with a contact sheet, and the user errors (exit 2)."""

import json

import numpy as np
import polars as pl
import pytest
from PIL import Image

from helpers import run
from indexes import index_path
from vision.focallens import FocalLens
from vision.sheet import CAPTION_HEIGHT, GAP
from vision.synthetic import make_conditional, write_conditional
from vision.train_focallens import save_model

COLOUR = "focus on the colour"




@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """24 PNG images with a labels.csv of their factors."""
    root = tmp_path_factory.mktemp("images")
    data = make_conditional(n=30, size=32, seed=4)["train"]
    names = [f"img{i:02d}.png" for i in range(len(data))]
    for name, pixels in zip(names, data.images):
        Image.fromarray(pixels).save(root / name)
    data.labels.with_columns(file=pl.Series(names)).write_csv(root / "labels.csv")
    return root


@pytest.fixture(scope="module")
def lens(tmp_path_factory):
    return save_model(FocalLens(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, condition_tokens=2),
                      tmp_path_factory.mktemp("models") / "lens")


def test_focallens_index_round_trip_with_contact_sheet(folder, lens, tmp_path):
    built = run("index", "build", "--corpus", "images", "--images", folder, "--model", lens, "--condition", COLOUR,
                "--name", "colours", "--device", "cpu", "--json")
    assert built.exit_code == 0, built.output
    info = json.loads(built.stdout)
    assert info["rows"] == 24 and info["dim"] == 384
    assert info["encoder"]["family"] == "vision" and info["encoder"]["condition"] == COLOUR
    assert (index_path("colours") / "model" / "model.safetensors").is_file()
    sheet = tmp_path / "sheet.png"
    result = run("index", "query", "colours", "--image", folder / "img05.png", "-k", 4, "--sheet", sheet, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 4 and hits[0]["id"] == "img05.png" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert {"colour", "shape", "path"} <= set(hits[0]["payload"])
    with Image.open(sheet) as image:
        assert image.size == (5 * (128 + GAP) + GAP, 128 + CAPTION_HEIGHT + 2 * GAP)
    same = run("index", "query", "colours", "--image", folder / "img05.png", "--condition", COLOUR, "--device", "cpu", "--json")
    assert same.exit_code == 0 and json.loads(same.stdout)[0]["id"] == "img05.png"


def test_encoder_index_from_an_archive_round_trip(tmp_path):
    data = tmp_path / "bench"
    write_conditional(make_conditional(n=20, size=32, seed=5), data)
    built = run("index", "build", "--corpus", "images", "--images", data / "train.npz", "--encoder", "timm:test_vit",
                "--name", "vit", "--device", "cpu", "--json")
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["encoder"]["kind"] == "encoder"
    query = tmp_path / "q.png"
    with np.load(data / "train.npz") as archive:
        Image.fromarray(archive["images"][3]).save(query)
    sheet = tmp_path / "sheet.png"
    result = run("index", "query", "vit", "--image", query, "-k", 3, "--sheet", sheet, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)  # random-init weights, yet the same ones: they are stored in the index
    assert hits[0]["id"] == "3" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4) and hits[0]["payload"]["row"] == 3
    assert sheet.is_file()


def test_build_errors_exit_2_and_write_nothing(folder, lens, tmp_path):
    cases = [
        ("--images", tmp_path / "missing", "--model", lens, "--condition", COLOUR),
        ("--images", folder, "--model", lens),
        ("--images", folder, "--model", lens, "--condition", "  "),
        ("--images", folder, "--encoder", "timm:test_vit", "--condition", COLOUR),
        ("--images", folder),
        ("--model", lens, "--condition", COLOUR),
        ("--images", folder, "--model", tmp_path / "no-model", "--condition", COLOUR),
    ]
    for args in cases:
        result = run("index", "build", "--corpus", "images", "--name", "bad", *args)
        assert result.exit_code == 2 and result.output.startswith("error:"), (args, result.output)
    assert not index_path("bad").exists()


def test_query_errors_exit_2(folder, lens, tmp_path):
    assert run("index", "build", "--corpus", "images", "--images", folder, "--model", lens, "--condition", COLOUR,
               "--name", "colours", "--device", "cpu").exit_code == 0
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    sheet = tmp_path / "sheet.png"
    cases = [
        ("--image", broken, "--sheet", sheet),
        ("--image", tmp_path / "missing.png", "--sheet", sheet),
        ("--image", folder / "img01.png", "--condition", "", "--sheet", sheet),
        ("--image", folder / "img01.png", "--condition", "focus on the shape", "--sheet", sheet),
    ]
    for args in cases:
        result = run("index", "query", "colours", *args)
        assert result.exit_code == 2 and result.output.startswith("error:"), (args, result.output)
    assert not sheet.exists()
