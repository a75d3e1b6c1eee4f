"""Tiny models and tiny data, made on the spot: the suite runs offline on a CPU in a few minutes."""

import gzip
import http.server
import os
import sys
import threading

if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread a worker (-n 2 on 2 cores): workers that share cores wait
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # on each other's spinning threads; before torch and numpy load
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POSITIVE = ["great", "wonderful", "superb", "loved", "brilliant"]
NEGATIVE = ["awful", "boring", "terrible", "hated", "dull"]
NEUTRAL = ["the", "movie", "film", "plot", "actor", "scene", "story", "was", "and", "it", "a", "of"]


def make_reviews(n, seed=0, min_words=4, max_words=40):
    """Synthetic reviews whose label is decided by their words: neutral filler with a few sentiment words."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    reviews = []
    for label in labels:
        words = list(rng.choice(NEUTRAL, rng.integers(min_words, max_words)))
        for _ in range(rng.integers(1, 4)):
            words.insert(rng.integers(0, len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        reviews.append(" ".join(words) + (" <br /><br />" if rng.random() < 0.3 else ""))
    return pd.DataFrame({"review": reviews, "sentiment": labels})


def cli(**settings):
    """Command-line arguments for main(): cli(max_length=64) -> ["--max-length=64"]."""
    return [f"--{name.replace('_', '-')}={value}" for name, value in settings.items()]


def write_csv(df, path):
    """Write df as CSV, gzipped when path ends in .gz."""
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", newline="") as f:
            df.to_csv(f, index=False)
    else:
        df.to_csv(path, index=False)
    return path


def save_tiny_distilbert(path, dim=32, heads=2):
    """A 2-layer DistilBERT with a WordPiece vocabulary of the synthetic words, saved like a hub model. Its weights are
    drawn from a fixed seed: every run of the suite trains from the same start."""
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertTokenizer

    words = sorted(set(POSITIVE + NEGATIVE + NEUTRAL + list("abcdefghijklmnopqrstuvwxyz") + ["<", ">", "/", "br"]))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    tokenizer = DistilBertTokenizer(vocab={token: i for i, token in enumerate(vocab)})
    config = DistilBertConfig(
        vocab_size=len(vocab),
        dim=dim,
        n_layers=2,
        n_heads=heads,
        hidden_dim=2 * dim,
        max_position_embeddings=128,
        seq_classif_dropout=0.1,
    )
    torch.manual_seed(0)
    DistilBertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 2-layer, 32-wide DistilBERT: enough for one decision (sentiment, a topic)."""
    return save_tiny_distilbert(tmp_path_factory.mktemp("tiny-distilbert"))


@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    """A 2-layer, 64-wide DistilBERT with 4 heads: several labels at once (the 32-wide one stalls on some
    initialisations)."""
    return save_tiny_distilbert(tmp_path_factory.mktemp("small-distilbert"), dim=64, heads=4)


@pytest.fixture
def serve(tmp_path):
    """serve(files) -> base URL of a loopback HTTP server for {name: bytes}; .requests counts the GETs.
    A value (bytes, n) announces n bytes but sends only the bytes, then drops the connection."""
    servers = []

    def start(files):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                start.requests.append(self.path)
                body = files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                body, length = body if isinstance(body, tuple) else (body, len(body))
                self.send_response(200)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    start.requests = []
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
