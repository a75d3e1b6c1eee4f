"""The user's own data: formats, columns, multi-class and multi-label, fractions and shuffling, the Stanford
archive, and a clear error for each kind of bad input. Synthetic data whose labels are decided by words."""

import gzip
import io
import json
import tarfile

import numpy as np
import pandas as pd
import pytest
from conftest import NEGATIVE, POSITIVE, make_reviews, write_csv
from test_reliability import SCRIPTS, distilbert_args, fails, files_under, lstm_args
from transformers import pipeline

import train_distilbert as td
import train_lstm_baseline as tl
from textclf.data import load_reviews, read_reviews, split, targets
from textclf.metrics import scores
from textclf.settings import RecipeError, parse_settings

FILLER = ["the", "movie", "film", "was", "and", "it", "a", "of"]
TOPICS = {"praise": POSITIVE, "complaint": NEGATIVE, "story": ["plot", "actor", "scene", "story"]}
TAGS = {"good": POSITIVE, "bad": NEGATIVE, "plot": ["plot", "story"]}


def make_topics(n, seed=0):
    """Three classes, each named by a word of its own list among filler words."""
    rng = np.random.default_rng(seed)
    topics = rng.choice(sorted(TOPICS), n)
    texts = [" ".join(list(rng.choice(FILLER, rng.integers(3, 12))) + list(rng.choice(TOPICS[t], 2))) for t in topics]
    return pd.DataFrame({"body": texts, "topic": topics})


def make_tags(n, seed=0):
    """Multi-label comments: each tag (0/1, independently) adds one of its words."""
    rng = np.random.default_rng(seed)
    tags = {tag: rng.random(n) < 0.4 for tag in TAGS}
    texts = []
    for i in range(n):
        words = list(rng.choice(FILLER, rng.integers(3, 12)))
        for tag, present in tags.items():
            if present[i]:
                words.insert(rng.integers(0, len(words) + 1), rng.choice(TAGS[tag]))
        texts.append(" ".join(words))
    return pd.DataFrame({"comment_text": texts, **{tag: present.astype(int) for tag, present in tags.items()}})


def write_table(df, path):
    """df as .tsv, .jsonl or .csv, gzipped when the name ends in .gz."""
    name = str(path).removesuffix(".gz")
    text = (
        df.to_json(orient="records", lines=True)
        if name.endswith(".jsonl")
        else df.to_csv(index=False, sep="\t" if name.endswith(".tsv") else ",")
    )
    path.write_bytes(gzip.compress(text.encode()) if str(path).endswith(".gz") else text.encode())
    return path


@pytest.mark.parametrize("name", ["td", "tl"])
def test_three_classes_from_a_tsv_at_a_plain_path(tmp_path, tiny_model, name):
    module = {"td": td, "tl": tl}[name]
    data = write_table(make_topics(1_400, seed=1), tmp_path / "topics.tsv")
    common = {
        "text_column": "body",
        "label_columns": "topic",
        "train_size": 1_000,
        "valid_size": 200,
        "test_size": 200,
        "epochs": 3,
    }
    if module is td:
        metrics = td.main(distilbert_args(tmp_path, str(data), tiny_model, max_length=32, **common))
    else:
        metrics = tl.main(lstm_args(tmp_path, str(data), learning_rate=0.02, **common))
    assert metrics["labels"] == ["complaint", "praise", "story"] and metrics["multi_label"] is False
    assert metrics["test_accuracy"] > 0.8  # chance: 1/3
    test = metrics["test"]
    assert test["accuracy"] == metrics["test_accuracy"] and test["macro_f1"] > 0.75
    matrix = np.array(test["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 200 and np.trace(matrix) / 200 == metrics["test_accuracy"]
    assert set(metrics["valid"]) == {"accuracy", "loss", "macro_f1", "recall", "confusion_matrix"}
    assert not list(tmp_path.glob("data/topics*"))  # a plain path is read where it is, not copied

    texts = ["the movie was superb and wonderful", "an awful and dull film", "the plot and the actor"]
    if module is td:
        classify = pipeline("text-classification", model=str(tmp_path / "out" / "model"))
        assert [p["label"] for p in classify(texts)] == ["praise", "complaint", "story"]
    else:
        assert [label for label, _ in tl.predict(texts, tmp_path / "out")] == ["praise", "complaint", "story"]


@pytest.mark.parametrize("name", ["td", "tl"])
def test_multi_label_from_jsonl_with_shuffle_and_fractions(tmp_path, small_model, name):
    module = {"td": td, "tl": tl}[name]
    data = write_table(make_tags(1_500, seed=2), tmp_path / "comments.jsonl.gz")
    common = {
        "text_column": "comment_text",
        "label_columns": "good,bad,plot",
        "shuffle": "true",
        "train_size": 0.8,
        "valid_size": 0.1,
        "test_size": 0.1,
        "epochs": 3 if module is tl else 6,
    }
    if module is td:
        metrics = td.main(distilbert_args(tmp_path, data.as_uri(), small_model, max_length=32, **common))
    else:
        metrics = tl.main(lstm_args(tmp_path, data.as_uri(), learning_rate=0.02, **common))
    assert metrics["labels"] == ["good", "bad", "plot"] and metrics["multi_label"] is True
    test = metrics["test"]
    assert set(test) == {"accuracy", "loss", "roc_auc", "macro_roc_auc", "micro_f1", "macro_f1"}
    assert all(auc > 0.9 for auc in test["roc_auc"].values()) and test["macro_roc_auc"] > 0.95
    assert test["macro_roc_auc"] == pytest.approx(np.mean(list(test["roc_auc"].values())))
    assert test["micro_f1"] > 0.85 and test["accuracy"] > 0.6  # exact match over 3 labels
    assert all("valid_macro_roc_auc" in record for record in metrics["epochs"])
    best = max(metrics["epochs"], key=lambda record: record["valid_macro_roc_auc"])  # picks the best epoch
    assert metrics["best_epoch"] == best["epoch"]
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["settings"]["TRAIN_SIZE"] == 0.8 and saved["test"] == json.loads(json.dumps(test))

    texts = ["a superb and wonderful plot", "it was dull"]
    if module is td:
        classify = pipeline("text-classification", model=str(tmp_path / "out" / "model"), top_k=None)
        scores = [{p["label"]: p["score"] for p in row} for row in classify(texts)]
        assert set(scores[0]) == {"good", "bad", "plot"}  # every label, each with its own sigmoid score
        assert scores[0]["good"] > 0.5 and scores[0]["plot"] > 0.5 and scores[0]["bad"] < 0.5
        assert scores[1]["bad"] > 0.5 and scores[1]["good"] < 0.5
    else:
        predicted = tl.predict(texts, tmp_path / "out")
        assert [sorted(label for label, _ in row) for row in predicted] == [["good", "plot"], ["bad"]]
        assert all(0.5 < score <= 1 for row in predicted for _, score in row)


def test_fractions_shuffle_and_the_command_line(tmp_path):
    settings, _ = parse_settings(["--train-size", "0.8", "--valid-size=0.1", "--test-size", "10"], td.DEFAULTS)
    assert (settings["TRAIN_SIZE"], settings["VALID_SIZE"], settings["TEST_SIZE"]) == (0.8, 0.1, 10)
    assert isinstance(settings["TEST_SIZE"], int)
    df = pd.DataFrame({"text": [str(i) for i in range(100)], "label": [i % 2 for i in range(100)]})
    train, valid, test = split(df, {"TRAIN_SIZE": 0.8, "VALID_SIZE": 0.1, "TEST_SIZE": 0.1})
    assert (len(train), len(valid), len(test)) == (80, 10, 10) and train["text"].tolist() == df["text"][:80].tolist()
    shuffled = split(df, {"TRAIN_SIZE": 0.8, "VALID_SIZE": 0.1, "TEST_SIZE": 0.1}, shuffle=True, seed=4)
    assert shuffled[0]["text"].tolist() != train["text"].tolist()
    assert sorted(pd.concat(shuffled)["text"], key=int) == df["text"].tolist()  # a permutation of all rows
    sizes = {"TRAIN_SIZE": 0.8, "VALID_SIZE": 0.1, "TEST_SIZE": 0.1}
    assert all(a.equals(b) for a, b in zip(shuffled, split(df, sizes, shuffle=True, seed=4), strict=True))
    assert [len(part) for part in split(df, {"TRAIN_SIZE": 0.5, "VALID_SIZE": 20, "TEST_SIZE": 0.3})] == [50, 20, 30]


def test_integer_labels_take_their_names_from_label_names(tmp_path):
    df = pd.DataFrame({"t": ["a", "b", "c", "d"], "y": [2, 0, 1, 2]})
    settings = {**td.DEFAULTS, "TEXT_COLUMN": "t", "LABEL_COLUMNS": "y", "LABEL_NAMES": "low, mid, high"}
    frame, names = read_reviews(write_csv(df, tmp_path / "d.csv"), None, settings)
    assert names == ["low", "mid", "high"] and frame["label"].tolist() == [2, 0, 1, 2]


def test_scores_give_null_never_nan_for_a_label_without_both_values():
    import torch

    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    logits = torch.tensor([[2.0, -1.0], [-2.0, 1.0], [1.0, -3.0]])
    result = scores(logits, targets, ["a", "b"], 0.5)
    assert result["roc_auc"] == {"a": 1.0, "b": None} and result["macro_roc_auc"] == 1.0
    assert "NaN" not in json.dumps(result) and result["accuracy"] == pytest.approx(2 / 3)
    assert result["loss"] == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(logits, targets).item()
    )  # mean over all entries


def test_the_imdb_file_through_other_columns_and_format_gives_the_same_numbers(tmp_path):
    """The default path (CSV, review/sentiment) and the same rows as JSONL under other column names, integer labels
    named by LABEL_NAMES: the same run, to the last digit."""
    reviews = make_reviews(1_000, seed=9)
    csv = write_csv(reviews, tmp_path / "reviews.csv.gz")
    jsonl = write_table(reviews.rename(columns={"review": "text", "sentiment": "y"}), tmp_path / "reviews.jsonl")
    default = tl.main(lstm_args(tmp_path, csv.as_uri(), out_dir=tmp_path / "a"))
    generic = tl.main(
        lstm_args(
            tmp_path,
            str(jsonl),
            text_column="text",
            label_columns="y",
            label_names="negative,positive",
            out_dir=tmp_path / "b",
        )
    )

    def untimed(metrics):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in metrics["epochs"]]

    assert untimed(default) == untimed(generic)
    for key in ("valid", "test", "labels", "best_epoch", "valid_accuracy", "test_accuracy"):
        assert default[key] == generic[key], key


# ------------------------------------------------------------------------------------- the Stanford archive
def aclimdb_archive(path, per_folder=3, layout="aclImdb"):
    """A tiny archive in the aclImdb_v1 layout, with the extra files the real one holds."""
    with tarfile.open(path, "w:gz") as archive:

        def add(name, text):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))

        add(f"{layout}/README", "readme")
        add(f"{layout}/imdb.vocab", "the\nmovie\n")
        add(f"{layout}/train/unsup/0_0.txt", "unlabelled")
        for half in ("test", "train"):  # the archive's own order is not the rows' order
            for folder, word in (("neg", "awful"), ("pos", "great")):
                for i in range(per_folder):
                    add(
                        f"{layout}/{half}/{folder}/{i}_{7 if folder == 'pos' else 2}.txt",
                        f"{half} {word} review {i}<br />",
                    )
    return path


def test_the_stanford_archive_becomes_a_csv_once(tmp_path, capsys):
    archive = aclimdb_archive(tmp_path / "aclImdb_v1.tar.gz")
    path, frame, names = load_reviews(str(archive), tmp_path / "data", td.DEFAULTS)
    assert path == tmp_path / "data" / "aclImdb_v1.csv.gz" and names == ["negative", "positive"]
    texts = frame["text"].tolist()
    assert (
        len(texts) == 12
        and all(t.startswith("train") for t in texts[:6])
        and all(t.startswith("test") for t in texts[6:])
    )
    assert sorted(texts[:6]) == sorted(f"train {w} review {i}<br />" for w in ("awful", "great") for i in range(3))
    assert all((label == 1) == ("great" in text) for text, label in zip(texts, frame["label"], strict=True))
    assert "unlabelled" not in texts and "writing" in capsys.readouterr().out
    again = load_reviews(str(archive), tmp_path / "data", td.DEFAULTS)  # the CSV is reused, not written again
    assert again[1].equals(frame) and "writing" not in capsys.readouterr().out
    by_url = load_reviews(
        archive.as_uri(), tmp_path / "other", td.DEFAULTS
    )  # downloaded, then converted; the same rows
    assert by_url[1].equals(frame) and by_url[0].read_bytes() == path.read_bytes()


@pytest.mark.parametrize("module", [td, tl], ids=["distilbert", "lstm"])
def test_an_archive_that_is_not_the_aclimdb_layout_is_refused(tmp_path, module):
    archive = aclimdb_archive(tmp_path / "other.tar.gz", layout="reviews")
    args = (distilbert_args if module is td else lstm_args)(tmp_path, archive.as_uri())
    fails(module, args, "is not the Stanford aclImdb archive: no reviews in aclImdb/train/pos/", "nothing was saved")
    assert files_under(tmp_path / "data") == []


def test_a_damaged_archive_is_one_line(tmp_path):
    archive = tmp_path / "aclImdb_v1.tar.gz"
    archive.write_bytes(gzip.compress(b"not a tar archive"))
    with pytest.raises(RecipeError, match=r"aclImdb_v1.tar.gz is not a readable tar archive \(ReadError"):
        load_reviews(str(archive), tmp_path / "data", td.DEFAULTS)


# ------------------------------------------------------------------------------------- bad input
BAD = {
    "missing text column": (
        make_topics(60),
        {"label_columns": "topic"},
        ["has no review column", "found columns ['body', 'topic']", "--text-column"],
    ),
    "missing label column": (
        make_tags(60),
        {"text_column": "comment_text", "label_columns": "good,toxic"},
        ["has no toxic column", "--label-columns"],
    ),
    "multi-label not 0/1": (
        make_tags(60).assign(bad=2),
        {"text_column": "comment_text", "label_columns": "good,bad"},
        ["with several LABEL_COLUMNS each is a 0/1 column, but bad holds '2' in rows 0, 1"],
    ),
    "one class in training": (
        make_topics(60).sort_values("topic"),
        {"text_column": "body", "label_columns": "topic", "train_size": 10, "valid_size": 5, "test_size": 5},
        ["the training split holds only the class 'complaint'", "pass --shuffle true"],
    ),
    "unseen test class": (
        pd.concat([make_topics(60).query("topic != 'story'"), make_topics(60).query("topic == 'story'")]),
        {"text_column": "body", "label_columns": "topic", "train_size": 30, "valid_size": 5, "test_size": 0.2},
        ["the test split holds the class 'story', which the training split never has"],
    ),
    "a multi-label column all 0 in training": (
        make_tags(60).assign(bad=0),
        {"text_column": "comment_text", "label_columns": "good,bad"},
        [
            (
                "the training split has bad = 0 in every row: nothing to learn for "
                "that label; if the file is sorted by label, pass --shuffle true; drop "
                "bad from --label-columns, or give more rows"
            )
        ],
    ),
    "empty text": (
        make_topics(60).assign(body=lambda d: d["body"].where(d.index != 4, " ")),
        {"text_column": "body", "label_columns": "topic"},
        ["empty or missing body in row 4 (0-based"],
    ),
    "fractions over 1": (
        make_topics(60),
        {"text_column": "body", "label_columns": "topic", "train_size": 0.8, "valid_size": 0.2, "test_size": 0.1},
        [
            (
                "the split needs 66 rows (TRAIN_SIZE 48 + VALID_SIZE 12 + TEST_SIZE 6) of DATA_URL but the "
                "file has 60; lower --train-size or --valid-size or --test-size"
            )
        ],
    ),
    "fraction over 1": (
        make_topics(60),
        {"train_size": 1.5},
        ["TRAIN_SIZE (--train-size) is 1.5: a split size is a row count (a whole number) or a fraction"],
    ),
    "rows do not add up": (
        make_topics(60),
        {"text_column": "body", "label_columns": "topic", "train_size": 50, "valid_size": 10, "test_size": 0.1},
        ["the split needs 66 rows", "the file has 60"],
    ),
    "threshold": (make_tags(60), {"threshold": 1.0}, ["THRESHOLD (--threshold) must be between 0 and 1"]),
    "a fraction leaves a split empty": (
        make_topics(60),
        {"text_column": "body", "label_columns": "topic", "train_size": 0.5, "valid_size": 0.01, "test_size": 0.1},
        ["the split fractions (0.5, 0.01, 0.1) of 60 rows leave a split empty"],
    ),
    "no column named": (
        make_topics(60),
        {"text_column": " "},
        ["TEXT_COLUMN (--text-column) and LABEL_COLUMNS (--label-columns) must name columns"],
    ),
}


@pytest.mark.parametrize("case", BAD)
@pytest.mark.parametrize("script_name", SCRIPTS)
def test_bad_own_data_is_one_line_and_writes_nothing(tmp_path, script_name, case):
    module, args = SCRIPTS[script_name]
    df, overrides, messages = BAD[case]
    data = write_csv(df, tmp_path / "mine.csv")
    fails(
        module,
        args(tmp_path, str(data), **{"train_size": 40, "valid_size": 10, "test_size": 10, **overrides}),
        *messages,
    )
    assert files_under(tmp_path / "data") == [] and files_under(tmp_path / "out") == []


def test_predict_and_compare_on_a_multi_label_run(tmp_path, capsys):
    import compare
    import predict

    data = write_table(make_tags(1_000, seed=3), tmp_path / "comments.csv")
    metrics = tl.main(
        lstm_args(
            tmp_path,
            str(data),
            text_column="comment_text",
            label_columns="good,bad,plot",
            learning_rate=0.02,
            epochs=6,
            train_size=600,
            valid_size=200,
            test_size=200,
        )
    )
    assert metrics["test"]["macro_roc_auc"] > 0.9
    from test_board import curves

    assert len(curves(tmp_path / "out")[0]["valid/macro_roc_auc"]) == 6  # on TensorBoard too, each epoch
    capsys.readouterr()
    predict.main([str(tmp_path / "out"), "--input", str(data), "--output", str(tmp_path / "predicted.jsonl")])
    predicted = pd.read_json(tmp_path / "predicted.jsonl", lines=True, dtype=False)
    assert list(predicted.columns)[-4:] == [
        "predicted_labels",
        "predicted_score_good",
        "predicted_score_bad",
        "predicted_score_plot",
    ]
    over = predicted[["predicted_score_good", "predicted_score_bad", "predicted_score_plot"]].to_numpy() > 0.5
    assert predicted["predicted_labels"].tolist() == [
        [n for n, o in zip(["good", "bad", "plot"], row, strict=True) if o] for row in over
    ]
    truth = predicted[["good", "bad", "plot"]].to_numpy().astype(int).astype(bool)  # as written: "0" and "1"
    test_accuracy = json.loads((tmp_path / "out" / "metrics.json").read_text())["test_accuracy"]
    assert (over[800:] == truth[800:]).all(1).mean() == test_accuracy  # exact match, as training scored it

    predict.main([str(tmp_path / "out"), "a superb and wonderful plot", "it was dull and awful"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t")[0] == "good,plot" and lines[1].split("\t")[0] == "bad", lines
    assert lines[0].split("\t")[1].startswith("good=") and lines[0].split("\t")[2] == "a superb and wonderful plot"

    compare.main([str(tmp_path / "out")])
    header, _, row = capsys.readouterr().out.splitlines()
    cells = dict(zip(*([cell.strip() for cell in line.strip("|").split("|")] for line in (header, row)), strict=True))
    assert cells["script"] == "train_lstm_baseline.py" and cells["run"] == "out"
    assert float(cells["test macro ROC AUC"]) == pytest.approx(metrics["test"]["macro_roc_auc"], abs=5e-5)
    assert float(cells["valid macro ROC AUC"]) == pytest.approx(metrics["valid"]["macro_roc_auc"], abs=5e-5)


def test_multi_label_columns_may_be_called_label_or_text(tmp_path):
    df = pd.DataFrame({"body": ["a", "b", "c"], "label": [1, 0, 1], "text": [0, 0, 1]})
    settings = {**td.DEFAULTS, "TEXT_COLUMN": "body", "LABEL_COLUMNS": "label,text"}
    frame, names = read_reviews(write_csv(df, tmp_path / "d.csv"), None, settings)
    assert names == ["label", "text"] and frame["text"].tolist() == ["a", "b", "c"]
    assert targets(frame, names).tolist() == [[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]


def test_the_advice_to_shuffle_is_not_given_to_a_run_that_shuffled(tmp_path):
    data = write_csv(make_tags(60).assign(bad=1), tmp_path / "mine.csv")
    text = fails(
        tl,
        lstm_args(
            tmp_path,
            str(data),
            text_column="comment_text",
            label_columns="good,bad",
            shuffle=True,
            train_size=40,
            valid_size=10,
            test_size=10,
        ),
        "the training split has bad = 1 in every row",
    )
    assert "--shuffle" not in text
