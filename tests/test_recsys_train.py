"""Training learns a known Markov chain, checkpoints resume, and ranking through the FAISS item index
gives the same numbers as the direct scorer."""

import json
import shutil

import numpy as np
import pytest
import torch

from indexes import BuildRequest, UserError, VectorIndex
from indexes.metrics import hit_matrix, summarize
from recsys import Recommender
from recsys.data import LeaveOneOut, RawData, build_sequences
from recsys.evaluate import evaluate
from recsys.serve import RecommendationEngine, build_index
from recsys.synthetic import item_table, markov_interactions, write_recbole
import recsys.train as training
from recsys.model import SASRec
from recsys.train import TrainConfig, parameter_groups, train_sasrec

N_ITEMS = 40
CONFIG = dict(loss="ce", epochs=12, batch_size=32, maxlen=10, hidden=32, blocks=1, heads=2, dropout=0.1, lr=5e-3,
              patience=3, device="cpu", seed=0)



@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chain")
    interactions = markov_interactions(n_users=240, n_items=N_ITEMS, seed=0)
    write_recbole(folder, "chain", interactions, item_table(N_ITEMS))
    return folder, build_sequences(RawData(interactions))


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "chain-model"
    summary = train_sasrec(dataset[1], out, TrainConfig(**CONFIG))
    return out, summary


def test_training_learns_the_chain(dataset, trained):
    out, summary = trained
    assert {"config.json", "model.safetensors", "item_ids.json", "training.json", "optimizer.pt"} <= {
        p.name for p in out.iterdir()}
    model = Recommender.from_pretrained(out, device="cpu").model
    metrics = evaluate(model, LeaveOneOut(dataset[1], 10).case("test"), ks=(1, 10))
    # the successor follows 90% of the time; chance would be Success@1 = 1/40
    assert metrics["Success@1"] > 0.6, metrics
    assert summary["best_valid_nDCG@10"] > 0.6 and 1 <= summary["best_epoch"] <= summary["epochs_run"]


def test_recommend_follows_the_chain(trained):
    rec = Recommender.from_pretrained(trained[0], device="cpu")
    assert rec.recommend(["5", "6", "7"], k=1)[0].id == "8"


@pytest.mark.slow
def test_resume_continues_from_the_checkpoint(dataset, tmp_path):
    config = dict(CONFIG, epochs=2, patience=10)
    train_sasrec(dataset[1], tmp_path / "m", TrainConfig(**config))
    saved = json.loads((tmp_path / "m" / "training.json").read_text())["state"]
    summary = train_sasrec(dataset[1], tmp_path / "m", TrainConfig(**dict(config, epochs=4)), resume=tmp_path / "m")
    assert summary["epochs_run"] == 4
    assert [h["epoch"] for h in summary["history"]] == list(range(1, 5))
    assert summary["history"][: saved["epoch"]] == saved["history"]


def test_resume_reads_a_checkpoint_with_the_old_metric_names(dataset, trained, tmp_path):
    """training.json of an earlier release (`valid_ndcg10`, `best_valid_ndcg10`) resumes; the run goes on
    under today's names."""
    shutil.copytree(trained[0], tmp_path / "m")
    record = json.loads((tmp_path / "m" / "training.json").read_text())
    state = record["state"]
    best = state.pop("best_valid_nDCG@10")
    state["best_valid_ndcg10"] = best
    state["history"] = [{("valid_ndcg10" if k == "valid_nDCG@10" else k): v for k, v in row.items()}
                        for row in state["history"]]
    (tmp_path / "m" / "training.json").write_text(json.dumps(record))
    epochs = state["epoch"] + 1
    summary = train_sasrec(dataset[1], tmp_path / "m", TrainConfig(**dict(CONFIG, epochs=epochs)), resume=tmp_path / "m")
    assert summary["epochs_run"] == epochs and summary["best_valid_nDCG@10"] >= best
    assert all("valid_nDCG@10" in row and "valid_ndcg10" not in row for row in summary["history"])


def test_early_stopping_stops_after_patience_evaluations(dataset, tmp_path, monkeypatch):
    """Validation nDCG peaks at epoch 2, then falls: with patience 3 the run ends at epoch 5 of 40."""
    scores = iter([0.3, 0.5, 0.4, 0.3, 0.2] + [0.1] * 40)
    monkeypatch.setattr(training, "evaluate", lambda *args, **kwargs: {"nDCG@10": next(scores)})
    summary = train_sasrec(dataset[1], tmp_path / "m", TrainConfig(**dict(CONFIG, epochs=40, patience=3)))
    assert (summary["epochs_run"], summary["best_epoch"], summary["best_valid_nDCG@10"]) == (5, 2, 0.5)


def test_bf16_training_on_cpu_learns_and_records_its_settings(dataset, tmp_path):
    config = dict(CONFIG, epochs=3, precision="bf16", weight_decay=0.05)
    summary = train_sasrec(dataset[1], tmp_path / "m", TrainConfig(**config))
    losses = [h["loss"] for h in summary["history"]]
    assert losses[-1] < losses[0] and summary["best_valid_nDCG@10"] > 0.2
    saved = json.loads((tmp_path / "m" / "training.json").read_text())["config"]
    assert (saved["precision"], saved["weight_decay"], saved["decay_embeddings"]) == ("bf16", 0.05, False)


def test_parameter_groups_decay_only_linear_weights():
    model = SASRec(30, maxlen=6, hidden=8, blocks=2, heads=1)
    decayed, kept = parameter_groups(model, 0.1)
    linear = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert {id(p) for p in decayed["params"]} == linear and decayed["weight_decay"] == 0.1
    assert kept["weight_decay"] == 0.0 and len(decayed["params"]) + len(kept["params"]) == len(list(model.parameters()))
    kept_ids = {id(p) for p in kept["params"]}
    assert {id(model.item_emb.weight), id(model.pos_emb.weight), id(model.final_norm.weight)} <= kept_ids
    with_embeddings, _ = parameter_groups(model, 0.1, decay_embeddings=True)
    assert {id(p) for p in with_embeddings["params"]} == linear | {id(model.item_emb.weight), id(model.pos_emb.weight)}


def test_resume_refuses_other_items(dataset, trained, tmp_path):
    other = build_sequences(RawData(markov_interactions(n_users=50, n_items=N_ITEMS + 5, seed=1)))
    with pytest.raises(UserError, match="other items"):
        train_sasrec(other, tmp_path / "x", TrainConfig(**CONFIG), resume=trained[0])
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def index(dataset, trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "chain-index"
    build_index(BuildRequest(corpus=str(dataset[0]), model=trained[0], device="cpu"), out)
    return VectorIndex.load(out, device="cpu")


def test_index_holds_raw_ids_payload_and_model(index):
    assert index.ntotal == N_ITEMS and index.metric == "ip"
    assert index.encoder["family"] == "recsys" and (index.path / "model" / "model.safetensors").is_file()
    hit = index.search(np.zeros((1, index.dim), np.float32) + 1, k=1)[0][0]
    assert isinstance(hit.id, str) and hit.payload["title"] and hit.payload["genres"]


def test_faiss_ranking_matches_the_direct_scorer(dataset, trained, index):
    rec = Recommender.from_pretrained(trained[0], device="cpu")
    case = LeaveOneOut(dataset[1], rec.model.maxlen).case("test")
    histories = case.histories()
    # the index drops every history item; compare on users whose target is new to them
    fresh = np.array([t not in h for t, h in zip(case.targets, histories)])
    histories = [h for h, f in zip(histories, fresh) if f]
    queries = rec.encode(histories)
    raw = [[rec.item_ids[i - 1] for i in h] for h in histories]
    _, ids = index.search_ids(queries, k=20, exclude=raw)
    hits, n_rel = hit_matrix(ids.tolist(), [[rec.item_ids[t - 1]] for t in case.targets[fresh]])
    through_index = summarize(hits, n_rel, (1, 5, 10, 20))
    direct = evaluate(rec.model, case.subset(fresh), ks=(1, 5, 10, 20))
    assert fresh.sum() > 100
    assert through_index == pytest.approx(direct, abs=1e-12)


def test_engine_query_matches_recommend_and_checks_ids(trained, index):
    rec = Recommender.from_pretrained(trained[0], device="cpu")
    engine = RecommendationEngine(index, device="cpu")
    history = ["12", "13", "14"]
    hits = engine.query(history, k=5)
    assert [h.id for h in hits] == [h.id for h in rec.recommend(history, k=5)]
    assert not {h.id for h in hits} & set(history)
    with pytest.raises(UserError, match="unknown item ids: nope, 999"):
        engine.query(["12", "nope", "999"], k=5)
    skipped = engine.query(["12", "nope"], k=5, skip_unknown=True)
    assert [h.id for h in skipped] == [h.id for h in rec.recommend(["12"], k=5)]
    batch = engine.query_batch([history, ["12"]], k=5)
    assert [[h.id for h in q] for q in batch] == [[h.id for h in hits], [h.id for h in rec.recommend(["12"], k=5)]]


def test_build_index_needs_a_model(dataset, tmp_path):
    with pytest.raises(UserError, match="--model"):
        build_index(BuildRequest(corpus=str(dataset[0])), tmp_path / "i")
    assert not (tmp_path / "i").exists()


def test_learning_rate_warms_up_then_follows_a_half_cosine_to_zero():
    config = TrainConfig(lr=0.01, epochs=10, warmup_epochs=2, schedule="cosine")
    assert training.learning_rate(config, 0.0) == 0.0 and training.learning_rate(config, 1.0) == pytest.approx(0.005)
    assert training.learning_rate(config, 2.0) == pytest.approx(0.01)
    assert training.learning_rate(config, 6.0) == pytest.approx(0.005)  # half-way through the cosine
    assert training.learning_rate(config, 10.0) == pytest.approx(0.0, abs=1e-12)
    constant = TrainConfig(lr=0.01, epochs=10, warmup_epochs=2)
    assert [training.learning_rate(constant, p) for p in (1.0, 2.0, 9.9)] == pytest.approx([0.005, 0.01, 0.01])
    with pytest.raises(UserError, match="warmup_epochs"):
        TrainConfig(epochs=3, warmup_epochs=3).validate()


def test_a_scheduled_run_steps_with_the_scheduled_rate(dataset, tmp_path, monkeypatch):
    """Every optimizer step uses the rate of its position in the run: the last step of a 3-epoch cosine
    run is near 0, and training.json records the schedule."""
    seen = []
    step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: (seen.append(self.param_groups[0]["lr"]),
                                                                          step(self, *a, **k))[1])
    config = TrainConfig(**dict(CONFIG, epochs=3, schedule="cosine", warmup_epochs=1))
    train_sasrec(dataset[1], tmp_path / "m", config)
    per_epoch = len(seen) // 3
    assert seen[0] == pytest.approx(config.lr * 0.5 / per_epoch)  # the warm-up's first step
    assert max(seen) <= config.lr and seen[-1] < 0.02 * config.lr
    assert seen[per_epoch - 1] < seen[per_epoch] and seen[per_epoch] > seen[-1]  # rises, then falls
    recorded = json.loads((tmp_path / "m" / "training.json").read_text())["config"]
    assert (recorded["schedule"], recorded["warmup_epochs"]) == ("cosine", 1)
