"""train_lstm_baseline.py: vocabulary, packed-sequence semantics, end to end with predict (offline, CPU)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import cli, make_reviews, write_csv
from torch.nn.utils.rnn import pack_padded_sequence

import train_lstm_baseline as tl

ROOT = Path(__file__).resolve().parents[1]


def run_args(tmp_path, csv, **overrides):
    settings = {
        "data_url": Path(csv).as_uri(),
        "data_dir": tmp_path / "data",
        "train_size": 1_200,
        "valid_size": 400,
        "test_size": 400,
        "vocab_size": 100,
        "embedding_dim": 16,
        "hidden_dim": 32,
        "batch_size": 32,
        "epochs": 3,
        "learning_rate": 0.01,
        "out_dir": tmp_path / "out",
        **overrides,
    }
    return cli(**settings)


def test_vocabulary_comes_from_the_training_texts_only():
    vocab = tl.build_vocab(["good good film<br />", "Bad film!", "good"], vocab_size=10)
    assert vocab[:2] == ["<pad>", "<unk>"]
    assert set(vocab) == {"<pad>", "<unk>", "good", "film", "bad", "!"}  # no "br": the tags are removed
    ids, offsets = tl.encode(["Good unseen FILM ?", "zzz"], vocab, max_length=100)
    assert ids[offsets[0] : offsets[1]].tolist() == [vocab.index("good"), 1, vocab.index("film"), 1]
    assert ids[offsets[1] : offsets[2]].tolist() == [1]
    ids, offsets = tl.encode(["Good unseen FILM ?"], vocab, max_length=2)  # the first max_length tokens
    assert ids.tolist() == [vocab.index("good"), 1]


def test_vocabulary_keeps_the_most_frequent_tokens():
    vocab = tl.build_vocab(["a a a b b c"] * 3, vocab_size=4)
    assert vocab == ["<pad>", "<unk>", "a", "b"]


def test_vocabulary_is_built_from_the_training_split_in_main(tmp_path, monkeypatch):
    df = make_reviews(2_000, seed=4)
    df.loc[1_200:, "review"] = df.loc[1_200:, "review"] + " heldoutword"  # valid and test rows only
    csv = write_csv(df, tmp_path / "reviews.csv")
    seen = []
    real_build_vocab = tl.build_vocab
    monkeypatch.setattr(
        tl,
        "build_vocab",
        lambda texts, size, pairs=False: seen.append(list(texts)) or real_build_vocab(texts, size, pairs),
    )
    tl.main(run_args(tmp_path, csv, epochs=1, vocab_size=1_000))
    assert seen == [df["review"][:1_200].tolist()]
    _, vocab = tl.load_model(tmp_path / "out")
    assert "heldoutword" not in vocab and "great" in vocab


def test_last_real_token_state_equals_pack_padded_sequence():
    torch.manual_seed(0)
    model = tl.LSTMClassifier(vocab_size=50, embedding_dim=8, hidden_dim=12).eval()
    lengths = torch.tensor([9, 1, 5, 9, 3, 7])
    ids = torch.randint(2, 50, (6, 9))
    ids[torch.arange(9) >= lengths[:, None]] = 0
    with torch.no_grad():
        packed = pack_padded_sequence(model.embedding(ids), lengths, batch_first=True, enforce_sorted=False)
        _, (h_n, _) = model.lstm(packed)
        expected = model.head(h_n[-1])
        torch.testing.assert_close(model(ids, lengths), expected, atol=1e-6, rtol=1e-5)
        # and padding a batch wider changes nothing
        wider = torch.cat([ids, torch.zeros(6, 20, dtype=torch.int64)], 1)
        torch.testing.assert_close(model(wider, lengths), expected, atol=1e-6, rtol=1e-5)


def test_main_learns_and_predict_reloads_the_model(tmp_path):
    csv = write_csv(make_reviews(2_000, seed=5), tmp_path / "reviews.csv.gz")
    metrics = tl.main(run_args(tmp_path, csv))

    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert [record["epoch"] for record in saved["epochs"]] == [1, 2, 3]
    assert set(saved["epochs"][0]) == {
        "epoch",
        "train_loss",
        "train_accuracy",
        "valid_loss",
        "valid_accuracy",
        "seconds",
    }
    assert saved["valid_accuracy"] >= 0.9 and saved["test_accuracy"] >= 0.9
    assert saved["epochs"][-1]["valid_loss"] < 0.5 * math.log(2)  # well below chance's cross-entropy
    assert saved["valid_accuracy"] == max(record["valid_accuracy"] for record in saved["epochs"])
    assert not (tmp_path / "out" / "checkpoint.pt").exists()

    predictions = tl.predict(["a wonderful superb film", "the plot was awful and boring"], tmp_path / "out")
    assert [label for label, _ in predictions] == ["positive", "negative"]
    assert all(0.5 <= probability <= 1 for _, probability in predictions)


def test_a_new_run_never_pairs_its_vocabulary_or_metrics_with_an_old_model(tmp_path, monkeypatch):
    """A second run into the same OUT_DIR that dies in its first epoch leaves the first run whole (weights and
    vocabulary are one file, with its metrics.json); once it saves a model, the old metrics.json is gone."""
    first = write_csv(make_reviews(2_000, seed=5), tmp_path / "first.csv")
    tl.main(run_args(tmp_path, first, epochs=1))
    before = (tmp_path / "out" / "metrics.json").read_text(), (tmp_path / "out" / "model.pt").read_bytes()

    second = write_csv(make_reviews(2_000, seed=11, max_words=10), tmp_path / "second.csv")  # another vocabulary
    real_evaluate = tl.evaluate
    monkeypatch.setattr(tl, "evaluate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("machine died")))
    with pytest.raises(RuntimeError):
        tl.main(run_args(tmp_path, second, epochs=1, out_dir=tmp_path / "out", vocab_size=50))
    assert ((tmp_path / "out" / "metrics.json").read_text(), (tmp_path / "out" / "model.pt").read_bytes()) == before
    assert [label for label, _ in tl.predict(["a wonderful superb film"], tmp_path / "out")] == ["positive"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json", "model.pt", "tensorboard"]

    calls = []  # now the run dies after its first model is saved: the old results no longer describe it

    def dies_in_the_test_evaluation(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("machine died")
        return real_evaluate(*a, **k)

    monkeypatch.setattr(tl, "evaluate", dies_in_the_test_evaluation)
    with pytest.raises(RuntimeError):
        tl.main(run_args(tmp_path, second, epochs=1, out_dir=tmp_path / "out", vocab_size=50))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checkpoint.pt", "model.pt", "tensorboard"]
    assert (tmp_path / "out" / "model.pt").read_bytes() != before[1]


LONG_TEXT_RUN = """
import resource, sys
import predict, train_lstm_baseline as tl
csv, out = sys.argv[1:3]
metrics = tl.main([f"--data-url={csv}", f"--data-dir={out}/data", f"--out-dir={out}/run", "--train-size=600",
                   "--valid-size=200", "--test-size=200", "--vocab-size=100", "--embedding-dim=8", "--hidden-dim=16",
                   "--epochs=1"])
predict.main([f"{out}/run", "--input", csv, "--output", f"{out}/predicted.csv"])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)  # peak MiB of this process
"""


def test_a_text_of_a_million_characters_trains_and_predicts_in_bounded_memory(tmp_path):
    """One 1,000,000-character review in the training split and in predict.py's input: the LSTM keeps its first
    MAX_LENGTH tokens, so memory stays bounded (uncapped, 200,000 characters asked for 8.4 GB)."""
    df = make_reviews(1_000, seed=5)
    df.loc[3, "review"] = ("a great film " * 80_000)[:1_000_000]
    csv = write_csv(df, tmp_path / "long.csv")
    done = subprocess.run(
        [sys.executable, "-c", LONG_TEXT_RUN, str(csv), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    peak_mib = int(done.stdout.split()[-1])
    assert peak_mib < 2_500, peak_mib
    predicted = pd.read_csv(tmp_path / "predicted.csv")
    assert len(predicted) == 1_000 and predicted["predicted_score"].between(0.5, 1).all()  # one row per input row
