"""Data as it comes: a separate validation and test file (VALID_URL, TEST_URL), Parquet in and out with the label
names a Hugging Face Parquet file carries, and hf://datasets/ URLs fetched by huggingface_hub (faked: no hub here)."""

import json
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import cli, make_reviews, write_csv
from test_distributed import close, torchrun
from test_own_data import make_topics
from test_reliability import ROOT, fails, files_under
from test_training import comparable, interrupt_at

import predict
import textclf.data
import train_distilbert as td
import train_lstm_baseline as tl
from textclf.data import file_splits

DEFAULT_SIZES = {"TRAIN_SIZE": 35_000, "VALID_SIZE": 5_000, "TEST_SIZE": 10_000}


def write_parquet(df, path, names=None):
    """df as a Parquet file; with names, its label column a ClassLabel, as the hub's Parquet files carry it."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    if names:
        features = {"text": {"dtype": "string", "_type": "Value"}, "label": {"names": names, "_type": "ClassLabel"}}
        table = table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})
    pq.write_table(table, path)
    return path


def hub_reviews(n, seed):
    """Reviews laid out as stanfordnlp/imdb's Parquet files: text, and label 0 (neg) or 1 (pos)."""
    return make_reviews(n, seed=seed).rename(columns={"review": "text", "sentiment": "label"})


def predicted_accuracy(out_dir, texts, labels):
    """The accuracy predict.py's Run gives the finished run on texts, labels as indices into its label names."""
    run = predict.Run(out_dir, torch.device("cpu"), "fp32")
    return (run.logits(list(texts), 64).argmax(-1) == torch.tensor(list(labels))).float().mean().item()


def test_what_the_sizes_mean_beside_files_of_their_own():
    alone = {"DATA_URL": "a.csv", "VALID_URL": "", "TEST_URL": "", **DEFAULT_SIZES}
    assert file_splits(alone, []) == {"DATA_URL": DEFAULT_SIZES}  # the recipe: unchanged
    test = {**alone, "TEST_URL": "t.csv"}
    assert file_splits(test, []) == {
        "DATA_URL": {"TRAIN_SIZE": None, "VALID_SIZE": 0.1},
        "TEST_URL": {"TEST_SIZE": None},
    }
    assert file_splits({**alone, "VALID_URL": "v.csv"}, []) == {
        "DATA_URL": {"TRAIN_SIZE": None, "TEST_SIZE": 0.1},
        "VALID_URL": {"VALID_SIZE": None},
    }
    assert file_splits({**test, "TRAIN_SIZE": 0.5, "TEST_SIZE": 300}, ["TRAIN_SIZE", "TEST_SIZE"]) == {
        "DATA_URL": {"TRAIN_SIZE": 0.5, "VALID_SIZE": 0.1},
        "TEST_URL": {"TEST_SIZE": 300},
    }
    assert file_splits(test, ["VALID_SIZE"])["DATA_URL"] == {"TRAIN_SIZE": None, "VALID_SIZE": 5_000}
    three = {**test, "VALID_URL": "v.csv"}
    assert file_splits(three, ["VALID_SIZE"]) == {
        "DATA_URL": {"TRAIN_SIZE": None},
        "VALID_URL": {"VALID_SIZE": 5_000},
        "TEST_URL": {"TEST_SIZE": None},
    }


def args(module, tmp_path, url, model=None, **settings):
    """A quick run of module on url, with no split size given unless in settings."""
    base = {"data_url": url, "data_dir": tmp_path / "data", "out_dir": tmp_path / "out", "epochs": 3}
    if module is td:
        base.update(model_name=model, max_length=32, learning_rate=3e-3)
    else:
        base.update(vocab_size=100, embedding_dim=8, hidden_dim=16, batch_size=32, learning_rate=0.02)
    return cli(**{**base, **settings})


@pytest.mark.parametrize("module", [td, tl], ids=["distilbert", "lstm"])
def test_a_training_csv_and_a_test_csv_report_on_exactly_the_test_files_rows(tmp_path, tiny_model, module):
    """The test file's word labels are matched to the training file's by name: it lacks a class, so its own sorted
    names differ."""
    train = write_csv(make_topics(900, seed=1), tmp_path / "train.csv")
    test = make_topics(300, seed=2).query("topic != 'complaint'")
    metrics = module.main(
        args(
            module,
            tmp_path,
            str(train),
            tiny_model,
            text_column="body",
            label_columns="topic",
            test_url=write_csv(test, tmp_path / "test.csv"),
            valid_size=150,
        )
    )
    assert metrics["examples"] == {"train": 750, "valid": 150, "test": len(test)}  # the rest of train.csv; all of test
    assert metrics["labels"] == ["complaint", "praise", "story"] and metrics["test_accuracy"] > 0.8
    labels = test["topic"].map({label: i for i, label in enumerate(metrics["labels"])})
    assert predicted_accuracy(tmp_path / "out", test["body"], labels) == pytest.approx(metrics["test_accuracy"])
    assert metrics["settings"]["TEST_URL"] == str(tmp_path / "test.csv")


def test_three_parquet_files_take_their_label_names_from_the_hub_metadata(tmp_path, tiny_model):
    files = {
        name: write_parquet(hub_reviews(n, seed), tmp_path / f"{name}.parquet", ["neg", "pos"])
        for name, n, seed in (("train", 700, 1), ("valid", 150, 2), ("test", 250, 3))
    }
    metrics = td.main(
        args(
            td,
            tmp_path,
            str(files["train"]),
            tiny_model,
            text_column="text",
            label_columns="label",
            valid_url=files["valid"],
            test_url=files["test"],
            test_size=200,
        )
    )
    assert metrics["examples"] == {"train": 700, "valid": 150, "test": 200}  # TEST_SIZE given: the file's first rows
    assert metrics["labels"] == ["neg", "pos"] and metrics["test_accuracy"] > 0.8
    config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    card = (tmp_path / "out" / "model" / "README.md").read_text()
    assert "`train.parquet` and `test.parquet`: 700 training, 150 validation and 200 test texts" in card
    assert "on the 200 test texts of `test.parquet`" in card and "name: test.parquet" in card
    test = pd.read_parquet(files["test"]).iloc[:200]
    assert predicted_accuracy(tmp_path / "out", test["text"], test["label"]) == pytest.approx(metrics["test_accuracy"])

    # predict.py reads and writes Parquet
    out = tmp_path / "predictions.parquet"
    predict.main([str(tmp_path / "out"), "--input", str(files["test"]), "--output", str(out)])
    written = pd.read_parquet(out)
    assert list(written.columns) == ["text", "label", "predicted_label", "predicted_score"] and len(written) == 250
    assert (written["predicted_label"].iloc[:200] == test["label"].map({0: "neg", 1: "pos"})).mean() == pytest.approx(
        metrics["test_accuracy"]
    )

    # LABEL_NAMES, when given, names the labels instead
    again = tl.main(
        args(
            tl,
            tmp_path / "again",
            str(files["train"]),
            text_column="text",
            label_columns="label",
            test_url=files["test"],
            label_names="bad,good",
            epochs=1,
        )
    )
    assert again["labels"] == ["bad", "good"]


def test_predict_streams_a_large_parquet_file_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "CHUNK", 64)
    train = write_csv(make_reviews(400, seed=4), tmp_path / "train.csv")
    tl.main(args(tl, tmp_path, str(train), train_size=300, valid_size=50, test_size=50, epochs=1))
    reviews = make_reviews(300, seed=5).assign(id=range(300))
    write_parquet(reviews, tmp_path / "new.parquet")
    predict.main(
        [str(tmp_path / "out"), "--input", str(tmp_path / "new.parquet"), "--output", str(tmp_path / "out.parquet")]
    )
    written = pd.read_parquet(tmp_path / "out.parquet")
    assert list(written["id"]) == list(range(300)) and set(written["predicted_label"]) <= {"negative", "positive"}
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_row_groups == 5  # one a chunk of 64


@pytest.mark.parametrize(
    "case, messages",
    [
        (
            "no label column",
            [
                (
                    "other.csv has no sentiment column; found columns ['review', 'stars']; every file needs "
                    "the training file's columns: rename the column in this file"
                )
            ],
        ),
        (
            "a label the training file never has",
            [("other.csv holds the label 'meh', which the training file (DATA_URL) never has (it has 'bad', 'good')")],
        ),
        (
            "an integer label the training file cannot name",
            [
                (
                    "other.csv: sentiment holds integer labels, named by the "
                    "training file's labels (negative,positive) as 0..1, but row 3 "
                    "(0-based, header not counted) holds '2'; every file needs the "
                    "same classes, numbered alike"
                )
            ],
        ),
    ],
)
@pytest.mark.parametrize("setting", ["valid_url", "test_url"])
def test_a_mismatched_file_is_one_line_naming_it_and_writes_nothing(tmp_path, setting, case, messages):
    words = case == "a label the training file never has"
    train = make_reviews(300).assign(
        sentiment=lambda d: d["sentiment"].map({0: "bad", 1: "good"}) if words else d["sentiment"]
    )
    other = make_reviews(100, seed=1)
    if case == "no label column":
        other = other.rename(columns={"sentiment": "stars"})
    elif words:
        other["sentiment"] = ["meh" if i == 5 else ("bad", "good")[v] for i, v in enumerate(other["sentiment"])]
    else:
        other.loc[3, "sentiment"] = 2
    write_csv(train, tmp_path / "train.csv")
    write_csv(other, tmp_path / "other.csv")
    before = files_under(tmp_path)
    fails(tl, args(tl, tmp_path, str(tmp_path / "train.csv"), **{setting: tmp_path / "other.csv"}), *messages)
    assert files_under(tmp_path) == before


def test_resume_knows_every_file(tmp_path, monkeypatch):
    train, valid, test = (
        write_csv(make_reviews(n, seed=s), tmp_path / f"{name}.csv")
        for name, n, s in (("train", 600, 1), ("valid", 100, 2), ("test", 100, 3))
    )

    def run(out, *extra):
        return tl.main(
            args(tl, tmp_path, str(train), valid_url=valid, test_url=test, out_dir=out, epochs=2) + list(extra)
        )

    straight = run(tmp_path / "straight")
    interrupt_at(tl, monkeypatch, "batch_loss", 5)
    with pytest.raises(SystemExit):
        run(tmp_path / "resumed")
    monkeypatch.undo()
    checkpoint = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert checkpoint["data_sha256"] == " ".join(textclf.data.file_sha256(f) for f in (train, valid, test))
    resume = [f"--out-dir={tmp_path / 'resumed'}", "--resume"]
    test.rename(tmp_path / "moved.csv")
    fails(
        tl, resume, f"the run's data file {test} is not there; if it moved, continue with --resume --test-url NEW_PATH"
    )
    write_csv(make_reviews(100, seed=9), tmp_path / "changed.csv")
    fails(
        tl,
        [*resume, f"--test-url={tmp_path / 'changed.csv'}"],
        f"{tmp_path / 'changed.csv'} is not the file the checkpoint was trained on",
    )
    resumed = tl.main([*resume, f"--test-url={tmp_path / 'moved.csv'}"])  # the same file, by its checksum
    assert comparable(resumed) == pytest.approx(comparable(straight), rel=1e-5)
    assert resumed["examples"] == {"train": 600, "valid": 100, "test": 100}


def test_torchrun_with_a_test_file_matches_one_process(tmp_path):
    train = write_csv(make_reviews(700, seed=12), tmp_path / "train.csv")
    test = write_csv(make_reviews(150, seed=13), tmp_path / "test.csv")
    settings = {"test_url": test, "valid_size": 100, "epochs": 2, "batch_size": 16}
    single = tl.main(args(tl, tmp_path, str(train), out_dir=tmp_path / "one", **settings))
    done = torchrun("train_lstm_baseline.py", args(tl, tmp_path, str(train), out_dir=tmp_path / "ddp", **settings))
    assert done.returncode == 0, done.stderr[-3000:]
    parallel = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    close(single, parallel)
    assert parallel["examples"] == single["examples"] == {"train": 600, "valid": 100, "test": 150}


def test_a_hub_dataset_is_fetched_once_by_huggingface_hub(tmp_path, tiny_model, monkeypatch, capsys):
    """huggingface_hub's download is faked (no hub here): what it is asked for, where the file lands, and that the
    run reads it from there."""
    calls = []

    def download(repo_id, filename, repo_type, revision, local_dir):
        calls.append((repo_id, filename, repo_type, revision, local_dir))
        (local_dir / filename).parent.mkdir(parents=True, exist_ok=True)
        seed = 1 if "train" in filename else 2
        return str(write_parquet(hub_reviews(500, seed), local_dir / filename, ["neg", "pos"]))

    monkeypatch.setattr(textclf.data, "hf_hub_download", download)
    base = "hf://datasets/stanfordnlp/imdb/plain_text"
    command = {
        "text_column": "text",
        "label_columns": "label",
        "test_url": f"{base}/test-00000-of-00001.parquet",
        "valid_size": 100,
        "shuffle": True,
    }
    metrics = tl.main(args(tl, tmp_path, f"{base}/train-00000-of-00001.parquet", **command))
    folder = tmp_path / "data" / "hf" / "datasets" / "stanfordnlp" / "imdb"
    assert calls == [
        ("stanfordnlp/imdb", f"plain_text/{split}-00000-of-00001.parquet", "dataset", None, folder)
        for split in ("train", "test")
    ]
    assert f"downloading {base}/train-00000-of-00001.parquet -> {folder}/plain_text/train" in capsys.readouterr().out
    assert metrics["labels"] == ["neg", "pos"] and metrics["examples"] == {"train": 400, "valid": 100, "test": 500}
    tl.main(args(tl, tmp_path, f"{base}/train-00000-of-00001.parquet", out_dir=tmp_path / "again", **command))
    assert len(calls) == 2  # fetched once
    tl.main(
        args(
            tl,
            tmp_path,
            "hf://datasets/stanfordnlp/imdb@refs%2Fconvert%2Fparquet/plain_text/train-00000-of-00001.parquet",
            out_dir=tmp_path / "revision",
            **command,
        )
    )  # a revision, as HfFileSystem writes it
    assert calls[-1][3:] == ("refs/convert/parquet", folder.with_name("imdb@refs%2Fconvert%2Fparquet"))


def test_a_hub_dataset_that_cannot_be_fetched_is_one_line(tmp_path):
    """The real huggingface_hub, offline: its error becomes one line, and nothing is written."""
    done = subprocess.run(
        [
            sys.executable,
            "train_lstm_baseline.py",
            "--data-url",
            "hf://datasets/stanfordnlp/imdb/plain_text/train-00000-of-00001.parquet",
            f"--data-dir={tmp_path / 'data'}",
            f"--out-dir={tmp_path / 'out'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": ""},
        check=False,
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert (
        done.stderr.startswith(
            "error: could not download hf://datasets/stanfordnlp/imdb/plain_text/train-00000-of-00001.parquet ("
        )
        and "set HF_TOKEN for a private or gated dataset" in done.stderr
    )
    assert files_under(tmp_path) == []


def test_a_test_file_gives_the_numbers_of_the_same_rows_split_from_one_file(tmp_path):
    reviews = make_reviews(1_000, seed=21)
    whole = write_csv(reviews, tmp_path / "all.csv")
    train, test = (
        write_csv(reviews.iloc[:800], tmp_path / "train.csv"),
        write_csv(reviews.iloc[800:], tmp_path / "t.csv"),
    )
    one = tl.main(
        args(tl, tmp_path, str(whole), out_dir=tmp_path / "one", train_size=600, valid_size=200, test_size=200)
    )
    two = tl.main(args(tl, tmp_path, str(train), out_dir=tmp_path / "two", test_url=test, valid_size=200))
    assert comparable(two) == comparable(one) and two["examples"] == one["examples"]
    assert two["test"]["confusion_matrix"] == one["test"]["confusion_matrix"]


def test_a_validation_split_of_one_class_is_refused(tmp_path):
    """A file sorted by label (as hub files often are) leaves its last tenth, the validation split, one class."""
    train = write_csv(make_reviews(600, seed=3).sort_values("sentiment"), tmp_path / "train.csv")
    test = write_csv(make_reviews(100, seed=4), tmp_path / "test.csv")
    fails(
        tl,
        args(tl, tmp_path, str(train), test_url=test),
        "the validation split holds only the class 'positive', "
        "so it cannot choose the best epoch; if the file is sorted by label, pass --shuffle true; give a larger "
        "--valid-size",
    )
    metrics = tl.main(args(tl, tmp_path, str(train), test_url=test, shuffle=True, epochs=1))
    assert metrics["examples"] == {"train": 540, "valid": 60, "test": 100}  # a tenth of train.csv validates
