"""Property-based fuzzing of every reader and of CLI arguments (hypothesis): whatever the bytes, ragcli
answers (exit 0) or refuses with exit 2 and one line, writes nothing, and leaves the inputs untouched."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from fuzz.contract import check, invoke, snapshot
from indexes import UserError, VectorIndex
from recsys.synthetic import item_table, markov_interactions, write_recbole

REPO = Path(__file__).resolve().parents[2]
COLIEE = REPO / "data" / "coliee-sample"
HOSTILE = st.sampled_from(["'", '"', "a' OR 1=1 --", "'; COPY (SELECT 1) TO 'x'; --", "$(touch x)", "`id`",
                           "..", "../../etc/passwd", "\x00", "%s", "{}", "~", "-", "--help", " ", "é", "\\"])
TEXT = st.one_of(st.text(max_size=40), HOSTILE)


def mutate(data: bytes, draw_ops) -> bytes:
    """Apply (kind, position, payload) edits: truncate, insert, overwrite, delete a line."""
    for kind, position, payload in draw_ops:
        at = position % (len(data) + 1)
        if kind == "truncate":
            data = data[:at]
        elif kind == "insert":
            data = data[:at] + payload + data[at:]
        elif kind == "overwrite":
            data = data[:at] + payload + data[at + len(payload):]
        else:
            lines = data.split(b"\n")
            del lines[at % len(lines)]
            data = b"\n".join(lines)
    return data


EDITS = st.lists(st.tuples(st.sampled_from(["truncate", "insert", "overwrite", "delete-line"]),
                           st.integers(0, 1 << 16), st.binary(min_size=1, max_size=24)), min_size=1, max_size=4)


@pytest.fixture(scope="module")
def recsys_data(tmp_path_factory):
    return write_recbole(tmp_path_factory.mktemp("recsys"), "sample", markov_interactions(60, 20, seed=3), item_table(20))


@pytest.fixture(scope="module")
def sasrec_dir(recsys_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "model"
    result = invoke("train", "sasrec", "--data", recsys_data, "--out", out, "--epochs", 1, "--maxlen", 8,
                    "--hidden", 8, "--blocks", 1, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    return out


# ---- COLIEE ------------------------------------------------------------------------------------
@given(file=st.sampled_from(["civil_code_en-sample.txt", "riteval_R02_en.xml", "riteval_R03_en.xml"]), edits=EDITS)
def test_coliee_files(tmp_path_factory, file, edits):
    data = tmp_path_factory.mktemp("coliee")
    shutil.copytree(COLIEE, data, dirs_exist_ok=True)
    (data / file).write_bytes(mutate((data / file).read_bytes(), edits))
    out = tmp_path_factory.mktemp("out")
    before = snapshot(data, out)
    result = invoke("eval", "coliee", "--data-dir", data, "--years", "R03", "--valid-years", "R02", "--model", "bm25",
                    "--run", out / "r03.run")
    check(result, before, data, out)


# ---- interactions ------------------------------------------------------------------------------
ROW = st.lists(st.one_of(st.integers(-5, 99).map(str), st.text(alphabet="abc,;\t :\"'", max_size=6)), max_size=4)


@given(rows=st.lists(ROW, max_size=12), sep=st.sampled_from([" ", ",", "\t", "::"]),
       suffix=st.sampled_from([".txt", ".csv", ".tsv", ".inter", ".parquet"]),
       fmt=st.sampled_from(["auto", "sasrec", "csv", "tsv", "recbole", "parquet"]),
       header=st.booleans())
def test_interaction_files(tmp_path_factory, rows, sep, suffix, fmt, header):
    folder = tmp_path_factory.mktemp("inter")
    lines = ([sep.join(["user_id:token", "item_id:token"] if suffix == ".inter" else ["user", "item"])] if header else [])
    file = folder / f"data{suffix}"
    file.write_text("\n".join(lines + [sep.join(r) for r in rows]) + "\n", encoding="utf-8")
    before = snapshot(folder)
    check(invoke("data", "stats", file, "--format", fmt), before, folder)


# ---- model directories -------------------------------------------------------------------------
JSON_VALUE = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 1 << 40), st.floats(allow_nan=True),
                                    st.text(max_size=8)),
                          lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                          max_leaves=6)


@given(target=st.sampled_from(["config.json", "item_ids.json", "model.safetensors"]),
       key=st.sampled_from(["n_items", "maxlen", "hidden", "blocks", "heads", "dropout", "pre_ln", "<new>"]),
       value=JSON_VALUE, edits=EDITS)
def test_sasrec_model_directories(sasrec_dir, recsys_data, tmp_path_factory, target, key, value, edits):
    model = tmp_path_factory.mktemp("m") / "model"
    shutil.copytree(sasrec_dir, model)
    file = model / target
    if target == "config.json":
        config = json.loads(file.read_text())
        config[key] = value
        file.write_text(json.dumps(config))
    elif target == "item_ids.json":
        file.write_text(json.dumps(value))
    else:
        file.write_bytes(mutate(file.read_bytes(), edits))
    before = snapshot(model.parent)
    result = invoke("eval", "sasrec", "--data", recsys_data, "--model", model, "--device", "cpu", "--json")
    check(result, before, model.parent)


# ---- index directories -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ix") / "ix"
    rows = [{"title": f"t{i}", "n": i} for i in range(30)]
    VectorIndex.build(np.random.default_rng(0).standard_normal((30, 4)), [f"i{i}" for i in range(30)], rows,
                      encoder={"family": "recsys", "model_dir": "model"}, device="cpu").save(path)
    return path


@given(key=st.sampled_from(["dim", "metric", "kind", "rows", "id_type", "encoder", "sha256", "search_params",
                            "format_version"]), value=JSON_VALUE,
       file=st.sampled_from(["manifest.json", "index.faiss", "payload.duckdb"]), edits=EDITS)
def test_index_directories(index_dir, tmp_path_factory, key, value, file, edits):
    path = tmp_path_factory.mktemp("copy") / "ix"
    shutil.copytree(index_dir, path)
    if file == "manifest.json":
        manifest = json.loads((path / file).read_text())
        manifest[key] = value
        (path / file).write_text(json.dumps(manifest))
    else:
        (path / file).write_bytes(mutate((path / file).read_bytes(), edits))
    before = snapshot(path.parent)
    check(invoke("index", "info", path, "--json"), before, path.parent)
    check(invoke("index", "query", path, "--history", "i1,i2"), before, path.parent, ok_allowed=False)


# ---- images, NPZ, IDX --------------------------------------------------------------------------
def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@given(suffix=st.sampled_from([".png", ".jpg", ".tif", ".bmp", ".gif"]), edits=EDITS)
def test_image_files(tmp_path_factory, suffix, edits):
    from vision.datasets import load_images

    folder = tmp_path_factory.mktemp("img")
    (folder / f"a{suffix}").write_bytes(mutate(_png(), edits))
    before = snapshot(folder)
    try:
        data = load_images(folder)
        [np.asarray(image) for image in data.images]
    except UserError as err:
        assert "\n" not in str(err)
    assert snapshot(folder) == before


@given(shape=st.lists(st.integers(0, 40), min_size=0, max_size=5),
       dtype=st.sampled_from(["uint8", "float32", "float64", "int64", "bool", "U3", "O"]),
       extra=st.dictionaries(TEXT.filter(lambda s: s.isidentifier()), st.integers(0, 40), max_size=2))
def test_npz_archives(tmp_path_factory, shape, dtype, extra):
    from vision.datasets import load_images

    folder = tmp_path_factory.mktemp("npz")
    n = shape[0] if shape else 0
    arrays = {"images": np.zeros(shape, dtype=dtype) if dtype != "O" else np.array([None] * max(n, 1), dtype=object)}
    arrays.update({name: np.arange(length) for name, length in extra.items() if name != "images"})
    np.savez(folder / "d.npz", **arrays)
    before = snapshot(folder)
    try:
        data = load_images(folder / "d.npz")
        [np.asarray(image) for image in data.images]
    except UserError as err:
        assert "\n" not in str(err)
    assert snapshot(folder) == before


@given(header=st.binary(min_size=0, max_size=24), body=st.binary(max_size=64))
def test_idx_files(tmp_path_factory, header, body):
    from vision.datasets import load_images

    folder = tmp_path_factory.mktemp("idx")
    file = folder / "t10k-images-idx3-ubyte"
    file.write_bytes(header + body)
    try:
        data = load_images(file)
        [np.asarray(image) for image in data.images]
    except UserError as err:
        assert "\n" not in str(err)


# ---- CLI arguments -----------------------------------------------------------------------------
@given(name=TEXT)
def test_index_names(tmp_path_factory, monkeypatch, name):
    cwd = tmp_path_factory.mktemp("cwd")
    (cwd / "pics").mkdir()
    (cwd / "pics" / "cat.png").write_bytes(_png())
    monkeypatch.chdir(cwd)
    before = snapshot(cwd)
    for args in (("index", "info", "--", name), ("index", "query", "--", name, "text"),
                 ("index", "build", "--corpus", "images", "--images", "pics", "--encoder", "nope:x", f"--name={name}",
                  "--overwrite")):
        result = invoke(*args)
        assert result.exit_code == 2 and "Traceback" not in result.output, (args, result.output)
        assert snapshot(cwd) == before


@given(option=st.sampled_from(["--epochs", "--batch-size", "--maxlen", "--hidden", "--blocks", "--heads", "--patience"]),
       value=st.one_of(st.integers(max_value=0), st.integers(min_value=1 << 40),
                       TEXT.filter(lambda s: not s.strip().lstrip("+").isdigit())))
def test_numeric_options_out_of_range(recsys_data, tmp_path_factory, option, value):
    out = tmp_path_factory.mktemp("o") / "model"
    result = invoke("train", "sasrec", "--data", recsys_data, "--out", out, option, value, "--device", "cpu")
    assert result.exit_code == 2, (option, value, result.output)
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
