"""Vision reliability (issue 11): image resource limits, strict weights and checkpoints, random weights
announced, NaN never rewarded, output directories never clobbered, bounded CLI options."""

import gzip
import io
import json
import struct
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from helpers import run
from indexes.errors import UserError
from vision.datasets import MAX_PIXELS_ENV, load_images, read_idx


def _one_error_line(result):
    """The CLI contract for a user mistake: exit 2 and exactly one stderr line, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ---- images: sizes checked from the header, before decoding -----------------------------------------
def _png_header(width, height):
    """A PNG whose IHDR claims width x height (no pixel data): PIL's DecompressionBombError before the fix."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _tiff_header(width, height):
    """A little-endian grayscale TIFF whose tags claim width x height, with 16 bytes of data."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8 + 2 + 9 * 12 + 4),
            (277, 3, 1), (278, 4, height), (279, 4, 16)]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + struct.pack("<HH" if kind == 3 else "<I", *((value, 0) if kind == 3 else (value,)))
        for tag, kind, value in tags) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x80" * 16


def _image_folder(tmp_path, name, data):
    folder = tmp_path / "pics"
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(folder / "ok.png")
    (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("name, data, message", [
    ("bomb.png", _png_header(100_000, 100_000), "pixel limit"),
    ("bomb.tif", _tiff_header(100_000, 100_000), "pixel limit"),
    ("empty.png", _png_header(0, 5), "cannot read image"),
    ("short.tif", _tiff_header(3000, 3000), "cannot read image"),  # under the limit, data cut short
    ("garbled.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "cannot read image"),
], ids=["png-bomb", "tiff-bomb", "zero-width", "tiff-cut-short", "garbled-jpeg"])
def test_hostile_image_headers_are_one_user_error_naming_the_file(tmp_path, name, data, message):
    data_set = load_images(_image_folder(tmp_path, name, data))
    bad = data_set.ids.index(name)
    with pytest.raises(UserError, match=message) as err:
        data_set.images[bad]
    assert name in str(err.value) and "\n" not in str(err.value)
    assert data_set.images[1 - bad].size == (8, 8)


def test_a_thin_strip_is_refused_before_decoding(tmp_path):
    """1 x 20,000: resizing its short side to a model input needed over 6 GB."""
    folder = tmp_path / "strip"
    folder.mkdir()
    Image.new("L", (1, 20_000)).save(folder / "strip.png")
    with pytest.raises(UserError, match="strip.png.*too elongated"):
        load_images(folder).images[0]


def test_truncated_image_is_a_user_error(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(UserError, match="cannot read image .*cut.png"):
        load_images(tmp_path).images[0]


def test_pixel_limit_is_overridable_and_validated(tmp_path, monkeypatch):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    assert load_images(tmp_path).images[0].size == (20, 20)
    monkeypatch.setenv(MAX_PIXELS_ENV, "399")
    with pytest.raises(UserError, match="399-pixel limit"):
        load_images(tmp_path).images[0]
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(UserError, match=MAX_PIXELS_ENV):
        load_images(tmp_path).images[0]


def test_cli_embed_on_a_bomb_exits_2_with_one_line(tmp_path):
    folder = _image_folder(tmp_path, "bomb.png", _png_header(100_000, 100_000))
    out = tmp_path / "v.npy"
    line = _one_error_line(run("embed", "images", folder, "--encoder", "timm:test_vit",
                               "--weights", _timm_weights(tmp_path, "test_vit"), "--out", out))
    assert "bomb.png" in line and not out.exists()


# ---- NPZ and IDX: shapes and dtypes from the headers, N >= 1 -----------------------------------------
def _npz_with_header_only(path, name, shape, dtype="|u1"):
    """A zip holding an .npy header that claims `shape`, followed by a few bytes (not the data it claims)."""
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}.npy", buffer.getvalue() + b"\0" * 8)


@pytest.mark.parametrize("arrays, message", [
    ({"images": np.zeros((0, 8, 8), np.uint8)}, "holds no images"),
    ({"images": np.zeros((1, 1, 20_000), np.uint8)}, "too elongated"),
    ({"images": np.zeros((2, 4, 4, 2), np.uint8)}, r"\(N, H, W\)"),
    ({"images": np.zeros((2, 4, 4), np.complex64)}, "uint8, or floats"),
    ({"images": np.full((2, 4, 4), np.nan, np.float32)}, "uint8, or floats"),
    ({"images": np.full((2, 4, 4), 1.5, np.float32)}, "uint8, or floats"),
    ({"images": np.zeros((2, 4, 4), np.uint8), "ids": np.array(["a"])}, "'ids' must be 2"),
    ({"images": np.zeros((2, 4, 4), np.uint8), "z": np.array([1j, 2j])}, "label array 'z'"),
], ids=["empty", "strip", "two-channels", "complex", "nan", "above-one", "ids-length", "complex-labels"])
def test_bad_npz_arrays_are_user_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(UserError, match=message):
        load_images(tmp_path / "d.npz")


def test_npz_headers_are_checked_before_the_data_is_read(tmp_path):
    _npz_with_header_only(tmp_path / "bomb.npz", "images", (1, 100_000, 100_000))
    with pytest.raises(UserError, match="pixel limit"):
        load_images(tmp_path / "bomb.npz")
    with zipfile.ZipFile(tmp_path / "text.npz", "w") as archive:
        archive.writestr("images.npy", b"not an array")
    with pytest.raises(UserError, match="not a NumPy array"):
        load_images(tmp_path / "text.npz")
    np.save(tmp_path / "plain.npy", np.zeros((2, 4, 4), np.uint8))
    (tmp_path / "plain.npy").rename(tmp_path / "plain.npz")
    with pytest.raises(UserError, match="not an NPZ archive"):
        load_images(tmp_path / "plain.npz")


def _idx(path, shape, payload=b"", type_code=0x08):
    data = struct.pack(">BBBB", 0, 0, type_code, len(shape)) + struct.pack(f">{len(shape)}I", *shape) + payload
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as fh:
        fh.write(data)
    return path


@pytest.mark.parametrize("shape, payload, message", [
    ((0, 28, 28), b"", "holds no images"),
    ((1, 100_000, 100_000), b"\0" * 10, "pixel limit"),
    ((2, 4, 4), b"\0" * 31, "header says"),
    ((2, 4, 4), b"\0" * 10_000, "header says .* more bytes"),  # a gzip bomb behind a small header
    ((4, 4), b"\0" * 16, r"\(N, H, W\)"),
], ids=["empty", "bomb", "short", "gzip-bomb", "rank-2"])
def test_bad_idx_files_are_user_errors(tmp_path, shape, payload, message):
    path = _idx(tmp_path / "t-images-idx3-ubyte.gz", shape, payload)
    with pytest.raises(UserError, match=message):
        load_images(path)


def test_idx_header_cut_short_and_labels_mismatch(tmp_path):
    (tmp_path / "cut-idx3-ubyte").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 3, 2))
    with pytest.raises(UserError, match="cut short"):
        read_idx(tmp_path / "cut-idx3-ubyte")
    _idx(tmp_path / "a-images-idx3-ubyte", (2, 2, 2), b"\1" * 8)
    _idx(tmp_path / "a-labels-idx1-ubyte", (3,), b"\1" * 3)
    with pytest.raises(UserError, match=r"\(3,\) labels for 2 images"):
        load_images(tmp_path / "a-images-idx3-ubyte")


# ---- timm weights load strictly ----------------------------------------------------------------------
def _timm_weights(tmp_path, name, edit=lambda state: state):
    import timm

    torch.manual_seed(0)
    state = edit(dict(timm.create_model(name).state_dict()))  # with its classifier head, as checkpoints come
    save_file(state, tmp_path / f"{name}.safetensors")
    return tmp_path / f"{name}.safetensors"


def _rename(old, new):
    return lambda state: {new if k == old else k: v for k, v in state.items()}


@pytest.mark.parametrize("target, source, edit, message", [
    ("test_vit", "test_resnet", lambda s: s, r"Missing key.*cls_token.*\(\+\d+ more\); Unexpected key"),
    ("test_convnext", "test_vit", lambda s: s, "no tensor 'blocks.0.attn.proj.weight'"),  # its filter's KeyError
    ("test_vit", "test_vit", _rename("blocks.0.norm1.weight", "blocks.0.norm_one.weight"), "blocks.0.norm1.weight.*norm_one"),
    ("test_vit", "test_vit", lambda s: {k: v for k, v in s.items() if k != "norm.bias"}, "Missing key.*norm.bias"),
    ("test_vit", "test_vit", lambda s: {**s, "cls_token": torch.zeros(1, 1, 7)}, "size mismatch for cls_token"),
], ids=["other-layout", "other-layout-filtered", "renamed", "missing", "misshapen"])
def test_timm_weights_that_do_not_fit_are_a_user_error_naming_tensors(tmp_path, target, source, edit, message):
    from vision.encoders import create_encoder

    weights = _timm_weights(tmp_path, source, edit)
    with pytest.raises(UserError, match=f"do not fit timm model '{target}': .*{message}") as err:
        create_encoder(f"timm:{target}", weights=weights)
    assert "\n" not in str(err.value)


def test_timm_weights_with_their_head_load_and_nan_weights_are_refused(tmp_path):
    from vision.encoders import create_encoder

    weights = _timm_weights(tmp_path, "test_vit")
    encoder = create_encoder("timm:test_vit", weights=weights)
    torch.testing.assert_close(encoder.backbone.model.cls_token, load_file(weights)["cls_token"])
    nan = _timm_weights(tmp_path / "..", "test_vit", lambda s: {**s, "norm.weight": torch.full_like(s["norm.weight"], float("nan"))})
    with pytest.raises(UserError, match="NaN or infinite.*norm.weight"):
        create_encoder("timm:test_vit", weights=nan)
    (tmp_path / "garbled.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{not json}")
    with pytest.raises(UserError, match="cannot read weights"):
        create_encoder("timm:test_vit", weights=tmp_path / "garbled.safetensors")


# ---- random weights are announced --------------------------------------------------------------------
RANDOM = "warning: timm:test_vit has random weights (no --weights given); its embeddings are not meaningful"


def test_embed_images_announces_random_weights_only_without_weights(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    Image.new("RGB", (8, 8), "red").save(folder / "a.png")
    random = run("embed", "images", folder, "--encoder", "timm:test_vit", "--out", tmp_path / "a.npy", "--json")
    assert random.exit_code == 0, random.output
    assert random.stderr.strip().splitlines() == [RANDOM] and json.loads(random.stdout)["images"] == 1
    trained = run("embed", "images", folder, "--encoder", "timm:test_vit", "--weights", _timm_weights(tmp_path, "test_vit"),
                  "--out", tmp_path / "b.npy", "--json")
    assert trained.exit_code == 0 and trained.stderr == ""


def test_random_weights_are_announced_once_when_embedding(tmp_path, capsys):
    from vision.encoders import ImageEncoder, create_encoder

    encoder = create_encoder("timm:test_vit")
    assert encoder.random_weights and capsys.readouterr().err == ""  # a failing command says nothing more
    images = [Image.new("RGB", (16, 16))] * 2
    encoder.embed(images)
    encoder.embed(images)
    assert capsys.readouterr().err.splitlines() == [RANDOM]
    encoder.save_pretrained(tmp_path / "enc")
    assert not ImageEncoder.from_pretrained(tmp_path / "enc").random_weights
    assert not create_encoder("timm:test_vit", weights=_timm_weights(tmp_path, "test_vit")).random_weights


def test_eval_images_announces_random_weights(tmp_path):
    from vision.synthetic import make_conditional, write_conditional

    write_conditional(make_conditional(n=20, size=16, seed=0), tmp_path / "bench")
    result = run("eval", "images", "--data", tmp_path / "bench", "--encoder", "timm:test_vit", "--condition", "colour",
                 "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [RANDOM] and "colour" in json.loads(result.stdout)


# ---- saved encoders: validated config, strict weights ------------------------------------------------
@pytest.fixture
def saved_encoder(tmp_path):
    from vision.encoders import create_encoder

    create_encoder("timm:test_vit", pooling="gem").save_pretrained(tmp_path / "enc")
    return tmp_path / "enc"


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **changes}))



def _drop_tensor(model_dir, name):
    """Rewrite model.safetensors without tensor `name`."""
    save_file({k: v for k, v in load_file(model_dir / "model.safetensors").items() if k != name},
              model_dir / "model.safetensors")


def _add_tensor(model_dir, name):
    """Rewrite model.safetensors with a stray tensor `name`."""
    save_file({**load_file(model_dir / "model.safetensors"), name: torch.zeros(2)}, model_dir / "model.safetensors")


@pytest.mark.parametrize("change, message", [
    (lambda p: (p / "config.json").write_text("{garbled"), "not valid JSON"),
    (lambda p: (p / "config.json").write_text("[1, 2]"), "not a saved ragcli image encoder"),
    (lambda p: _edit_config(p, spec=7), "spec must be"),
    (lambda p: _edit_config(p, spec="timm:no_such_net"), "no model"),
    (lambda p: _edit_config(p, pooling="max"), "pooling must be one of"),
    (lambda p: _edit_config(p, image_size="32"), "image_size must be an integer"),
    (lambda p: _edit_config(p, image_size=10**9), "image_size must be an integer"),
    (lambda p: _edit_config(p, model_kwargs=[1]), "model_kwargs must be an object"),
    (lambda p: _edit_config(p, model_kwargs={"evit_keep_rate": "lots"}), "cannot create timm model"),
    (lambda p: _edit_config(p, dim=5), "says dim 5"),
    (lambda p: _edit_config(p, dim=True), "dim must be an integer"),
    (lambda p: (p / "model.safetensors").write_bytes(b"garbage"), "cannot read model.safetensors"),
    (lambda p: (p / "model.safetensors").unlink(), "does not exist"),
    (lambda p: _drop_tensor(p, "pool.p"), "does not fit the model: Missing key.*pool.p"),
    (lambda p: _add_tensor(p, "extra"), "does not fit the model: Unexpected key.*extra"),
    (lambda p: save_file({k: v.fill_(float("nan")) for k, v in load_file(p / "model.safetensors").items()},
                         p / "model.safetensors"), "NaN or infinite"),
], ids=["garbled-json", "not-an-object", "spec-type", "spec-unknown", "pooling", "image-size-type", "image-size-range",
        "kwargs-type", "kwargs-value", "dim-mismatch", "dim-bool", "garbled-weights", "no-weights", "missing-tensor",
        "unexpected-tensor", "nan-weights"])
def test_broken_saved_encoders_are_one_user_error(saved_encoder, change, message):
    from vision.encoders import create_encoder

    change(saved_encoder)
    with pytest.raises(UserError, match=message) as err:
        create_encoder(str(saved_encoder))
    assert "\n" not in str(err.value)


# ---- NaN is never rewarded ---------------------------------------------------------------------------
TINY = dict(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, condition_tokens=2)


@pytest.fixture(scope="module")
def bench():
    from vision.synthetic import make_conditional

    return make_conditional(n=40, size=32, seed=0)


def _nan_lens(conditional=False):
    from vision.focallens import FocalLens

    torch.manual_seed(0)
    model = FocalLens(**TINY, conditional=conditional)
    with torch.no_grad():
        model.proj.weight.fill_(float("nan"))
    return model


def test_nan_embeddings_are_an_error_not_a_perfect_score(bench):
    """Every comparison with NaN is false: a NaN model used to rank every relevant image first (Success@1 = 1.0)."""
    from vision.evaluate import evaluate_focallens, retrieval_metrics

    labels = np.array(["a", "a", "b", "b"])
    with pytest.raises(UserError, match="NaN or infinite"):
        retrieval_metrics(np.full((4, 3), np.nan, np.float32), labels)
    with pytest.raises(UserError, match="NaN or infinite"):
        retrieval_metrics(np.array([[1, 0], [np.inf, 0], [0, 1], [0, 1]], np.float32), labels)
    with pytest.raises(UserError, match="NaN or infinite"):
        evaluate_focallens(_nan_lens(), bench["test"], {"colour": "focus on the colour"}, device="cpu")


def test_training_stops_on_a_non_finite_loss_and_writes_nothing(bench, tmp_path):
    from vision.train_focallens import TrainSettings, train_focallens

    with pytest.raises(UserError, match=r"training losses \(epoch 1; try a lower --lr\) hold NaN"):
        train_focallens(_nan_lens(), bench["train"], TrainSettings(epochs=2, batch_size=16, device="cpu"))


def test_a_nan_checkpoint_is_refused(tmp_path):
    from vision.focallens import load_focallens
    from vision.train_focallens import save_model

    save_model(_nan_lens(), tmp_path / "lens")
    with pytest.raises(UserError, match="NaN or infinite.*proj.weight"):
        load_focallens(tmp_path / "lens")


# ---- FocalLens checkpoints: validated config, strict weights -----------------------------------------
@pytest.fixture
def lens_dir(tmp_path):
    from vision.focallens import FocalLens
    from vision.train_focallens import save_model

    torch.manual_seed(0)
    return save_model(FocalLens(**TINY, conditional=False), tmp_path / "lens")


@pytest.mark.parametrize("change, message", [
    (lambda p: (p / "config.json").write_text("{garbled"), "not valid JSON"),
    (lambda p: (p / "config.json").write_text('"lens"'), "JSON object"),
    (lambda p: (p / "config.json").unlink(), "does not exist"),
    (lambda p: _edit_config(p, depth=0), "depth must be an integer in"),
    (lambda p: _edit_config(p, depth=-1), "depth must be an integer in"),
    (lambda p: _edit_config(p, image_size="32"), "image_size must be an integer"),
    (lambda p: _edit_config(p, image_size=10**6), "image_size must be an integer"),
    (lambda p: _edit_config(p, patch_size=5), "patch_size 5 must divide image_size 32"),
    (lambda p: _edit_config(p, embed_dim=10**9), "embed_dim must be an integer"),
    (lambda p: _edit_config(p, num_heads=3), "num_heads 3 must divide embed_dim 32"),
    (lambda p: _edit_config(p, conv_stem="yes"), "conv_stem must be true or false"),
    (lambda p: _edit_config(p, temperature=0), "temperature must be a number"),
    (lambda p: _edit_config(p, mlp_ratio=float("nan")), "mlp_ratio must be a number"),
    (lambda p: _edit_config(p, std=[0.5, 0.5]), "std must be 3 numbers"),
    (lambda p: _edit_config(p, text_encoder=""), "text_encoder must be"),
    (lambda p: _edit_config(p, embed_dim=64, num_heads=4), "does not fit its config: .*size mismatch"),
    (lambda p: (p / "model.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0garbage!"), "not a valid FocalLens checkpoint"),
    (lambda p: (p / "model.safetensors").unlink(), "does not exist"),
    (lambda p: _drop_tensor(p, "proj.bias"), "does not fit its config: Missing key.*proj.bias"),
    (lambda p: _add_tensor(p, "stray"), "does not fit its config: Unexpected key.*stray"),
], ids=["garbled-json", "not-object", "no-config", "depth-0", "depth-negative", "size-type", "size-range", "patch",
        "huge-width", "heads", "bool-type", "temperature", "nan-ratio", "std", "text-encoder", "shapes",
        "garbled-weights", "no-weights", "missing-tensor", "unexpected-tensor"])
def test_broken_focallens_checkpoints_are_one_user_error(lens_dir, change, message):
    from vision.focallens import load_focallens

    change(lens_dir)
    with pytest.raises(UserError, match=message) as err:
        load_focallens(lens_dir)
    assert "\n" not in str(err.value) and str(lens_dir) in str(err.value)


def test_rgba_arrays_feed_focallens(bench):
    model = _nan_lens()
    rgba = np.concatenate([bench["test"].images, np.full((*bench["test"].images.shape[:3], 1), 255, np.uint8)], -1)
    assert torch.equal(model.to_pixels(rgba), model.to_pixels(bench["test"].images))


# ---- output directories are never clobbered ----------------------------------------------------------
def _train(data, out, *extra):
    return run("train", "focallens", "--data", data, "--out", out, "--epochs", 1, "--batch-size", 16, "--embed-dim", 32,
               "--depth", 1, "--heads", 2, "--device", "cpu", "--unconditional", "--json", *extra)


@pytest.fixture
def bench_dir(tmp_path, bench):
    from vision.synthetic import write_conditional

    return write_conditional(bench, tmp_path / "bench")


@pytest.mark.parametrize("overwrite", [(), ("--overwrite",)], ids=["plain", "overwrite"])
def test_train_focallens_never_replaces_a_user_folder(tmp_path, bench_dir, overwrite):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    line = _one_error_line(_train(bench_dir, mine, *overwrite))
    assert "not written by ragcli" in line
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "precious"


def test_train_focallens_replaces_its_own_model_only_with_overwrite(tmp_path, bench_dir):
    from vision.focallens import load_focallens

    out = tmp_path / "lens"
    assert _train(bench_dir, out).exit_code == 0
    first = load_focallens(out).proj.weight.clone()
    assert "--overwrite" in _one_error_line(_train(bench_dir, out, "--seed", 1))
    assert torch.equal(load_focallens(out).proj.weight, first)
    replaced = _train(bench_dir, out, "--seed", 1, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert not torch.equal(load_focallens(out).proj.weight, first)


def test_make_conditional_never_replaces_a_user_folder_and_needs_overwrite(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "photo.png").write_bytes(b"mine")
    for extra in ((), ("--overwrite",)):
        assert "not written by ragcli" in _one_error_line(run("data", "make-conditional", "--out", mine, "--n", 20,
                                                              "--size", 16, *extra))
    assert [p.name for p in mine.iterdir()] == ["photo.png"] and (mine / "photo.png").read_bytes() == b"mine"
    out = tmp_path / "bench"
    assert run("data", "make-conditional", "--out", out, "--n", 20, "--size", 16).exit_code == 0
    before = (out / "test.npz").read_bytes()
    assert "--overwrite" in _one_error_line(run("data", "make-conditional", "--out", out, "--n", 20, "--size", 16, "--seed", 3))
    assert (out / "test.npz").read_bytes() == before
    assert run("data", "make-conditional", "--out", out, "--n", 20, "--size", 16, "--seed", 3, "--overwrite").exit_code == 0
    assert (out / "test.npz").read_bytes() != before


# ---- bounded options, bad data directories, offline text encoders ------------------------------------
@pytest.mark.parametrize("args", [
    ("data", "make-conditional", "--out", "x", "--n", 99_999_999_999),
    ("data", "make-conditional", "--out", "x", "--size", 5000),
    ("data", "make-conditional", "--out", "x", "--test-fraction", 1.0),
    ("data", "make-conditional", "--out", "x", "--test-fraction", 0),
    ("data", "make-conditional", "--out", "x", "--seed", -1),
    ("train", "focallens", "--data", "generated", "--out", "x", "--epochs", 99_999_999_999_999_999_999),
    ("train", "focallens", "--data", "generated", "--out", "x", "--image-size", 5000),
    ("train", "focallens", "--data", "generated", "--out", "x", "--batch-size", 10**6),
    ("train", "focallens", "--data", "generated", "--out", "x", "--depth", 1000),
    ("train", "focallens", "--data", "generated", "--out", "x", "--lr", 0),
    ("train", "focallens", "--data", "generated", "--out", "x", "--seed", 2**32),
    ("embed", "images", ".", "--encoder", "van_b0", "--out", "x.npy", "--batch-size", 10**6),
    ("embed", "images", ".", "--encoder", "van_b0", "--out", "x.npy", "--image-size", 5000),
    ("eval", "images", "--data", ".", "--encoder", "van_b0", "--batch-size", 0),
], ids=lambda args: "-".join(map(str, args[:2] + args[-2:])))
def test_numeric_options_are_bounded(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    _one_error_line(run(*args))
    assert list(tmp_path.iterdir()) == []


def test_bad_data_directories_and_splits_are_user_errors(tmp_path, bench_dir):
    from vision.synthetic import load_split

    with pytest.raises(UserError, match="outside"):
        load_split(bench_dir, "../escape")
    with pytest.raises(UserError, match="splits train, test"):
        load_split("generated", "valid")
    (bench_dir / "conditions.json").write_text('{"colour": []}')
    with pytest.raises(UserError, match="non-empty list of instruction strings"):
        load_split(bench_dir, "test")
    (bench_dir / "conditions.json").write_text("{garbled")
    with pytest.raises(UserError, match="not valid JSON"):
        load_split(bench_dir, "test")


@pytest.mark.parametrize("spec", ["hf:{tmp}/no-such-clip", "hf:openai/clip-vit-base-patch32", "hf:{minilm}"],
                         ids=["missing-dir", "hub-id-offline", "not-clip"])
def test_unknown_clip_text_encoders_fail_fast_offline(tmp_path, bench_dir, spec):
    from indexes.text_encoder import text_encoder_path

    spec = spec.format(tmp=tmp_path, minilm=text_encoder_path())
    line = _one_error_line(_train(bench_dir, tmp_path / "lens", "--text-encoder", spec))
    assert spec in line and not (tmp_path / "lens").exists()


def test_outputs_are_written_through_symlinks_and_never_replace_special_files(tmp_path):
    import os

    from vision.sheet import write_contact_sheet

    folder = tmp_path / "pics"
    folder.mkdir()
    Image.new("RGB", (8, 8), "red").save(folder / "a.png")
    weights = _timm_weights(tmp_path, "test_vit")
    os.mkfifo(tmp_path / "fifo.npy")
    line = _one_error_line(run("embed", "images", folder, "--encoder", "timm:test_vit", "--weights", weights,
                               "--out", tmp_path / "fifo.npy"))
    assert "not a regular file" in line and (tmp_path / "fifo.npy").is_fifo()
    (tmp_path / "real.npy").write_bytes(b"old")
    (tmp_path / "link.npy").symlink_to(tmp_path / "real.npy")
    assert run("embed", "images", folder, "--encoder", "timm:test_vit", "--weights", weights,
               "--out", tmp_path / "link.npy").exit_code == 0
    assert (tmp_path / "link.npy").is_symlink() and np.load(tmp_path / "real.npy").shape == (1, 64)
    with pytest.raises(UserError, match="not a regular file"):
        write_contact_sheet(tmp_path / "fifo.npy", Image.new("RGB", (8, 8)), [])


def test_fit_pooling_stops_on_a_non_finite_loss():
    from vision.encoders import create_encoder
    from vision.probing import fit_pooling

    encoder = create_encoder("timm:test_vit", pooling="attentive")
    with torch.no_grad():
        encoder.pool.queries.fill_(float("nan"))
    with pytest.raises(UserError, match=r"pooling-head losses \(epoch 1"):
        fit_pooling(encoder, [Image.new("RGB", (16, 16), c) for c in ("red", "blue")], ["r", "b"], epochs=1, device="cpu")


def test_saved_hf_encoder_without_its_hf_folder_is_a_user_error(tmp_path):
    import shutil

    import transformers as tf

    from vision.encoders import create_encoder

    config = tf.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                          image_size=32, patch_size=8)
    tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    config.save_pretrained(tmp_path / "vit")  # a config without weights: random init
    create_encoder(f"hf:{tmp_path / 'vit'}").save_pretrained(tmp_path / "enc")
    shutil.rmtree(tmp_path / "enc" / "hf")
    with pytest.raises(UserError, match="hf/, which is missing"):
        create_encoder(str(tmp_path / "enc"))


def test_a_text_encoder_of_another_width_is_a_user_error(bench):
    from vision.focallens import FocalLens

    model = FocalLens(**TINY, text_dim=16)  # all-MiniLM-L6-v2 gives 384-d embeddings
    with pytest.raises(UserError, match="gives 384-d embeddings; the model projects to 16"):
        model.embed(bench["test"].images, "focus on the colour", device="cpu")
