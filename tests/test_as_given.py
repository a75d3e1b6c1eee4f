"""Reliability, round seven: outputs keep what they were given (predict.py's columns, its precision), a list of labels is
a multi-label task, macro-F1 averages the classes present, the adapter card's code runs as written, and each input that
made a traceback or a wrong piece of advice is one line that says what to do."""

import json
import re

import numpy as np
import pandas as pd
import pyarrow
import pyarrow.parquet
import pytest
import torch
from conftest import make_reviews, write_csv
from families import save_family
from sklearn.metrics import f1_score
from sklearn.utils.class_weight import compute_class_weight
from test_reliability import SCRIPTS, fails, files_under
from test_tasks import make_pairs
from transformers import AutoModelForSequenceClassification

import compare
import predict
import train_distilbert as td
import train_lstm_baseline as tl
from textclf.metrics import scores
from textclf.parallel import predict_precision
from textclf.training import class_weights


# ------------------------------------------------------------------------------------------- macro-F1, class weights
def test_macro_f1_averages_the_classes_present_and_class_weights_count_them():
    """Ratings 1..5 named 0..5: class 0 is in neither the truth nor the predictions, and counts in neither."""
    names = [str(k) for k in range(6)]
    truth = torch.tensor([1, 2, 3, 4, 5, 1, 2, 3])
    predicted = torch.tensor([1, 2, 3, 3, 5, 2, 2, 4])
    result = scores(torch.nn.functional.one_hot(predicted, 6).float(), truth, names, 0.5)
    assert result["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))  # over classes 1..5
    assert result["macro_f1"] > f1_score(truth, predicted, labels=range(6), average="macro", zero_division=0)
    train = torch.tensor([1] * 6 + [2] * 2)
    expected = compute_class_weight("balanced", classes=np.array([1, 2]), y=train.numpy())
    assert class_weights(train, 3, "balanced").tolist() == pytest.approx([0.0, *expected.tolist()])


# ------------------------------------------------------------------------------------------------- predict.py
def test_predict_precision_auto_is_the_runs_own_where_the_device_computes_it():
    assert predict_precision("auto", "fp32", "bf16") == ("fp32", "the run trained in fp32")
    assert predict_precision("auto", "bf16", "bf16") == ("bf16", "the run trained in bf16")
    assert predict_precision("auto", "bf16", "fp32")[0] == "fp32"  # emulated here: fp32 keeps every digit
    assert predict_precision("auto", "fp16", "bf16")[0] == "fp32"
    assert predict_precision("auto", None, "bf16")[0] == "bf16"  # older runs: PRECISION=auto's choice
    assert predict_precision("bf16", "fp32", "fp32") == ("bf16", "--precision")


def test_predict_uses_the_precision_the_run_trained_in(tmp_path, tiny_model, monkeypatch, capsys):
    """A run trained in fp32, predicted where bf16 is native: fp32, as its test figures were computed."""
    csv = write_csv(make_reviews(400, seed=5), tmp_path / "reviews.csv")
    settings = {"train_size": 200, "valid_size": 100, "test_size": 100, "epochs": 1, "precision": "fp32"}
    td.main(SCRIPTS["distilbert"][1](tmp_path, csv, tiny_model, tensorboard=False, **settings))
    monkeypatch.setattr(predict, "auto_precision", lambda device: ("bf16", "native bf16"))
    assert predict.Run(tmp_path / "out", torch.device("cpu")).precision == "fp32"
    predict.main([str(tmp_path / "out"), "a great film"])
    assert "precision: fp32 (the run trained in fp32)" in capsys.readouterr().err
    assert predict.Run(tmp_path / "out", torch.device("cpu"), "bf16").precision == "bf16"  # forced


class Recorder:
    """A stand-in for predict.Run that records the texts it is given: what predict.py reads, without a model."""

    labels, threshold, regression = ["negative", "positive"], None, False

    def __init__(self):
        self.seen = []

    def logits(self, texts, batch_size, pairs=None):
        self.seen.append((texts, pairs))
        return torch.zeros(len(texts), 2)


def test_predict_writes_every_column_as_it_was_and_reads_both_texts_as_written(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("id,price,first,second,note\n007,1.50,A fine film.,007,\n010,2.00,Dull.,1e3,NA\n")
    recorder = Recorder()
    chunks = predict.read_chunks([], str(source), ["first", "second"])
    output = tmp_path / "out.csv"
    frames = []
    predict.predict(recorder, chunks, ["first", "second"], 8, lambda frame, first: frames.append(frame))
    assert recorder.seen == [(["A fine film.", "Dull."], ["007", "1e3"])]
    pd.concat(frames).to_csv(output, index=False)
    written = output.read_text().splitlines()
    assert written[1].startswith("007,1.50,A fine film.,007,,negative,")
    assert written[2].startswith("010,2.00,Dull.,1e3,NA,negative,")


def test_an_empty_second_text_names_its_column(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("first,second\nA fine film.,A good one.\nDull.,\n")
    chunks = predict.read_chunks([], str(source), ["first", "second"])
    with pytest.raises(predict.RecipeError, match="empty text in column 'second', row 1"):
        predict.predict(Recorder(), chunks, ["first", "second"], 8, lambda frame, first: None)


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lstm")
    csv = write_csv(make_reviews(1_000), tmp / "reviews.csv")
    tl.main(SCRIPTS["lstm"][1](tmp, csv.as_uri(), epochs=1, tensorboard=False))
    return tmp / "out"


@pytest.mark.parametrize("part", ["model.pt", "."])
def test_predict_and_compare_pointed_into_a_run_name_the_run_folder(lstm_run, part, capsys):
    if part == ".":  # a transformer run's model/ folder: made here as an empty folder beside a finished run
        (lstm_run / "model").mkdir(exist_ok=True)
        part = "model"
    for tool in (predict, compare):
        with pytest.raises(SystemExit) as exit:
            tool.main([str(lstm_run / part), *(["a text"] if tool is predict else [])])
        assert str(exit.value.code) == (
            f"error: {lstm_run / part} is a part of the run in {lstm_run}; {tool.__name__}.py takes the run folder "
            f"(the OUT_DIR, which holds metrics.json): {tool.__name__}.py {lstm_run}"
        )
    (lstm_run / "model").rmdir() if (lstm_run / "model").is_dir() else None


# ------------------------------------------------------------------------------------- a list of labels: multi-label
TOPICS = ["negative", "positive", "long"]


def topics(reviews):
    """Each review's list of topics: its sentiment, and long where it has over 20 words."""
    return [
        [TOPICS[label]] + ["long"] * (len(text.split()) > 20)
        for text, label in zip(reviews["review"], reviews["sentiment"], strict=True)
    ]


def write_jsonl(frame, path):
    path.write_text("".join(json.dumps(row) + "\n" for row in frame.to_dict(orient="records")))
    return path


def write_hub_parquet(frame, path, column, names):
    """A Parquet file as the hub's datasets write it: the label column a list of class numbers, its Sequence(ClassLabel)
    names in the schema's huggingface metadata."""
    features = {
        "review": {"dtype": "string", "_type": "Value"},
        column: {"feature": {"names": names, "_type": "ClassLabel"}, "_type": "Sequence"},
    }
    table = pyarrow.Table.from_pandas(frame, preserve_index=False)
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    pyarrow.parquet.write_table(table.replace_schema_metadata({**table.schema.metadata, **meta}), path)
    return path


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_column_of_label_lists_is_a_multi_label_task(tmp_path, tiny_model, name):
    """JSONL lists of names, and a test file that never has one of them: its columns are matched by name."""
    module, args = SCRIPTS[name]
    reviews = make_reviews(1_000, seed=4)
    frame = pd.DataFrame({"review": reviews["review"], "topics": topics(reviews)})
    train = write_jsonl(frame.iloc[:800], tmp_path / "train.jsonl")
    test = frame.iloc[800:]
    test = test[[len(t) == 1 for t in test["topics"]]]  # no long review: the file's names are negative, positive
    test_file = write_jsonl(test, tmp_path / "test.jsonl")
    extra = {"model": tiny_model, "learning_rate": 5e-3} if module is td else {"epochs": 4}
    metrics = module.main(
        args(
            tmp_path,
            train,
            label_columns="topics",
            test_url=test_file,
            train_size=600,
            valid_size=200,
            test_size=len(test),
            **extra,
        )
    )
    assert metrics["multi_label"] and metrics["task"] == "multi_label"
    assert metrics["labels"] == sorted(TOPICS) and metrics["examples"]["test"] == len(test)
    assert metrics["test"]["roc_auc"]["long"] is None  # never on in the test file: its AUC is undefined
    assert metrics["test"]["roc_auc"]["positive"] > 0.7
    predict.main([str(tmp_path / "out"), "--input", str(test_file), "--output", str(tmp_path / "p.jsonl")])
    predicted = pd.read_json(tmp_path / "p.jsonl", lines=True)
    assert list(predicted.columns)[:2] == ["review", "topics"] and "predicted_score_long" in predicted
    truth = [sorted(t) for t in test["topics"]]
    same = [sorted(p) == t for p, t in zip(predicted["predicted_labels"], truth, strict=True)]
    assert np.mean(same) == pytest.approx(metrics["test_accuracy"])


def test_a_hub_parquet_list_of_classlabels_takes_its_names_from_the_metadata(tmp_path):
    reviews = make_reviews(1_000, seed=4)
    numbers = [[TOPICS.index(t) for t in row] for row in topics(reviews)]
    frame = pd.DataFrame({"review": reviews["review"], "labels": numbers})
    data = write_hub_parquet(frame, tmp_path / "train.parquet", "labels", TOPICS)
    metrics = tl.main(SCRIPTS["lstm"][1](tmp_path, data, label_columns="labels", epochs=4, tensorboard=False))
    assert metrics["multi_label"] and metrics["labels"] == TOPICS
    assert metrics["test"]["macro_roc_auc"] > 0.7
    assert tl.load_model(tmp_path / "out")[0].threshold == 0.5


def test_text_lists_of_class_numbers_in_a_csv_are_named_by_label_names(tmp_path):
    reviews = make_reviews(1_000, seed=4)
    frame = pd.DataFrame(
        {"review": reviews["review"], "labels": [str([TOPICS.index(t) for t in row]) for row in topics(reviews)]}
    )
    csv = write_csv(frame, tmp_path / "train.csv")
    args = SCRIPTS["lstm"][1](tmp_path, csv, label_columns="labels", label_names="neg,pos,long", epochs=1)
    assert tl.main(args)["labels"] == ["neg", "pos", "long"]
    before = files_under(tmp_path)
    fails(
        tl,
        SCRIPTS["lstm"][1](tmp_path, csv, label_columns="labels", out_dir=tmp_path / "again"),
        "labels holds lists of class numbers, named by LABEL_NAMES (negative,positive) as 0..1",
        "class numbers index LABEL_NAMES from 0: name every class with --label-names a,b,c",
    )
    assert files_under(tmp_path) == before


def test_lists_as_pandas_writes_them_read_as_lists_and_predictions_round_trip(tmp_path):
    """DataFrame.to_csv writes a list as Python's repr (['joy', 'anger']): read as a list, as JSON's is. predict.py's
    output of a JSONL file of lists, written as CSV (the input's lists and its predicted_labels), trains again as the
    same multi-label task."""
    reviews = make_reviews(1_000, seed=4)
    frame = pd.DataFrame({"review": reviews["review"], "topics": topics(reviews)})
    csv = tmp_path / "repr.csv"
    frame.to_csv(csv, index=False)  # "['positive', 'long']"
    assert pd.read_csv(csv)["topics"].iloc[0].startswith("['")
    args = SCRIPTS["lstm"][1]
    metrics = tl.main(args(tmp_path, csv, label_columns="topics", epochs=4, out_dir=tmp_path / "repr"))
    assert metrics["multi_label"] and metrics["labels"] == sorted(TOPICS)
    assert metrics["test"]["macro_roc_auc"] > 0.7

    jsonl = write_jsonl(frame, tmp_path / "lists.jsonl")
    predict.main([str(tmp_path / "repr"), "--input", str(jsonl), "--output", str(tmp_path / "predicted.csv")])
    written = pd.read_csv(tmp_path / "predicted.csv")
    assert written["topics"].iloc[0] == json.dumps(frame["topics"].iloc[0])  # JSON text, not Python's repr
    for column in ("topics", "predicted_labels"):
        again = tl.main(
            args(tmp_path, tmp_path / "predicted.csv", label_columns=column, epochs=1, out_dir=tmp_path / column)
        )
        assert again["multi_label"] and set(again["labels"]) <= set(TOPICS), column
    predict.main([str(tmp_path / "repr"), "--input", str(jsonl), "--output", str(tmp_path / "predicted.parquet")])
    parquet = pd.read_parquet(tmp_path / "predicted.parquet")["predicted_labels"]  # a list<string> column
    assert all(set(labels) <= set(TOPICS) for labels in parquet) and any(len(labels) == 2 for labels in parquet)


@pytest.mark.parametrize(
    ("lists", "found"),
    [
        ([[0], [1, [2]]], "lists inside a list"),
        ([[0.0], [1.5]], "numbers with a decimal point"),
        ([[True], [False]], "true/false values"),
    ],
)
def test_lists_of_anything_but_class_numbers_or_names_are_one_line(tmp_path, lists, found):
    reviews = make_reviews(100, seed=4)
    frame = pd.DataFrame({"review": reviews["review"], "labels": lists * 50})
    jsonl = write_jsonl(frame, tmp_path / "odd.jsonl")
    before = files_under(tmp_path)
    fails(
        tl,
        SCRIPTS["lstm"][1](tmp_path, jsonl, label_columns="labels", train_size=60, valid_size=20, test_size=20),
        f"labels holds lists of classes with {found} in it",
        "(0-based, header not counted)",
        "a list of labels holds class numbers ([0, 3]) or class names",
    )
    assert files_under(tmp_path) == before


def test_a_class_in_no_rows_list_says_so_for_a_list_column(tmp_path):
    reviews = make_reviews(1_000, seed=4)
    frame = pd.DataFrame({"review": reviews["review"], "labels": [[int(s)] for s in reviews["sentiment"]]})
    jsonl = write_jsonl(frame, tmp_path / "lists.jsonl")
    text = fails(
        tl,
        SCRIPTS["lstm"][1](tmp_path, jsonl, label_columns="labels", label_names="negative,positive,long"),
        "the training split has the class 'long' in no row's list of labels",
        "or leave it out of --label-names",
    )
    assert "--label-columns" not in text


def test_joined_labels_quote_a_name_that_holds_a_comma():
    assert predict.joined(["a, b", "c"]) == '"a, b",c'
    assert predict.joined([]) == "-" and predict.joined(["joy", "anger"]) == "joy,anger"


# ----------------------------------------------------------------------------------------- one line each
def test_whole_number_ratings_beyond_the_names_say_how_integers_are_named(tmp_path):
    reviews = make_reviews(1_000)
    reviews["stars"] = 1 + reviews["sentiment"] * 3 + np.arange(1_000) % 2  # 1, 2, 4, 5
    csv = write_csv(reviews, tmp_path / "r.csv")
    fails(
        tl,
        SCRIPTS["lstm"][1](tmp_path, csv, label_columns="stars"),
        "integer labels index LABEL_NAMES from 0, so name every class from 0 to 5 with --label-names a,b,c",
        "pass --task regression",
    )


def test_scores_beyond_float32_are_one_line(tmp_path):
    reviews = make_reviews(1_000)
    reviews["score"] = np.where(reviews["sentiment"] == 1, "1e39", "2.5")
    csv = write_csv(reviews, tmp_path / "r.csv")
    fails(
        tl,
        SCRIPTS["lstm"][1](tmp_path, csv, label_columns="score"),
        "score holds '1e39' in rows",
        "beyond float32's range",
        "rescale the scores",
    )
    assert files_under(tmp_path) == ["r.csv"] or "out" not in files_under(tmp_path)


def test_squared_errors_that_overflow_blame_the_scores_not_the_learning_rate(tmp_path):
    reviews = make_reviews(1_000)
    reviews["score"] = reviews["sentiment"] * 4e19 + np.arange(1_000) * 1e15
    csv = write_csv(reviews, tmp_path / "r.csv")
    text = fails(
        tl,
        SCRIPTS["lstm"][1](tmp_path, csv, label_columns="score", task="regression", log_every=1),
        "the scores are too large for their squared errors",
        "rescale them (divide score by a power of ten, e.g. 1e17)",
    )
    assert "lower --learning-rate" not in text


def test_a_pair_run_needs_a_vocabulary_with_room_for_words(tmp_path):
    csv = write_csv(make_pairs(300), tmp_path / "pairs.csv")
    args = SCRIPTS["lstm"][1](tmp_path, csv, text_column="sentence1,sentence2", label_columns="judgment", vocab_size=3)
    fails(
        tl,
        args,
        "VOCAB_SIZE (--vocab-size) must leave room for words beside the 3 special tokens (<pad>, <unk>, <sep>): "
        "at least 4, got 3",
    )


def test_a_lora_rank_as_wide_as_the_layers_is_refused(tmp_path, tiny_model):
    csv = write_csv(make_reviews(1_000), tmp_path / "r.csv")
    fails(
        td,
        SCRIPTS["distilbert"][1](tmp_path, csv, tiny_model, lora_rank=32),
        "LORA_RANK (--lora-rank) 32 is at least the width of the narrowest layer it adapts in "
        "DistilBertForSequenceClassification (32)",
    )
    assert not (tmp_path / "out" / "adapter").exists()


def test_the_lstm_predict_refuses_a_plain_string_for_a_pair_model(tmp_path):
    csv = write_csv(make_pairs(400), tmp_path / "pairs.csv")
    settings = {"text_column": "sentence1,sentence2", "label_columns": "judgment", "epochs": 1, "train_size": 200}
    tl.main(SCRIPTS["lstm"][1](tmp_path, csv, valid_size=100, test_size=100, **settings))
    with pytest.raises(ValueError, match=r"classifies sentence pairs: give each as a \(text, pair\) tuple"):
        tl.predict(["great film"], tmp_path / "out")
    assert len(tl.predict([("great film", "a dull plot")], tmp_path / "out")) == 1


# ------------------------------------------------------------------------------------------------ cards
def test_the_adapter_cards_code_runs_as_written_on_a_padded_batch(tmp_path):
    """GPT-2 has no pad token, and the base here has a head of 2 labels where the run has 3: the card's code says both,
    and its logits on a padded batch are model/'s."""
    base = save_family("gpt2", tmp_path / "gpt2")
    reviews = make_reviews(600, seed=2)
    reviews["kind"] = np.where(
        reviews["review"].str.len() > 120, "long", reviews["sentiment"].map({0: "neg", 1: "pos"})
    )
    csv = write_csv(reviews, tmp_path / "r.csv")
    settings = {
        "label_columns": "kind",
        "lora_rank": 4,
        "epochs": 1,
        "train_size": 300,
        "valid_size": 150,
        "test_size": 150,
    }
    # fp32: the card's code loads the model as a user does (fp32), and its logits are compared with fp32 ones; a run
    # in bf16 (PRECISION auto on a CPU with AVX512-BF16) would hold a bf16 base
    td.main(
        SCRIPTS["distilbert"][1](
            tmp_path, csv, base, learning_rate=1e-2, tensorboard=False, precision="fp32", **settings
        )
    )
    card = (tmp_path / "out" / "adapter" / "README.md").read_text()
    assert "pad_token_id=0" in card and "ignore_mismatched_sizes=True" in card
    assert f"The base model is the local folder `{base}`" in card
    code = re.search(r"```python\n(.*?)```", card, re.DOTALL).group(1)
    namespace = {}
    exec(code, namespace)  # noqa: S102 (the card's own code, which this run wrote, run as a user copies it)
    assert namespace["batch"]["attention_mask"].min() == 0  # the batch is padded
    whole = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "model").eval()
    with torch.no_grad():
        expected = whole(**namespace["batch"]).logits
    torch.testing.assert_close(namespace["logits"].detach(), expected, atol=1e-5, rtol=1e-4)
    merged_card = (tmp_path / "out" / "model" / "README.md").read_text()
    for setting in ("LORA_RANK", "LORA_ALPHA", "LORA_DROPOUT", "CLASS_WEIGHTS", "TASK"):
        assert f"| `{setting}` |" in merged_card, setting


def test_a_pair_runs_card_shows_a_pair_command_and_longest_first(tmp_path):
    csv = write_csv(make_pairs(400), tmp_path / "pairs.csv")
    bert = save_family("bert", tmp_path / "bert")
    settings = {"text_column": "sentence1,sentence2", "label_columns": "judgment", "epochs": 1}
    sizes = {"train_size": 200, "valid_size": 100, "test_size": 100}
    td.main(SCRIPTS["distilbert"][1](tmp_path, csv, bert, tensorboard=False, **settings, **sizes))
    card = (tmp_path / "out" / "model" / "README.md").read_text()
    assert "`longest_first`" in card and "head+tail" not in card
    assert (
        f"printf 'A man is playing a guitar.\\tA person plays music.\\n' | python predict.py {tmp_path / 'out'} -"
        in card
    )


# ------------------------------------------------------------------------------------------------ compare.py
def test_compare_keeps_its_loss_label_whole_and_tells_label_columns_apart(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    epochs = [{"epoch": 1, "train_loss": 1.0, "valid_loss": 1.1, "train_rmse": 1.0, "valid_pearson": 0.5, "seconds": 1}]
    runs = [
        (
            name,
            {
                "settings": {"DATA_URL": "SICK.txt", "LABEL_COLUMNS": column, "EPOCHS": 1},
                "examples": {"train": 10, "valid": 5, "test": 5},
                "epochs": epochs,
                "task": task,
                "best_epoch": 1,
            },
        )
        for name, column, task in (("scores", "relatedness", "regression"), ("classes", "entailment", "single_label"))
    ]
    table = compare.table(runs)
    assert "SICK.txt (relatedness), 5 rows after the first 15" in table
    assert "SICK.txt (entailment), 5 rows after the first 15" in table
    figure = compare.figure_of(runs)
    figure.canvas.draw()
    label = figure.axes[0].yaxis.label
    box = label.get_window_extent(figure.canvas.get_renderer())
    assert box.x0 >= 0 and box.y0 >= 0 and box.y1 <= figure.bbox.height, (box, figure.bbox)
