"""Shared test set-up: offline hub, an isolated RAGCLI_HOME, progress bars off, one torch thread."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run fastest on one intra-op thread, results repeat exactly, and two threads
    spin-wait on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGCLI_HOME", str(tmp_path / "ragcli-home"))
    from indexes.runtime import set_progress

    set_progress(False)
    yield
    set_progress(True)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """A randomly initialised 1-layer BERT (hidden 32) saved as a sentence-transformers model."""
    from retrieval_models_corpus import ARTICLES, QUERIES
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from retrieval.attentive_cnn import words

    root = tmp_path_factory.mktemp("tiny-encoder")
    texts = [a.text for a in ARTICLES] + [q.text for q in QUERIES]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for t in texts for w in words(t)})
    (root / "vocab.txt").write_text("\n".join(vocab), encoding="utf-8")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(root / "bert")
    BertTokenizerFast(vocab_file=str(root / "vocab.txt")).save_pretrained(root / "bert")
    encoder = SentenceTransformer(modules=[Transformer(str(root / "bert")), Pooling(32, "mean")])
    encoder.save(str(root / "st"))
    return str(root / "st")
