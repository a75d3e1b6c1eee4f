"""The code both scripts share (settings, download, validation, split, batching) behaves the same in each."""
import gzip
import hashlib
import importlib
import inspect
import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_reviews, write_csv

SCRIPTS = ["train_distilbert", "train_lstm_baseline"]
SHARED = ["RecipeError", "parse_settings", "check_positive", "resolve_device", "atomic_write", "file_sha256", "load_reviews",
          "read_reviews", "split", "clean", "make_batches", "StopRequest", "resolve_run", "main",
          "progress", "locked", "remove_stale", "temporary", "write_error", "check_data_settings", "label_columns",
          "is_archive", "from_archive", "read_aclimdb", "check_labels", "targets", "batch_loss", "scores",
          "all_logits", "better", "shown",
          "Interrupted", "restore_rng", "rng_state", "flat_token_ids", "pad_batch", "to_device"]


@pytest.fixture(params=SCRIPTS)
def script(request):
    return importlib.import_module(request.param)


def test_the_shared_part_is_identical_in_both_scripts():
    sources = [inspect.getsource(importlib.import_module(name)) for name in SCRIPTS]
    marker_start, marker_end = "# ---", "end of the shared part"
    parts = []
    for source in sources:
        start = source.index("shared with")
        parts.append(source[source.index("\n", start):source.index(marker_end)].rsplit(marker_start, 1)[0])
    assert all(part == parts[0] for part in parts)
    for name in SHARED:
        assert f"def {name}(" in parts[0] or f"class {name}" in parts[0]


def test_split_takes_rows_in_file_order(script):
    df = pd.DataFrame({"review": [f"review {i}" for i in range(50_000)], "sentiment": np.arange(50_000) % 2})
    train, valid, test = script.split(df, 35_000, 5_000, 10_000)
    assert list(train.index) == list(range(0, 35_000))
    assert list(valid.index) == list(range(35_000, 40_000))
    assert list(test.index) == list(range(40_000, 50_000))
    train, valid, test = script.split(df, 2_000, 500, 300)
    assert (train.index[0], train.index[-1], len(train)) == (0, 1_999, 2_000)
    assert (valid.index[0], valid.index[-1], len(valid)) == (2_000, 2_499, 500)
    assert (test.index[0], test.index[-1], len(test)) == (2_500, 2_799, 300)


def test_split_asking_for_too_many_rows_is_a_clear_error(script):
    df = make_reviews(100)
    with pytest.raises(script.RecipeError, match=r"needs 101 rows .* the file has 100; lower --train-size"):
        script.split(df, 60, 20, 21)


def test_download_over_http_once(script, serve, tmp_path):
    payload = gzip.compress(make_reviews(50).to_csv(index=False).encode())
    base = serve({"movie_data.csv.gz": payload})
    path, reviews, _ = script.load_reviews(f"{base}/movie_data.csv.gz", tmp_path / "data")
    assert path == tmp_path / "data" / "movie_data.csv.gz" and path.read_bytes() == payload
    assert len(serve.requests) == 1 and len(reviews) == 50
    again, reviews_again, _ = script.load_reviews(f"{base}/movie_data.csv.gz", tmp_path / "data")
    assert again == path and reviews_again.equals(reviews)
    assert len(serve.requests) == 1  # the second call reuses the file
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".movie_data.csv.gz.source.json",
                                                                       "movie_data.csv.gz"]
    record = json.loads((tmp_path / "data" / ".movie_data.csv.gz.source.json").read_text())
    assert record == {"url": f"{base}/movie_data.csv.gz", "sha256": hashlib.sha256(payload).hexdigest()}


def test_download_from_a_file_url(script, tmp_path):
    source = write_csv(make_reviews(20), tmp_path / "mine.csv")
    path, reviews, _ = script.load_reviews(source.as_uri(), tmp_path / "data")
    assert path.name == "mine.csv" and len(reviews) == 20


def test_read_reviews_accepts_word_labels(script, tmp_path):
    df = pd.DataFrame({"review": ["good", "bad", "fine"], "sentiment": ["positive", "Negative", "positive"],
                       "extra": [1, 2, 3]})
    read, names = script.read_reviews(write_csv(df, tmp_path / "words.csv"))
    assert list(read.columns) == ["text", "label"] and list(read["label"]) == [1, 0, 1]
    assert names == ["Negative", "positive"]  # word labels name themselves, sorted


def test_clean_removes_line_break_tags(script):
    assert script.clean("Great.<br /><br />Really.<BR>ok<br/>") == "Great.  Really. ok "


def test_training_batches_are_a_shuffled_partition(script):
    lengths = np.random.default_rng(0).integers(1, 500, 1_000)
    for grouped in (True, False):
        batches = script.make_batches(lengths, 32, torch.Generator().manual_seed(1), grouped)
        assert len(batches) == 32 and sorted(np.concatenate(batches)) == list(range(1_000))
        again = script.make_batches(lengths, 32, torch.Generator().manual_seed(1), grouped)
        assert all(np.array_equal(a, b) for a, b in zip(batches, again))  # same seed, same epoch
    spread = np.mean([np.ptp(lengths[b]) for b in script.make_batches(lengths, 32, torch.Generator(), True)])
    assert spread < 60  # similar lengths share a batch (random batches spread over ~470)


def test_settings_overrides_are_typed_from_the_defaults(script):
    defaults = {"EPOCHS": 3, "LEARNING_RATE": 5e-5, "COMPILE": False, "MODEL_NAME": "x", "RESUME": False}
    settings, given = script.parse_settings(["--epochs=1", "--learning-rate", "1", "--compile", "yes",
                                             "--model-name", "/m", "--resume"], defaults)
    assert settings == {"EPOCHS": 1, "LEARNING_RATE": 1.0, "COMPILE": True, "MODEL_NAME": "/m", "RESUME": True}
    assert isinstance(settings["LEARNING_RATE"], float) and set(given) == set(defaults)
    assert script.parse_settings(["--compile", "off"], defaults)[0]["COMPILE"] is False
    assert script.parse_settings([], defaults) == (defaults, {})


@pytest.mark.parametrize("argv, message", [
    (["--epoch", "1"], "unknown setting '--epoch'; the settings are: --epochs --learning-rate --compile"),
    (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    (["--epochs", "1.5"], "argument --epochs: invalid int value: '1.5'"),
    (["--learning-rate", "fast"], "argument --learning-rate: invalid float value: 'fast'"),
    (["--compile", "maybe"], "argument --compile: invalid bool value: 'maybe'"),
    (["--max-length", "64"], "unknown setting '--max-length'"),
])
def test_bad_overrides_name_the_setting(script, capsys, argv, message):
    defaults = {"EPOCHS": 3, "LEARNING_RATE": 5e-5, "COMPILE": False}
    with pytest.raises(SystemExit) as exit:
        script.parse_settings(argv, defaults)
    text = exit.value.code  # printed as one line on stderr, exit status 1
    assert text.startswith("error: ") and "\n" not in text and message in text


def test_help_lists_every_setting_with_its_default(script, capsys):
    with pytest.raises(SystemExit) as exit:
        script.main(["--help"])
    out = "".join(capsys.readouterr().out.split())  # argparse wraps long lines
    assert exit.value.code == 0
    for name, value in script.DEFAULTS.items():
        assert f"--{name.lower().replace('_', '-')}" in out and f"default:{value}" in out
    assert "passesoverthetrainingsplit(default:" in out  # the settings block's comments explain each one


def test_atomic_write_leaves_nothing_when_the_writer_fails(script, tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def broken(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        script.atomic_write(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
