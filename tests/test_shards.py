"""Embedding across processes: a corpus embedded in shards (`--shard I/N`) and assembled
(`index build --from-shards`) gives the index one pass gives, on FAISS and on Milvus; incomplete or
foreign shards are refused with one line."""

import json

import numpy as np
import pytest

from helpers import one_line_error, run
from indexes import UserError
from indexes.backends import load_vectors
from indexes.shards import parse_shard, shard_slice
from vision.encoders import create_encoder
from vision.synthetic import make_conditional, write_conditional


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """20 generated images in an archive and a saved (random, fixed) encoder."""
    root = tmp_path_factory.mktemp("shards")
    write_conditional(make_conditional(n=24, size=32, seed=1), root / "data")
    create_encoder("timm:test_vit", image_size=32).save_pretrained(root / "encoder")
    return root / "data" / "train.npz", root / "encoder"


def _all_hits(name):
    """Every indexed vector queried against the index: ids and scores pin the stored vectors down."""
    index = load_vectors(run_path(name))
    queries = np.stack([np.eye(index.dim, dtype=np.float32)[j % index.dim] for j in range(6)])
    return index.search_ids(queries, k=index.ntotal)


def run_path(name):
    return json.loads(run("index", "info", name, "--json").output)["path"]


def test_shard_slices_cover_the_corpus_once():
    assert [shard_slice(10, (i, 3)) for i in range(3)] == [slice(0, 3), slice(3, 6), slice(6, 10)]
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b"):
        with pytest.raises(UserError, match="bad shard"):
            parse_shard(bad)


def test_two_image_shards_give_the_index_one_pass_gives(images, tmp_path):
    archive, encoder = images
    common = ["--corpus", "images", "--images", archive, "--encoder", encoder, "--device", "cpu", "--json"]
    assert run("index", "build", *common, "--name", "whole").exit_code == 0
    for i in (1, 0):  # any order, any machine
        shard = run("index", "build", *common, "--shard", f"{i}/2", "--shard-dir", tmp_path / "s")
        assert shard.exit_code == 0, shard.output
        assert json.loads(shard.output)["rows"] == len(range(*shard_slice(19, (i, 2)).indices(19)))
    assert not (tmp_path / "ragcli-home" / "indexes" / "images").exists()  # a shard builds no index
    assert run("index", "build", *common, "--from-shards", tmp_path / "s", "--name", "sharded").exit_code == 0
    # `embed images --shard` writes the same files
    for i in (0, 1):
        embedded = run("embed", "images", archive, "--encoder", encoder, "--shard", f"{i}/2", "--device", "cpu",
                       "--out", tmp_path / "e" / f"part{i}.npz", "--json")
        assert embedded.exit_code == 0, embedded.output
    assert run("index", "build", *common, "--from-shards", tmp_path / "e", "--name", "embedded").exit_code == 0
    whole = _all_hits("whole")
    for name in ("sharded", "embedded"):
        scores, ids = _all_hits(name)
        assert ids.tolist() == whole[1].tolist()
        np.testing.assert_allclose(scores, whole[0], atol=1e-5)


def test_coliee_shards_assemble_on_milvus(tiny_encoder, tmp_path):
    common = ["--corpus", "coliee", "--encoder", tiny_encoder, "--json"]
    for i in range(3):
        assert run("index", "build", *common, "--shard", f"{i}/3", "--shard-dir", tmp_path / "s").exit_code == 0
    one = run("index", "build", *common, "--name", "one")
    many = run("index", "build", *common, "--from-shards", tmp_path / "s", "--name", "many", "--backend", "milvus",
               "--uri", tmp_path / "shards.db")
    assert one.exit_code == 0 and many.exit_code == 0, many.output
    question = "Can a minor cancel a contract made without a guardian's consent?"
    hits = [json.loads(run("index", "query", name, question, "-k", "5", "--json").output) for name in ("one", "many")]
    assert [h["id"] for h in hits[0]] == [h["id"] for h in hits[1]]


def test_missing_foreign_or_bad_shards_exit_2(images, tiny_encoder, tmp_path):
    archive, encoder = images
    common = ["--corpus", "images", "--images", archive, "--encoder", encoder, "--device", "cpu"]
    assert run("index", "build", *common, "--shard", "0/2", "--shard-dir", tmp_path / "half").exit_code == 0
    one_line_error(run("index", "build", *common, "--from-shards", tmp_path / "half"), "lacks shards 1/2")
    assert run("index", "build", "--corpus", "coliee", "--encoder", tiny_encoder, "--shard", "0/1",
               "--shard-dir", tmp_path / "other").exit_code == 0
    one_line_error(run("index", "build", *common, "--from-shards", tmp_path / "other"), "not this corpus's")
    one_line_error(run("index", "build", *common, "--shard", "2/2", "--shard-dir", tmp_path / "x"), "bad shard")
    one_line_error(run("index", "build", *common, "--shard", "0/2"), "--shard-dir")
    one_line_error(run("index", "build", *common, "--from-shards", tmp_path / "nowhere"), "no shard folder")
    assert not (tmp_path / "ragcli-home" / "indexes").exists()
