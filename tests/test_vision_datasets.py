"""Image dataset readers: folders (sub-folder or CSV labels), IDX(.gz), NPZ, and their errors."""

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from indexes.errors import UserError
from vision.datasets import load_images, read_idx, select_columns


def _save(path, value, size=(6, 5)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(path)


def _write_idx(path, array, type_code=0x08):
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as fh:
        fh.write(payload)


def test_folder_with_subfolders_gives_labels(tmp_path):
    _save(tmp_path / "cat" / "a.png", 10)
    _save(tmp_path / "dog" / "b.jpg", 20)
    _save(tmp_path / "dog" / "c.PNG", 30)
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_images(tmp_path)
    assert data.ids == ["cat/a.png", "dog/b.jpg", "dog/c.PNG"]
    assert data.labels["label"].to_list() == ["cat", "dog", "dog"]
    assert data.paths == [tmp_path / i for i in data.ids]
    assert data.images[0].size == (5, 6) and data.images[0].getpixel((0, 0)) == (10, 10, 10)
    assert [im.getpixel((0, 0))[0] for im in data.images[1:]] == [20, 30]


def test_flat_folder_has_no_label_column(tmp_path):
    _save(tmp_path / "x.png", 1)
    data = load_images(tmp_path)
    assert data.labels.columns == ["id"] and len(data) == 1


def test_labels_csv_gives_factor_columns(tmp_path):
    _save(tmp_path / "a.png", 1)
    _save(tmp_path / "sub" / "b.png", 2)
    (tmp_path / "labels.csv").write_text("path,shape,colour\nsub/b.png,circle,red\na.png,square,blue\n")
    data = load_images(tmp_path)
    assert data.labels.to_dicts() == [{"id": "a.png", "shape": "square", "colour": "blue"},
                                      {"id": "sub/b.png", "shape": "circle", "colour": "red"}]
    other = tmp_path / "other.csv"
    other.write_text("id,size\na.png,3\n")
    assert load_images(tmp_path, labels=other).labels["size"].to_list() == [3, None]


def test_labels_csv_naming_unknown_images_is_an_error(tmp_path):
    _save(tmp_path / "a.png", 1)
    (tmp_path / "labels.csv").write_text("id,shape\nzzz.png,circle\n")
    with pytest.raises(UserError, match="name no image"):
        load_images(tmp_path)


@pytest.mark.parametrize("name", ["t10k-images-idx3-ubyte.gz", "train-images-idx3-ubyte", "emnist-images.idx3-ubyte"])
def test_idx_images_with_labels_beside_them(tmp_path, name):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    _write_idx(tmp_path / name, images)
    labels = name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    _write_idx(tmp_path / labels, np.array([7, 1, 4], dtype=np.uint8))
    data = load_images(tmp_path / name)
    assert data.ids == ["0", "1", "2"] and data.labels["label"].to_list() == [7, 1, 4]
    np.testing.assert_array_equal(np.asarray(data.images[2]), images[2])
    assert data.images[0].mode == "L"


def test_read_idx_big_endian_types_and_bad_files(tmp_path):
    values = np.array([[1.5, -2.0], [3.25, 0.0]], dtype=np.float32)
    _write_idx(tmp_path / "f-idx2-ubyte", values, type_code=0x0D)
    np.testing.assert_array_equal(read_idx(tmp_path / "f-idx2-ubyte"), values)
    (tmp_path / "bad-idx3-ubyte").write_bytes(b"\x08\x03\0\0")
    with pytest.raises(UserError, match="magic"):
        load_images(tmp_path / "bad-idx3-ubyte")
    (tmp_path / "short-idx1-ubyte").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + b"\1\2")
    with pytest.raises(UserError, match="header says"):
        read_idx(tmp_path / "short-idx1-ubyte")


def test_npz_arrays_with_factors_and_ids(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((4, 8, 8, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", images=images, ids=np.array(["a", "b", "c", "d"]),
             shape=np.array([0, 1, 0, 1]), colour=np.array(["r", "g", "b", "r"]))
    data = load_images(tmp_path / "d.npz")
    assert data.ids == ["a", "b", "c", "d"] and data.paths is None
    assert data.labels.columns == ["id", "shape", "colour"] and data.labels["colour"].to_list() == ["r", "g", "b", "r"]
    np.testing.assert_array_equal(np.asarray(data.images[1]), (images[1] * 255).round().astype(np.uint8))
    assert len(data.images[1:3]) == 2


def test_npz_single_unnamed_array_and_bad_arrays(tmp_path):
    np.savez(tmp_path / "x.npz", x_train=np.zeros((2, 5, 5, 1), dtype=np.uint8), y_train=np.array([3, 4]),
             id=np.array([10, 11]))
    data = load_images(tmp_path / "x.npz")
    assert data.labels.to_dicts() == [{"id": "10", "y_train": 3}, {"id": "11", "y_train": 4}]
    assert data.images[0].size == (5, 5)
    np.savez(tmp_path / "bad.npz", images=np.full((2, 3, 3), 300, dtype=np.int32))
    with pytest.raises(UserError, match="uint8"):
        load_images(tmp_path / "bad.npz")
    np.savez(tmp_path / "none.npz", a=np.zeros(3))
    with pytest.raises(UserError, match="'images' array"):
        load_images(tmp_path / "none.npz")


def test_missing_empty_unknown_and_unreadable_inputs(tmp_path):
    with pytest.raises(UserError, match="no such"):
        load_images(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no images"):
        load_images(tmp_path)
    (tmp_path / "data.csv").write_text("a\n")
    with pytest.raises(UserError, match="expected an image folder"):
        load_images(tmp_path / "data.csv")
    (tmp_path / "broken.png").write_bytes(b"garbage")
    data = load_images(tmp_path)
    with pytest.raises(UserError, match="cannot read image .*broken.png"):
        data.images[0]


def test_select_columns_keeps_order_drops_repeats_and_names_the_unknown():
    available = ["digit", "colour", "size"]
    assert select_columns(available, None, "d") == available
    assert select_columns(available, ["size", " digit", "size"], "d") == ["size", "digit"]
    with pytest.raises(UserError, match="d has no attribute 'shape'; it has digit, colour, size"):
        select_columns(available, ["shape"], "d")
    with pytest.raises(UserError, match="no attributes chosen"):
        select_columns(available, ["", " "], "d")
