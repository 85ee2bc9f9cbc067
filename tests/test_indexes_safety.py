"""The shared layer's promises about a user's files and strings: names are names, `--overwrite` replaces
only what ragcli wrote, replacement is atomic, SQL is never built from strings, manifests are checked."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from indexes import UserError, VectorIndex, index_path
from indexes.files import atomic_dir, atomic_write_text, check_output, inside, output_lock, regular_file
from indexes.filters import compile_filter

RNG = np.random.default_rng(0)
VECTORS = RNG.standard_normal((40, 8)).astype(np.float32)


def small_index(payload=None) -> VectorIndex:
    rows = payload or [{"title": f"t{i}", "year": 1980 + i, "genre": ["a", "b", "c"][i % 3]} for i in range(40)]
    return VectorIndex.build(VECTORS, [f"id{i}" for i in range(40)], rows, device="cpu")


# ---- names and paths ----------------------------------------------------------------------------
def test_a_name_is_a_name_even_when_a_folder_of_that_name_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("pics").mkdir()
    assert index_path("pics") == Path(os.environ["RAGCLI_HOME"]) / "indexes" / "pics"
    assert index_path("./pics") == Path("./pics") and index_path("a/b") == Path("a/b")
    assert index_path("~/x") == Path.home() / "x"
    with pytest.raises(UserError, match="bad index name"):
        index_path("bob's index")


def test_overwrite_never_replaces_what_ragcli_did_not_write(tmp_path):
    user = tmp_path / "photos"
    user.mkdir()
    (user / "cat.png").write_bytes(b"not really a png")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="not written by ragcli"):
            check_output(user, overwrite)
        with pytest.raises(UserError, match="not written by ragcli"):
            small_index().save(user, overwrite=overwrite)
    assert (user / "cat.png").read_bytes() == b"not really a png"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not written by ragcli"):
        small_index().save(tmp_path / "file", overwrite=True)


def test_replacing_an_index_needs_overwrite_and_flips_one_symlink(tmp_path):
    target = tmp_path / "ix"
    small_index().save(target)
    first = target.resolve()
    with pytest.raises(UserError, match="--overwrite"):
        small_index().save(target)
    small_index().save(target, overwrite=True)
    second = target.resolve()
    assert target.is_symlink() and second != first and first.exists()  # kept for readers mid-load
    small_index().save(target, overwrite=True)
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "ix")
    assert leftovers == sorted([second.name, target.resolve().name]) and not first.exists()


def test_similar_names_never_touch_each_others_versions(tmp_path):
    small_index().save(tmp_path / "foo.v-1")
    kept = (tmp_path / "foo.v-1").resolve()
    VectorIndex.build(VECTORS[:5], device="cpu").save(tmp_path / "foo")
    VectorIndex.build(VECTORS[:6], device="cpu").save(tmp_path / "foo", overwrite=True)
    VectorIndex.build(VECTORS[:7], device="cpu").save(tmp_path / "foo", overwrite=True)
    assert kept.exists() and VectorIndex.load(tmp_path / "foo.v-1").ntotal == 40
    (tmp_path / "foo").unlink()
    assert VectorIndex.load(tmp_path / "foo").ntotal in (6, 7)  # recovered from foo's own versions only


def test_the_write_lock_holds_across_threads(tmp_path):
    import threading

    errors = []

    def second_writer():
        try:
            with output_lock(tmp_path / "ix"):
                pass
        except UserError as err:
            errors.append(str(err))

    with output_lock(tmp_path / "ix"):
        thread = threading.Thread(target=second_writer)
        thread.start()
        thread.join()
    assert errors and "another ragcli process is writing" in errors[0]


def test_a_legacy_directory_moved_aside_is_recovered_on_open(tmp_path):
    target = tmp_path / "ix"
    small_index().save(target)
    version = target.resolve()
    target.unlink()  # as if killed between moving an old-style directory aside and linking the new one
    assert VectorIndex.load(target).ntotal == 40 and target.resolve() == version


def test_a_second_writer_is_refused(tmp_path):
    import subprocess
    import sys

    target = tmp_path / "ix"
    with output_lock(target):
        code = ("import sys; from indexes.files import output_lock\n"
                "try:\n    with output_lock(sys.argv[1]): pass\nexcept Exception as e: print(e)")
        out = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True,
                             cwd=Path(__file__).parents[1]).stdout
    assert "another ragcli process is writing" in out


def test_special_files_are_never_replaced(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        atomic_write_text(fifo, "x")
    with pytest.raises(UserError, match="not a regular file"):
        atomic_write_text("/dev/null", "x")
    with pytest.raises(UserError, match="not a regular file"):
        regular_file(fifo)  # reading a FIFO would hang
    real = tmp_path / "real.txt"
    real.write_text("old")
    (tmp_path / "link.txt").symlink_to(real)
    atomic_write_text(tmp_path / "link.txt", "new")
    assert (tmp_path / "link.txt").is_symlink() and real.read_text() == "new"


def test_dirs_follow_the_umask(tmp_path):
    with atomic_dir(tmp_path / "out", "dataset") as tmp:
        (tmp / "a.txt").write_text("x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "out").resolve().stat().st_mode & 0o777 == 0o777 & ~mask


def test_inside_refuses_paths_that_leave_the_root(tmp_path):
    assert inside(tmp_path, "model") == tmp_path.resolve() / "model"
    for bad in ("../x", "/etc/hostname", "", None, "a/../../x"):
        with pytest.raises(UserError):
            inside(tmp_path, bad)


# ---- SQL ----------------------------------------------------------------------------------------
def test_structured_filters(tmp_path):
    idx = small_index()
    hits = idx.search(VECTORS[:2], k=40, where={"and": [("genre", "in", ["a", "b"]), ("year", ">=", 1990)]})
    assert hits[0] and all(h.payload["genre"] in "ab" and h.payload["year"] >= 1990 for q in hits for h in q)
    either = idx.search(VECTORS[:1], k=40, where={"or": [("year", "<", 1982), ("title", "==", "t39")]})
    assert sorted(h.id for h in either[0]) == ["id0", "id1", "id39"]
    assert not idx.search(VECTORS[:1], k=5, where=("title", "==", "x' OR 1=1 --"))[0]
    for bad in [("year", "~", 1), ("year", "in", []), ("nope", "==", 1), {"and": []}, "year > 1", ("year", "<", [1]),
                {"field": "year", "op": ["=="], "value": 1}, {"field": ["year"], "op": "==", "value": 1}]:
        with pytest.raises(UserError):
            idx.search(VECTORS[:1], k=5, where=bad)


def test_compiled_filters_bind_every_value():
    sql, params = compile_filter(("we\"ird", "==", "'; DROP TABLE rows; --"), ["we\"ird"])
    assert sql == '("we""ird" = ?)' and params == ["'; DROP TABLE rows; --"]


def test_hostile_names_and_payload_never_reach_sql(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    witness = tmp_path / "pwned.csv"
    column = f'a" INTEGER); COPY (SELECT 42 AS x) TO \'{witness}\'; --'
    value = f"x'); COPY (SELECT 1) TO '{witness}'; --"
    idx = small_index([{column: value, "t": i} for i in range(40)])
    path = tmp_path / f"bob's-index a' AS s0; COPY (SELECT 42 AS x) TO '{witness}'"
    idx.save(path)
    loaded = VectorIndex.load(path)
    hits = loaded.search(VECTORS[:1], k=3, where=(column, "==", value))[0]
    assert len(hits) == 3 and hits[0].payload[column] == value
    assert not witness.exists()


# ---- manifests, sizes, kinds -------------------------------------------------------------------
@pytest.mark.parametrize("change", [
    {"metric": "foo"}, {"id_type": 1}, {"dim": "8"}, {"rows": -1}, {"kind": "Flat; rm"},
    {"sha256": {"/etc/hostname": "0" * 64}}, {"encoder": []}, {"search_params": {"nprobe": 0}},
])
def test_manifests_are_checked_against_the_schema(tmp_path, change):
    small_index().save(tmp_path / "ix")
    file = tmp_path / "ix" / "manifest.json"
    manifest = json.loads(file.read_text())
    file.write_text(json.dumps({**manifest, **change}))
    with pytest.raises(UserError, match="bad manifest"):
        VectorIndex.load(tmp_path / "ix")


def test_empty_input_bad_kinds_and_huge_k():
    with pytest.raises(UserError, match="0 vectors"):
        VectorIndex.build(np.zeros((0, 4), np.float32))
    for kind in ("HNSW0", "IVF0,Flat", "PQ0", "Flat,,", "IVF99999999999,Flat"):
        with pytest.raises(UserError):
            VectorIndex.build(VECTORS, kind=kind)
    with pytest.raises(UserError, match="cannot train"):
        VectorIndex.build(VECTORS, kind="IVF1000,Flat")
    scores, rows = small_index().search_rows(VECTORS[:1], k=2**31)
    assert scores.shape == (1, 40)


def test_a_manifest_cannot_point_a_family_outside_its_index(tmp_path):
    from indexes import open_index

    (tmp_path / "outside").mkdir()
    for family in ("recsys", "vision"):
        small_index().save(tmp_path / family)
        file = tmp_path / family / "manifest.json"
        manifest = json.loads(file.read_text())
        manifest["encoder"] = {"family": family, "model_dir": "../outside"}
        file.write_text(json.dumps(manifest))
        with pytest.raises(UserError, match="points outside"):
            open_index(tmp_path / family, device="cpu")


def test_exclusions_given_as_text_match_integer_ids():
    idx = VectorIndex.build(VECTORS, device="cpu")  # ids 0..39
    top = idx.search(VECTORS[:1], k=2)[0]
    assert top[0].id not in [h.id for h in idx.search(VECTORS[:1], k=2, exclude=[str(top[0].id), "x"])[0]]
