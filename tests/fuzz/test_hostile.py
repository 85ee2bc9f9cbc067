"""Hostile input through the CLI: names, paths, payload values and column names carrying quotes, SQL and
shell metacharacters. Nothing outside the index directory is read or written, and the strings come
back as data."""

import json

import numpy as np
from PIL import Image

from fuzz.contract import invoke, snapshot

SQL = """a" INTEGER); COPY (SELECT 42 AS x) TO '{witness}'; --"""


def test_hostile_label_names_values_and_index_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    witness = tmp_path / "pwned.csv"
    column = SQL.format(witness=witness)
    values = np.array([f"v{i}' OR 1=1; $(touch {witness}) `id`" for i in range(6)])
    images = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    np.savez(inputs / "set.npz", images=images, **{column: values})
    before = snapshot(inputs)
    name = f"./bob's index a' AS s0; COPY (SELECT 42) TO '{witness}'"
    built = invoke("index", "build", "--corpus", "images", "--images", inputs / "set.npz", "--encoder", "timm:test_vit",
                   "--name", name, "--device", "cpu", "--json")
    assert built.exit_code == 0, built.output
    Image.fromarray(images[2]).save(tmp_path / "query.png")
    hits = invoke("index", "query", name, "--image", tmp_path / "query.png", "-k", 2, "--device", "cpu", "--json")
    assert hits.exit_code == 0, hits.output
    top = json.loads(hits.stdout)[0]
    assert top["id"] == "2" and top["payload"][column] == values[2]
    assert snapshot(inputs) == before and not witness.exists()
    assert json.loads(built.stdout)["payload_columns"][0] == column
