"""CelebA as distributed: a tiny folder in its format (12 JPEGs, 3 attributes), the strict readers of
list_attr_celeba.txt / list_eval_partition.txt, readable attribute phrasings, and `train focallens`,
`eval images` and `index build` run straight on the folder."""

import json

import numpy as np
import pytest
from PIL import Image

from helpers import one_line_error, run
from indexes.errors import UserError
from vision.celeba import ATTR_FILE, IMAGE_DIR, PARTITION_FILE, answers, describe, load_celeba, phrasings
from vision.datasets import ImageFiles, load_images
from vision.focallens import FocalLens
from vision.synthetic import load_split
from vision.train_focallens import save_model

NAMES = ["Smiling", "Wearing_Hat", "Black_Hair"]
HEADER_40 = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
             "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
             "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
             "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
             "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young ")  # line 2 of the real file


def _files(n: int = 12) -> list[str]:
    return [f"{i:06d}.jpg" for i in range(1, n + 1)]


def _write(root, attr_rows=None, partition_rows=None, header=None):
    """A CelebA folder: 12 JPEGs (Smiling ones bright), the attribute and partition files as distributed
    (two spaces between values, a trailing space after the names)."""
    (root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    values = np.where(np.arange(12)[:, None] % (np.arange(3) + 2) == 0, 1, -1)
    for name, row in zip(_files(), values):
        Image.fromarray(np.full((24, 20, 3), 200 if row[0] == 1 else 40, np.uint8)).save(root / IMAGE_DIR / name)
    attr_rows = attr_rows or [f"{f} " + " ".join(f"{v:2d}" for v in row) for f, row in zip(_files(), values)]
    header = header or [str(len(attr_rows)), " ".join(NAMES) + " "]
    (root / ATTR_FILE).write_text("\n".join([*header, *attr_rows]) + "\n")
    partition_rows = partition_rows or [f"{f} {0 if i < 6 else 1 if i < 9 else 2}" for i, f in enumerate(_files())]
    (root / PARTITION_FILE).write_text("\n".join(partition_rows) + "\n")
    return root


@pytest.fixture
def celeba(tmp_path):
    return _write(tmp_path / "celeba")


def test_load_images_reads_the_folder_and_its_image_folder(celeba):
    data = load_images(celeba)
    assert data.ids == _files() and data.labels.columns == ["id", *NAMES]
    assert data.labels.row(0, named=True) == {"id": "000001.jpg", "Smiling": "smiling", "Wearing_Hat": "wearing a hat",
                                              "Black_Hair": "with black hair"}
    assert data.labels["Smiling"][1] == "not smiling" and data.labels["Wearing_Hat"][1] == "not wearing a hat"
    assert isinstance(data.images, ImageFiles) and data.paths[3] == celeba / IMAGE_DIR / "000004.jpg"
    assert data.images[0].size == (20, 24)
    assert load_images(celeba / IMAGE_DIR).labels.equals(data.labels)


def test_splits_attributes_and_lazy_reading(celeba):
    (celeba / IMAGE_DIR / "000002.jpg").write_bytes(b"not a jpeg")  # a train image: never decoded below
    test = load_split(celeba, "test")
    assert len(test) == 3 and test.labels.columns == NAMES and set(test.phrasings) == set(NAMES)
    assert test.phrasings["Smiling"][:2] == ("focus on whether the person is smiling", "is the person smiling?")
    assert [im.size for im in test.images] == [(20, 24)] * 3
    chosen = load_split(celeba / IMAGE_DIR, "valid", attributes=["Wearing_Hat", "Smiling", "Wearing_Hat"])
    assert len(chosen) == 3 and chosen.labels.columns == ["Wearing_Hat", "Smiling"] and list(chosen.phrasings) == ["Wearing_Hat", "Smiling"]
    train = load_celeba(celeba, "train")
    assert train.ids == _files()[:6]
    with pytest.raises(UserError, match="cannot read image .*000002.jpg"):
        train.images[1]
    with pytest.raises(UserError, match="no attribute 'Bald'; it has Smiling, Wearing_Hat, Black_Hair"):
        load_split(celeba, "test", attributes=["Bald"])
    with pytest.raises(UserError, match="splits train, valid, test, not 'val'"):
        load_split(celeba, "val")


BAD_ROWS = {
    "columns": (3, "000003.jpg 1 -1", r"line 6: expected a file name and 3 values, got 3 columns"),
    "value": (4, "000004.jpg 1 0 -1", r"line 7: attribute values must be 1 or -1, got '0'"),
    "unknown": (0, "999999.jpg 1 1 1", r"line 3: no image '999999.jpg'"),
    "twice": (1, "000001.jpg 1 1 1", r"line 4: '000001.jpg' is listed twice"),
}


def test_the_real_forty_attribute_header(tmp_path):
    rows = [f"{f}  " + "  ".join(["-1", " 1"] * 20) for f in _files(2)]
    data = load_images(_write(tmp_path / "c", attr_rows=rows, header=["2", HEADER_40]))
    assert data.labels.width == 41 and data.labels.row(1)[1:3] == ("without a five o'clock shadow", "with arched eyebrows")


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_attribute_rows_name_the_file_and_line(tmp_path, case):
    row, text, message = BAD_ROWS[case]
    rows = [f"{f} 1 -1 1" for f in _files()]
    rows[row] = text
    root = _write(tmp_path / "c", attr_rows=rows)
    with pytest.raises(UserError, match=f"{ATTR_FILE} {message}"):
        load_images(root)


def test_bad_headers_and_counts(tmp_path):
    rows = [f"{f} 1 -1 1" for f in _files()]
    with pytest.raises(UserError, match=f"{ATTR_FILE} line 1: says 13 images but lists 12"):
        load_images(_write(tmp_path / "a", attr_rows=rows, header=["13", " ".join(NAMES)]))
    with pytest.raises(UserError, match=f"{ATTR_FILE} line 1: expected the number of images"):
        load_images(_write(tmp_path / "b", attr_rows=rows, header=["Smiling", " ".join(NAMES)]))
    with pytest.raises(UserError, match=f"{ATTR_FILE} line 2: attribute 'Smiling' is repeated"):
        load_images(_write(tmp_path / "c", attr_rows=rows, header=["12", "Smiling Smiling Bald"]))
    (tmp_path / "d" / ATTR_FILE).parent.mkdir()
    (tmp_path / "d" / ATTR_FILE).write_text("0\nSmiling\n")
    with pytest.raises(UserError, match=f"no {IMAGE_DIR}/ folder"):
        load_images(tmp_path / "d")


def test_bad_partitions_name_the_file_and_line(tmp_path):
    lines = [f"{f} 0" for f in _files()]
    cases = {
        "missing": (lines[:-1], rf"{PARTITION_FILE} gives no split for 1 images, e.g. '000012.jpg' \({ATTR_FILE} line 14\)"),
        "code": ([*lines[:2], "000003.jpg 3", *lines[3:]], rf"{PARTITION_FILE} line 3: expected a file name and 0, 1 or 2"),
        "unknown": ([*lines, "000099.jpg 0"], rf"{PARTITION_FILE} line 13: '000099.jpg' is not an image of {ATTR_FILE}"),
        "twice": ([*lines, "000001.jpg 2"], rf"{PARTITION_FILE} line 13: '000001.jpg' is listed twice"),
    }
    for name, (rows, message) in cases.items():
        root = _write(tmp_path / name, partition_rows=rows)
        assert len(load_images(root)) == 12  # no split asked: the partition file is not read
        with pytest.raises(UserError, match=message):
            load_split(root, "test")


def test_readable_attribute_phrasings():
    assert describe("Wearing_Hat") == ("is", "wearing a hat") and describe("Wearing_Earrings") == ("is", "wearing earrings")
    assert describe("Smiling") == ("is", "smiling") and describe("Oval_Face") == ("has", "an oval face")
    assert describe("Black_Hair") == ("has", "black hair") and describe("Bags_Under_Eyes") == ("has", "bags under eyes")
    assert describe("Freckles") == ("has", "freckles") and describe("Tall") == ("is", "tall")
    assert phrasings("Bangs")[1] == "does the person have bangs?" and answers("Bangs") == ("with bangs", "without bangs")
    assert answers("No_Beard") == ("beardless", "not beardless")
    texts = [t for a in HEADER_40.split() for t in (*phrasings(a), *answers(a))]
    assert len(set(texts)) == len(texts) and not any("_" in t for t in texts)


@pytest.fixture
def lens(tmp_path):
    return save_model(FocalLens(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, condition_tokens=2),
                      tmp_path / "lens")


def test_cli_trains_evaluates_and_indexes_a_celeba_folder(celeba, lens, tmp_path):
    model = tmp_path / "trained"
    trained = run("train", "focallens", "--data", celeba, "--out", model, "--attributes", "Smiling,Wearing_Hat",
                  "--epochs", 1, "--batch-size", 6, "--embed-dim", 32, "--depth", 1, "--heads", 2, "--device", "cpu", "--json")
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.stdout)["steps"] == 1
    result = run("eval", "images", "--data", celeba, "--model", model, "--condition", "Smiling", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)) == {"Smiling", "mean"}
    valid = run("eval", "images", "--data", celeba, "--split", "valid", "--model", model, "--device", "cpu", "--json")
    assert valid.exit_code == 0 and set(json.loads(valid.stdout)) == {*NAMES, "mean"}
    built = run("index", "build", "--corpus", "images", "--images", celeba / IMAGE_DIR, "--model", lens,
                "--condition", phrasings("Smiling")[0], "--name", "faces", "--device", "cpu", "--json")
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["rows"] == 12
    hits = run("index", "query", "faces", "--image", celeba / IMAGE_DIR / "000006.jpg", "-k", 2, "--device", "cpu", "--json")
    assert hits.exit_code == 0, hits.output
    assert json.loads(hits.stdout)[0]["payload"]["Smiling"] == "not smiling"


def test_cli_errors_are_one_line(celeba, tmp_path):
    one_line_error(run("train", "focallens", "--data", celeba, "--out", tmp_path / "m", "--attributes", "Bald"), "Bald")
    (celeba / PARTITION_FILE).write_text("000001.jpg 0\n")
    one_line_error(run("eval", "images", "--data", celeba, "--encoder", "timm:test_vit"), PARTITION_FILE, "000002.jpg")
    assert not (tmp_path / "m").exists()
