"""Every file speaks for its own labels and columns: a separate file's own label names, predict.py's input columns kept
as they are whatever the chunks hold, empty inputs, label columns that are lists or scores, and runs compared with a
tolerance that the order of summation cannot break."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import make_reviews, write_csv
from test_data_files import args, hub_reviews, write_parquet
from test_distributed import close
from test_reliability import fails, files_under
from test_training import comparable

import compare
import predict
import textclf.data
import train_lstm_baseline as tl


def flipped(df):
    """The same rows with 0 and 1 swapped: what a file whose metadata names them [pos, neg] holds."""
    return df.assign(label=1 - df["label"])


@pytest.fixture(scope="module")
def hub_files(tmp_path_factory):
    """Training, validation and test Parquet files as the hub ships them, named [neg, pos]; and the validation and
    test rows again, numbered the other way round and named [pos, neg]."""
    tmp = tmp_path_factory.mktemp("hub")
    train, valid, test = hub_reviews(700, 1), hub_reviews(150, 2), hub_reviews(200, 3)
    return {
        "train": write_parquet(train, tmp / "train.parquet", ["neg", "pos"]),
        "valid": write_parquet(valid, tmp / "valid.parquet", ["neg", "pos"]),
        "test": write_parquet(test, tmp / "test.parquet", ["neg", "pos"]),
        "valid_flipped": write_parquet(flipped(valid), tmp / "valid_flipped.parquet", ["pos", "neg"]),
        "test_flipped": write_parquet(flipped(test), tmp / "test_flipped.parquet", ["pos", "neg"]),
    }


def lstm(tmp_path, name, train, **settings):
    return tl.main(
        args(
            tl,
            tmp_path,
            str(train),
            out_dir=tmp_path / name,
            text_column="text",
            label_columns="label",
            epochs=2,
            **settings,
        )
    )


def test_a_separate_file_is_read_by_its_own_label_names(tmp_path, hub_files):
    """The same classes, numbered the other way round in the test and validation files: matched by name, every
    number is the one of the files numbered alike (before, the test accuracy was 1 - the true one)."""
    alike = lstm(tmp_path, "alike", hub_files["train"], valid_url=hub_files["valid"], test_url=hub_files["test"])
    other = lstm(
        tmp_path, "other", hub_files["train"], valid_url=hub_files["valid_flipped"], test_url=hub_files["test_flipped"]
    )
    assert alike["test_accuracy"] > 0.7
    assert other["labels"] == alike["labels"] == ["neg", "pos"]
    assert comparable(other) == comparable(alike)
    assert other["test"]["confusion_matrix"] == alike["test"]["confusion_matrix"]

    # LABEL_NAMES renames the training file's classes; the other files' names map to them alike
    renamed = lstm(
        tmp_path,
        "renamed",
        hub_files["train"],
        valid_url=hub_files["valid_flipped"],
        test_url=hub_files["test_flipped"],
        label_names="bad,good",
    )
    assert renamed["labels"] == ["bad", "good"] and renamed["test_accuracy"] == alike["test_accuracy"]
    fails(
        tl,
        args(
            tl,
            tmp_path,
            str(hub_files["train"]),
            out_dir=tmp_path / "three",
            text_column="text",
            label_columns="label",
            label_names="bad,good,ugly",
        ),
        "LABEL_NAMES (--label-names) names 3 classes, but",
        "train.parquet's metadata names 2 (neg,pos); give one name for each of them, in that order",
    )


def test_a_label_name_the_training_file_lacks_is_one_line(tmp_path, hub_files):
    other = write_parquet(hub_reviews(200, 3), tmp_path / "stars.parquet", ["one star", "five stars"])
    before = files_under(tmp_path)
    fails(
        tl,
        args(tl, tmp_path, str(hub_files["train"]), test_url=other, text_column="text", label_columns="label"),
        f"{other} holds the label 'one star', which the training file (DATA_URL) never has (it has 'neg', 'pos')",
    )
    assert files_under(tmp_path) == before
    # an integer beyond the file's own names is said to be named by its metadata
    bad = write_parquet(
        hub_reviews(200, 3).assign(label=lambda d: d["label"] * 2), tmp_path / "two.parquet", ["neg", "pos"]
    )
    fails(
        tl,
        args(tl, tmp_path, str(bad), text_column="text", label_columns="label"),
        "label holds integer labels, named by the file's Hugging Face metadata (neg,pos) as 0..1, but rows",
    )


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    train = write_csv(make_reviews(400, seed=4), tmp / "train.csv")
    tl.main(args(tl, tmp, str(train), train_size=300, valid_size=50, test_size=50, epochs=1))
    return tmp / "out"


def write_jsonl(records, path):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.mark.parametrize("output", ["out.csv", "out.tsv", "out.jsonl", "out.parquet"])
def test_predict_keeps_every_row_with_its_own_columns_when_jsonl_keys_change(lstm_run, tmp_path, monkeypatch, output):
    """A key that appears after the first chunk, one that disappears, and one null in the whole first chunk."""
    monkeypatch.setattr(predict, "CHUNK", 64)
    reviews = make_reviews(200, seed=5)["review"].tolist()
    records = []
    for i, text in enumerate(reviews):
        record = {"id": i, "review": text, "note": None if i < 64 else f"n{i}"}
        if i < 100:
            record["source"] = "web"  # disappears after row 100
        if i >= 150:
            record["late"] = i * 10  # first appears at row 150
        records.append(record)
    source = write_jsonl(records, tmp_path / "in.jsonl")
    predict.main([str(lstm_run), "--input", str(source), "--output", str(tmp_path / output)])
    if output.endswith(".parquet"):
        written = pd.read_parquet(tmp_path / output)
    elif output.endswith(".jsonl"):
        written = pd.read_json(tmp_path / output, lines=True)
    else:
        written = pd.read_csv(tmp_path / output, sep="\t" if output.endswith(".tsv") else ",")
    assert len(written) == 200 and list(written["id"]) == list(range(200))
    assert list(written["review"]) == reviews
    if not output.endswith(".jsonl"):  # one set of columns for all rows; JSONL writes each row's own keys
        assert list(written.columns) == ["id", "review", "note", "source", "late", "predicted_label", "predicted_score"]
    assert written["note"].isna().sum() == 64 and written["note"].iloc[64] == "n64"
    late = written["late"]
    assert late.iloc[:150].isna().all() and list(late.iloc[150:].astype(int)) == [i * 10 for i in range(150, 200)]
    source_column = written["source"]
    assert (source_column.iloc[:100] == "web").all() and source_column.iloc[100:].isna().all()
    assert set(written["predicted_label"]) <= {"negative", "positive"}


def test_predict_leaves_the_inputs_label_column_as_it_is(lstm_run, tmp_path):
    test = make_reviews(120, seed=6).rename(columns={"sentiment": "label"})
    source = write_parquet(test, tmp_path / "test.parquet")
    predict.main([str(lstm_run), "--input", str(source), "--output", str(tmp_path / "out.csv")])
    written = pd.read_csv(tmp_path / "out.csv")
    assert list(written.columns) == ["review", "label", "predicted_label", "predicted_score"]
    assert list(written["label"]) == list(test["label"])  # the true labels, to score the predictions against
    clash = write_csv(test.assign(predicted_label="x"), tmp_path / "clash.csv")
    fails(
        predict,
        [str(lstm_run), "--input", str(clash), "--output", str(tmp_path / "clash_out.csv")],
        "the input already has a column 'predicted_label', which predict.py writes its predictions to; rename or "
        "drop that column of the input",
    )
    assert not (tmp_path / "clash_out.csv").exists()


@pytest.mark.parametrize("output", ["out.parquet", "out.csv", "out.jsonl"])
def test_an_empty_input_writes_an_empty_file_of_the_outputs_format(lstm_run, tmp_path, output):
    empty = make_reviews(10).iloc[:0].assign(id=pd.Series([], dtype="int64"))
    source = write_parquet(empty, tmp_path / "empty.parquet")
    predict.main([str(lstm_run), "--input", str(source), "--output", str(tmp_path / output)])
    if output.endswith(".parquet"):
        written = pq.read_table(tmp_path / output)
        assert written.num_rows == 0
        assert written.column_names == ["review", "sentiment", "id", "predicted_label", "predicted_score"]
    elif output.endswith(".csv"):
        assert (tmp_path / output).read_text().strip() == "review,sentiment,id,predicted_label,predicted_score"
    else:
        assert (tmp_path / output).read_text() == ""
    fails(
        predict,
        [str(lstm_run), "--input", str(source), "--text-column", "body", "--output", str(tmp_path / "wrong.csv")],
        f"--input {source} has no column 'body'",
    )
    assert not (tmp_path / "wrong.csv").exists()


@pytest.mark.parametrize("layout", ["parquet", "csv"])
def test_a_label_column_of_lists_beyond_its_names_is_one_line(tmp_path, layout):
    """The hub's Sequence(ClassLabel): several classes a row in one column, a multi-label task (tests/test_as_given.py);
    class 3 where LABEL_NAMES names two is one line on how class numbers are named."""
    df = make_reviews(100).rename(columns={"sentiment": "labels"})
    df["labels"] = [[0], [1], [0, 3]] * 33 + [[2]]
    path = (
        write_parquet(df, tmp_path / "lists.parquet")
        if layout == "parquet"
        else write_csv(df.assign(labels=df["labels"].map(str)), tmp_path / "lists.csv")
    )
    before = files_under(tmp_path)
    fails(
        tl,
        args(tl, tmp_path, str(path), label_columns="labels", train_size=60, valid_size=20, test_size=20),
        "labels holds lists of class numbers, named by LABEL_NAMES (negative,positive) as 0..1, but rows 2, 5, 8, 11, "
        "14 and 29 more (0-based, header not counted) hold [0, 3]",
        "class numbers index LABEL_NAMES from 0: name every class with --label-names a,b,c",
    )
    assert files_under(tmp_path) == before


def test_a_label_column_of_scores_is_one_line_for_a_classifier(tmp_path):
    """TASK classification; under TASK auto such a column is a regression task (tests/test_tasks.py)."""
    df = make_reviews(100).assign(score=lambda d: np.round(d["sentiment"] * 4 + np.linspace(0, 1, 100), 2))
    path = write_csv(df, tmp_path / "scores.csv")
    fails(
        tl,
        args(
            tl,
            tmp_path,
            str(path),
            label_columns="score",
            task="classification",
            train_size=60,
            valid_size=20,
            test_size=20,
        ),
        "scores.csv: score holds numbers that are not whole (",
        "): scores, not classes",
    )


def test_close_allows_what_summation_order_changes_and_no_more():
    """Two runs' metrics as the AVX2 CPU gave them (a loss 1.7e-4 apart) pass; a loss 1% apart fails."""

    def run(loss, world_size, valid_accuracy=0.8):
        return {
            "examples": {"train": 600, "valid": 100, "test": 150},
            "best_epoch": 2,
            "world_size": world_size,
            "devices": ["cpu"] * world_size,
            "test_accuracy": 0.84,
            "test": {"loss": 0.4},
            "epochs": [
                {"epoch": 1, "train_loss": 0.6, "train_accuracy": 0.7, "valid_loss": 0.5, "valid_accuracy": 0.7},
                {
                    "epoch": 2,
                    "train_loss": loss,
                    "train_accuracy": 0.9,
                    "valid_loss": 0.3,
                    "valid_accuracy": valid_accuracy,
                },
            ],
        }

    close(run(0.1470, 1), run(0.1470 * (1 + 1.7e-4), 2))
    close(run(0.1470, 1), run(0.1470, 2, valid_accuracy=0.81))  # one validation review's prediction flipped
    with pytest.raises(AssertionError):
        close(run(0.1470, 1), run(0.1470 * 1.01, 2))
    with pytest.raises(AssertionError):
        close(run(0.1470, 1), run(0.1470, 2, valid_accuracy=0.75))


# ------------------------------------------------------------------------------------- rough edges
def test_a_separate_file_without_a_column_says_to_rename_it_there(tmp_path):
    train = write_csv(make_reviews(300), tmp_path / "train.csv")
    test = write_csv(make_reviews(100, seed=1).rename(columns={"review": "text"}), tmp_path / "test.csv")
    text = fails(
        tl,
        args(tl, tmp_path, str(train), test_url=test),
        "test.csv has no review column",
        "every file needs the training file's columns: rename the column in this file",
    )
    assert "--text-column" not in text


def test_an_empty_test_file_is_named_as_empty(tmp_path):
    train = write_csv(make_reviews(300), tmp_path / "train.csv")
    test = write_csv(make_reviews(10).iloc[:0], tmp_path / "test.csv")
    fails(tl, args(tl, tmp_path, str(train), test_url=test), f"{test} holds no rows, only a header")


def test_a_split_that_does_not_fit_names_only_the_sizes_given(tmp_path):
    train = write_csv(make_reviews(300), tmp_path / "train.csv")
    test = write_csv(make_reviews(100, seed=1), tmp_path / "test.csv")
    text = fails(
        tl,
        args(tl, tmp_path, str(train), test_url=test, train_size=1.0),
        "the split needs 330 rows (TRAIN_SIZE 300 + VALID_SIZE 30) of DATA_URL but the file has 300; lower "
        "--train-size",
    )
    assert "--valid-size" not in text


@pytest.mark.parametrize("url", ["hf://datasets/stanfordnlp", "hf://datasets/stanfordnlp/imdb", "hf://models/x/y/z"])
def test_a_hub_url_without_a_file_is_one_line_and_writes_nothing(tmp_path, url):
    fails(
        tl,
        args(tl, tmp_path, url),
        f"DATA_URL (--data-url) {url} is not a hub dataset file: write it as hf://datasets/OWNER/NAME/PATH",
    )
    assert not (tmp_path / "data").exists()


def test_a_failed_hub_download_in_a_folder_that_exists_leaves_nothing_new(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "hf" / "datasets" / "stanfordnlp" / "imdb"
    (folder / "plain_text").mkdir(parents=True)
    write_parquet(hub_reviews(300, 1), folder / "plain_text" / "train.parquet", ["neg", "pos"])
    before = files_under(tmp_path)

    def download(repo_id, filename, repo_type, revision, local_dir):  # what huggingface_hub leaves when it fails
        lock = local_dir / ".cache" / "huggingface" / "download" / "other" / f"{filename}.lock"
        lock.parent.mkdir(parents=True)
        lock.write_text("")
        (local_dir / "other").mkdir()
        raise OSError("offline")

    monkeypatch.setattr(textclf.data, "hf_hub_download", download)
    fails(
        tl,
        args(
            tl,
            tmp_path,
            "hf://datasets/stanfordnlp/imdb/plain_text/train.parquet",
            text_column="text",
            label_columns="label",
            test_url="hf://datasets/stanfordnlp/imdb/other/test.parquet",
        ),
        "could not download hf://datasets/stanfordnlp/imdb/other/test.parquet (OSError: offline)",
    )
    assert files_under(tmp_path) == before


def test_a_text_column_of_lists_is_refused(tmp_path):
    df = make_reviews(100)
    df["review"] = [text.split() for text in df["review"]]
    path = write_parquet(df, tmp_path / "tokens.parquet")
    fails(
        tl,
        args(tl, tmp_path, str(path), train_size=60, valid_size=20, test_size=20),
        "tokens.parquet: review holds a list or a record, not a text, in rows 0, 1, 2, 3, 4 and 95 more",
    )


def test_an_empty_parquet_input_to_csv_has_its_header(lstm_run, tmp_path):
    source = write_parquet(make_reviews(10).iloc[:0], tmp_path / "empty.parquet")
    predict.main([str(lstm_run), "--input", str(source), "--output", str(tmp_path / "out.csv.gz")])
    assert pd.read_csv(tmp_path / "out.csv.gz").columns.tolist() == [
        "review",
        "sentiment",
        "predicted_label",
        "predicted_score",
    ]


def test_compare_shows_that_runs_were_tested_on_different_data(lstm_run, tmp_path, capsys):
    metrics = json.loads((lstm_run / "metrics.json").read_text())
    other = {
        **metrics,
        "settings": {**metrics["settings"], "TEST_URL": "/data/test.parquet"},
        "examples": {**metrics["examples"], "test": 25_000},
    }
    (tmp_path / "other.json").write_text(json.dumps(other))
    table = compare.table([("run", metrics), ("other", other)])
    assert table.splitlines()[0].endswith("| test data |")
    assert "| train.csv (sentiment), 50 rows after the first 350 |" in table
    assert "| test.parquet (sentiment), 25,000 rows |" in table
    assert "These runs were tested on different data" in table
    assert "test data" not in compare.table([("run", metrics), ("again", metrics)])


def test_a_column_that_changes_type_in_parquet_output_is_one_line(lstm_run, tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "CHUNK", 64)
    reviews = make_reviews(100, seed=5)["review"].tolist()
    records = [{"review": text, "code": i if i < 64 else f"c{i}"} for i, text in enumerate(reviews)]
    source = write_jsonl(records, tmp_path / "in.jsonl")
    fails(
        predict,
        [str(lstm_run), "--input", str(source), "--output", str(tmp_path / "out.parquet")],
        "--output: a column changes its type after the first 64 rows",
    )
    assert not (tmp_path / "out.parquet").exists()
