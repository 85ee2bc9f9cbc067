"""Interaction readers (every format), filtering, id remapping, the leave-one-out split and padding."""

import numpy as np
import polars as pl
import pytest

from indexes import UserError
from recsys.data import (LeaveOneOut, Sequences, build_sequences, dataset_stats, k_core, load_sequences, ragged,
                         read_interactions, windows)

# user -> items in time order; timestamps in the files are deliberately out of line order
EVENTS = [("u1", "10", 3), ("u2", "7", 1), ("u1", "2", 1), ("u1", "7", 2), ("u2", "10", 2), ("u2", "2", 3),
          ("u1", "5", 4)]
EXPECTED = {"u1": ["2", "7", "10", "5"], "u2": ["7", "10", "2"]}


def user_sequences(seqs):
    return {u: [seqs.item_ids[i - 1] for i in seqs.items[seqs.offsets[n]:seqs.offsets[n + 1]]]
            for n, u in enumerate(seqs.user_ids)}


def test_sasrec_text_keeps_line_order(tmp_path):
    path = tmp_path / "games.txt"
    path.write_text("1 5\n1 3\n2 3\n1 9\n2 5\n")
    seqs = load_sequences(path)
    assert user_sequences(seqs) == {"1": ["5", "3", "9"], "2": ["3", "5"]}
    assert seqs.item_ids == ["3", "5", "9"]  # numeric order, so raw "3" is model id 1


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
def test_tables_with_named_columns(tmp_path, fmt):
    frame = pl.DataFrame(EVENTS, schema=["user_id", "item_id", "timestamp"], orient="row")
    path = tmp_path / f"log.{fmt}"
    if fmt == "parquet":
        frame.write_parquet(path)
    else:
        frame.write_csv(path, separator="\t" if fmt == "tsv" else ",")
    assert user_sequences(load_sequences(path)) == EXPECTED


def test_table_without_timestamp_uses_row_order(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("userId,movieId\na,x\na,y\nb,y\na,z\n")
    assert user_sequences(load_sequences(path)) == {"a": ["x", "y", "z"], "b": ["y"]}


def test_movielens_1m_dat_with_titles(tmp_path):
    lines = [f"{u[1:]}::{i}::4::{t}" for u, i, t in EVENTS]
    (tmp_path / "ratings.dat").write_text("\n".join(lines) + "\n")
    (tmp_path / "movies.dat").write_bytes("10::Am\xe9lie: Part 2 (2001)::Comedy|Romance\n2::Heat (1995)::Action\n".encode("latin-1"))
    raw = read_interactions(tmp_path / "ratings.dat")
    assert user_sequences(build_sequences(raw)) == {u[1:]: v for u, v in EXPECTED.items()}
    titles = dict(zip(raw.items["item"], raw.items["title"]))
    assert titles["10"] == "Am\xe9lie: Part 2 (2001)"  # the '::' split keeps ':' inside titles
    assert raw.items.filter(pl.col("item") == "10")["genres"].item() == "Comedy, Romance"


def test_movielens_100k_folder(tmp_path):
    (tmp_path / "u.data").write_text("".join(f"{u[1:]}\t{i}\t3\t{t}\n" for u, i, t in EVENTS))
    flags = ["0"] * 19
    flags[1] = flags[8] = "1"  # Action, Drama
    (tmp_path / "u.item").write_text("10|Heat (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n")
    raw = read_interactions(tmp_path)
    assert user_sequences(build_sequences(raw)) == {u[1:]: v for u, v in EXPECTED.items()}
    assert raw.items.row(0, named=True) == {"item": "10", "title": "Heat (1995)", "genres": "Action, Drama"}


def test_movielens_20m_csv_folder(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n"
                                         + "".join(f"{u[1:]},{i},4.0,{t}\n" for u, i, t in EVENTS))
    (tmp_path / "movies.csv").write_text('movieId,title,genres\n7,"Heat, The (1995)",Action|Crime\n')
    raw = read_interactions(tmp_path, "movielens")
    assert user_sequences(build_sequences(raw)) == {u[1:]: v for u, v in EXPECTED.items()}
    assert raw.items.row(0, named=True) == {"item": "7", "title": "Heat, The (1995)", "genres": "Action, Crime"}


def test_recbole_atomic_files(tmp_path):
    (tmp_path / "toy.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                        + "".join(f"{u}\t{i}\t4\t{t}.0\n" for u, i, t in EVENTS))
    (tmp_path / "toy.item").write_text("item_id:token\tmovie_title:token_seq\tclass:token_seq\n10\tHeat\tAction Crime\n")
    raw = read_interactions(tmp_path)  # a folder with a .inter file is RecBole
    assert user_sequences(build_sequences(raw)) == EXPECTED
    assert raw.items.row(0, named=True) == {"item": "10", "title": "Heat", "genres": "Action Crime"}


def test_reader_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_interactions(tmp_path / "missing.txt")
    bad = tmp_path / "log.csv"
    bad.write_text("who,what\na,b\n")
    with pytest.raises(UserError, match="no user column"):
        read_interactions(bad)
    (tmp_path / "log.json").write_text("{}")
    with pytest.raises(UserError, match="cannot tell the format"):
        read_interactions(tmp_path / "log.json")
    with pytest.raises(UserError, match="unknown format"):
        read_interactions(bad, "xml")


def test_k_core_repeats_until_stable():
    # item c has 1 interaction; dropping it leaves user 3 with 1, which then drops item b to 1 ... cascade
    frame = pl.DataFrame({"user": ["1", "1", "2", "2", "3", "3"], "item": ["a", "b", "a", "b", "b", "c"]})
    kept = k_core(frame, 2)
    assert sorted(zip(kept["user"], kept["item"])) == [("1", "a"), ("1", "b"), ("2", "a"), ("2", "b")]


def test_item_ids_of_a_model_drop_unknown_items(tmp_path):
    path = tmp_path / "games.txt"
    path.write_text("1 5\n1 3\n1 4\n1 9\n")
    seqs = load_sequences(path, item_ids=["9", "5", "3"])
    assert seqs.items.tolist() == [2, 3, 1]


def test_windows_left_pad_and_truncate():
    items = np.array([1, 2, 3, 4, 5, 6])
    got = windows(items, np.array([0, 3]), np.array([3, 6]), 2)
    assert got.tolist() == [[2, 3], [5, 6]]
    assert windows(items, np.array([0]), np.array([2]), 4).tolist() == [[0, 0, 1, 2]]


def test_ragged_flattens_slices():
    rows, values = ragged(np.array([9, 8, 7, 6, 5]), np.array([1, 3]), np.array([3, 5]))
    assert rows.tolist() == [0, 0, 1, 1] and values.tolist() == [8, 7, 6, 5]


def test_leave_one_out_split():
    seqs = Sequences(np.array([1, 2, 3, 4, 5, 3, 1, 2, 4]), np.array([0, 5, 7, 9]), ["a", "b", "c", "d", "e"],
                     ["u", "v", "w"])
    split = LeaveOneOut(seqs, maxlen=3)
    inputs, targets = split.train_tensors()
    # u trains on 1 2 3 (inputs 1 2 -> targets 2 3); v and w have 2 items, too few to evaluate: they only train
    assert inputs.tolist() == [[0, 1, 2], [0, 0, 3], [0, 0, 2]]
    assert targets.tolist() == [[0, 2, 3], [0, 0, 1], [0, 0, 4]]
    valid, test = split.case("valid"), split.case("test")
    assert valid.inputs.tolist() == [[1, 2, 3]] and valid.targets.tolist() == [4]
    assert test.inputs.tolist() == [[2, 3, 4]] and test.targets.tolist() == [5]
    assert [h.tolist() for h in test.histories()] == [[1, 2, 3, 4]]
    assert test.seen_ends.tolist() == [5]


def test_stats(tmp_path):
    path = tmp_path / "games.txt"
    path.write_text("1 5\n1 3\n2 3\n1 9\n2 5\n3 5\n")
    stats = dataset_stats(path)
    assert (stats["users"], stats["items"], stats["interactions"]) == (3, 3, 6)
    assert stats["length"]["max"] == 3 and stats["length"]["min"] == 1 and stats["length"]["p50"] == 2
