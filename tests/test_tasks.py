"""Every task shape in both scripts: sentence pairs (the tokenizer's pair template and segment ids; <sep> for the
LSTM), regression scores (one output, squared error, Pearson picks the epoch) and class weights, through training,
resume, torchrun, predict.py, pipeline(), compare.py and the model card; and a clear line for each kind of bad input."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cli, make_reviews, write_csv
from families import save_family
from sklearn.utils.class_weight import compute_class_weight
from test_distributed import close, torchrun
from test_reliability import ROOT, fails, files_under
from test_training import comparable, interrupt_at
from transformers import AutoTokenizer, pipeline

import compare
import predict
import train_distilbert as td
import train_lstm_baseline as tl
from textclf.metrics import batch_loss, scores
from textclf.training import class_weights


def make_pairs(n, seed=0):
    """Pairs of reviews: relatedness a score of both sentiments (3 x the first's + the second's + noise, so the two
    texts count differently), and judgment a class of the first's sentiment, the second's breaking ties."""
    first, second = make_reviews(n, seed=seed), make_reviews(n, seed=seed + 100)
    noise = np.random.default_rng(seed).normal(0, 0.1, n)
    judgment = np.where(
        first["sentiment"] == 1, "entailment", np.where(second["sentiment"] == 1, "neutral", "contradiction")
    )
    return pd.DataFrame(
        {
            "sentence1": first["review"],
            "sentence2": second["review"],
            "relatedness": np.round(1 + 3 * first["sentiment"] + second["sentiment"] + noise, 3),
            "judgment": judgment,
        }
    )


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A tiny random BERT: its tokenizer returns token_type_ids, as bert-base and MiniLM's do."""
    return save_family("bert", tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory):
    return write_csv(make_pairs(900, seed=1), tmp_path_factory.mktemp("pairs") / "pairs.csv")


SIZES = {"train_size": 600, "valid_size": 150, "test_size": 150}


def quick(module, tmp_path, data, model=None, **settings):
    """A quick run of module on data with the sizes above."""
    base = {
        "data_url": data,
        "data_dir": tmp_path / "data",
        "out_dir": tmp_path / "out",
        "epochs": 4,
        **SIZES,
        "text_column": "sentence1,sentence2",
    }
    if module is td:
        base.update(model_name=model, max_length=64, learning_rate=3e-3, precision="fp32")
    else:
        base.update(vocab_size=100, embedding_dim=16, hidden_dim=32, batch_size=32, learning_rate=0.02)
    return cli(**{**base, **settings})


# ------------------------------------------------------------------------------------- pairs
def test_the_tokenize_bar_counts_texts(tiny_bert, capsys):
    """3,350 texts in chunks of 2,000: the bar ends at 3350/3350 (it counted chunks x 2,000: 4000/4000)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    td.tokenize(["a great film"] * 3_350, tokenizer, 16)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tokenize")]
    assert lines[-1].startswith("tokenize: 3350/3350 (100%)"), lines


def test_a_pair_is_encoded_by_the_tokenizers_own_pair_template(tiny_bert):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    first, second = "a great film", "the plot was dull and the actor was awful"
    ids, offsets, types = td.tokenize([first], tokenizer, 64, pairs=[second])
    expected = tokenizer(first, second)
    assert ids.tolist() == expected["input_ids"] and types.tolist() == expected["token_type_ids"]
    assert set(types.tolist()) == {0, 1}  # [CLS] a [SEP]: 0, b [SEP]: 1
    # over MAX_LENGTH, the longer text is cut first, as the tokenizer's longest_first does
    ids, _, types = td.tokenize([first], tokenizer, 10, pairs=[second])
    assert ids.tolist() == tokenizer(first, second, truncation="longest_first", max_length=10)["input_ids"]
    assert len(ids) == 10 and tokenizer.decode(ids.tolist()).count("[SEP]") == 2
    # a model without segment ids gets none
    distilbert = AutoTokenizer.from_pretrained(save_family("distilbert", tiny_bert.parent / "distilbert"))
    assert td.tokenize([first], distilbert, 64, pairs=[second])[2] is None
    ids, offsets, types = td.tokenize([first], tokenizer, 64, pairs=[second])
    batch = td.collate([0], ids, offsets, torch.zeros(1), 0, types=types)
    assert set(td.model_inputs(batch)) == {"input_ids", "attention_mask", "token_type_ids"}


@pytest.mark.parametrize(
    "family, template",
    [("bert", True), ("roberta", True), ("deberta-v2", True), ("modernbert", True), ("mpnet", True), ("gpt2", False)],
)
def test_which_tokenizers_have_a_pair_template(tmp_path, family, template):
    assert td.has_pair_template(AutoTokenizer.from_pretrained(save_family(family, tmp_path / family))) is template


def test_a_pair_task_with_a_model_without_a_pair_template_is_one_line(tmp_path, pairs_csv):
    gpt2 = save_family("gpt2", tmp_path / "gpt2")
    fails(
        td,
        quick(td, tmp_path, pairs_csv, gpt2, label_columns="judgment"),
        f"the tokenizer of {gpt2} has no pair template: it would join the two texts of a pair with nothing between "
        "them",
    )


def test_bert_learns_pairs_and_predict_and_pipeline_agree(tmp_path, tiny_bert, pairs_csv):
    metrics = td.main(quick(td, tmp_path, pairs_csv, tiny_bert, label_columns="judgment", epochs=5))
    assert metrics["labels"] == ["contradiction", "entailment", "neutral"] and metrics["test_accuracy"] > 0.6
    card = (tmp_path / "out" / "model" / "README.md").read_text()
    assert "of sentence pairs" in card and '"text_pair": ' in card
    test = pd.read_csv(pairs_csv).iloc[750:]
    run = predict.Run(tmp_path / "out", torch.device("cpu"), "fp32")
    logits = run.logits(test["sentence1"].tolist(), 64, test["sentence2"].tolist())
    truth = test["judgment"].map({name: i for i, name in enumerate(metrics["labels"])})
    assert (logits.argmax(-1).numpy() == truth.to_numpy()).mean() == pytest.approx(metrics["test_accuracy"])
    classify = pipeline("text-classification", model=str(tmp_path / "out" / "model"))
    first = classify({"text": test["sentence1"].iloc[0], "text_pair": test["sentence2"].iloc[0]})
    assert first["label"] == metrics["labels"][int(logits[0].argmax())]
    assert first["score"] == pytest.approx(logits[0].softmax(-1).max().item(), abs=1e-5)

    # predict.py: two columns of a file, and a tab between two texts
    out = tmp_path / "scored.csv"
    predict.main(
        [str(tmp_path / "out"), "--input", str(pairs_csv), "--text-column", "sentence1,sentence2", "--output", str(out)]
    )
    scored = pd.read_csv(out).iloc[750:]
    assert (scored["predicted_label"] == scored["judgment"]).mean() == pytest.approx(metrics["test_accuracy"])
    done = subprocess.run(
        [sys.executable, "predict.py", str(tmp_path / "out"), "-"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        input=f"{test['sentence1'].iloc[0]}\t{test['sentence2'].iloc[0]}\n",
    )
    assert done.returncode == 0 and done.stdout.split("\t")[0] == first["label"], done.stderr[-500:]
    fails(
        predict,
        [str(tmp_path / "out"), "a text without its pair"],
        "the run classifies sentence pairs, but text 0 (0-based) holds no tab",
    )
    fails(
        predict,
        [str(tmp_path / "out"), "--input", str(pairs_csv), "--text-column", "sentence1"],
        "--text-column names 1 column, but the run reads a pair of texts: name two (a,b)",
    )


def test_the_lstm_reads_a_pair_with_a_separator_token(tmp_path, pairs_csv):
    vocab = tl.build_vocab(["great film", "dull plot"], 10, pairs=True)
    assert vocab[:3] == ["<pad>", "<unk>", "<sep>"]
    ids, _ = tl.encode(["great film"], vocab, 100, pairs=["dull plot"])
    assert [vocab[i] for i in ids.tolist()] == ["great", "film", "<sep>", "dull", "plot"]
    ids, _ = tl.encode(["great film and plot"], vocab, 4, pairs=["dull"])  # the longer text cut first
    assert [vocab[i] for i in ids.tolist()] == ["great", "film", "<sep>", "dull"]
    metrics = tl.main(quick(tl, tmp_path, pairs_csv, label_columns="judgment", epochs=6))
    assert metrics["test_accuracy"] > 0.6
    predicted = tl.predict([("a great film", "a dull film")], tmp_path / "out")
    assert predicted[0][0] in metrics["labels"]


def test_a_pair_run_resumes_exactly_and_reuses_its_token_cache(tmp_path, tiny_bert, pairs_csv, monkeypatch):
    settings = {"label_columns": "judgment", "epochs": 2}
    straight = td.main(quick(td, tmp_path, pairs_csv, tiny_bert, out_dir=tmp_path / "straight", **settings))
    calls = []
    real = td.tokenize
    monkeypatch.setattr(td, "tokenize", lambda *a, **k: calls.append(1) or real(*a, **k))
    interrupt_at(td, monkeypatch, "batch_loss", 30)
    with pytest.raises(SystemExit):
        td.main(quick(td, tmp_path, pairs_csv, tiny_bert, out_dir=tmp_path / "resumed", **settings))
    resumed = td.main([f"--out-dir={tmp_path / 'resumed'}", "--resume"])
    assert calls == []  # the pairs' token ids came from the cache the first run wrote
    assert comparable(resumed) == pytest.approx(comparable(straight), rel=1e-5)


def test_a_pair_run_under_torchrun_matches_one_process(tmp_path, pairs_csv):
    settings = {"label_columns": "relatedness", "epochs": 2, "batch_size": 16}
    single = tl.main(quick(tl, tmp_path, pairs_csv, out_dir=tmp_path / "one", **settings))
    done = torchrun("train_lstm_baseline.py", quick(tl, tmp_path, pairs_csv, out_dir=tmp_path / "ddp", **settings))
    assert done.returncode == 0, done.stderr[-3000:]
    parallel = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    close(single, parallel)
    assert parallel["test"]["pearson"] == pytest.approx(single["test"]["pearson"], abs=1e-2)


# ------------------------------------------------------------------------------------- regression
@pytest.mark.parametrize("module", [td, tl], ids=["distilbert", "lstm"])
def test_a_column_of_scores_is_a_regression_task(tmp_path, tiny_bert, pairs_csv, module):
    epochs = 5 if module is td else 12  # the LSTM learns the first text's part of the score, behind <sep>, slower
    # the LSTM with its gradient clipped: without it, its validation Pearson jumps from epoch to epoch (0.60, 0.41,
    # 0.18) by how each CPU's kernels round; clipped, it rises to 0.99 on AVX2 and AVX-512 alike
    steady = {"grad_clip": 1.0} if module is tl else {}
    metrics = module.main(
        quick(module, tmp_path, pairs_csv, tiny_bert, label_columns="relatedness", epochs=epochs, **steady)
    )
    assert metrics["task"] == "regression" and metrics["labels"] == ["relatedness"]
    assert metrics["test"]["pearson"] > 0.7 and set(metrics["test"]) == {"loss", "rmse", "pearson", "spearman"}
    assert metrics["test_accuracy"] is None and metrics["test"]["rmse"] == pytest.approx(metrics["test"]["loss"] ** 0.5)
    best = max(metrics["epochs"], key=lambda e: e["valid_pearson"])
    assert metrics["best_epoch"] == best["epoch"]  # Pearson picks the epoch
    test = pd.read_csv(pairs_csv).iloc[750:]
    run = predict.Run(tmp_path / "out", torch.device("cpu"), "fp32")
    predicted = run.logits(test["sentence1"].tolist(), 64, test["sentence2"].tolist())[:, 0].numpy()
    assert np.corrcoef(predicted, test["relatedness"])[0, 1] == pytest.approx(metrics["test"]["pearson"], abs=1e-4)
    row = compare.table([("out", metrics)]).splitlines()[-1]
    assert f"| {metrics['test']['pearson']:.4f} |" in row and "test Pearson" in compare.table([("out", metrics)])
    if module is td:
        config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
        assert config["problem_type"] == "regression" and config["id2label"] == {"0": "relatedness"}
        classify = pipeline("text-classification", model=str(tmp_path / "out" / "model"))
        raw = classify({"text": test["sentence1"].iloc[0], "text_pair": test["sentence2"].iloc[0]})
        assert raw["score"] == pytest.approx(float(predicted[0]), abs=1e-4)  # the score itself, no sigmoid
        card = (tmp_path / "out" / "model" / "README.md").read_text()
        assert f"Pearson correlation {metrics['test']['pearson']:.4f}" in card and "regression" in card
    out = tmp_path / "scored.jsonl"
    predict.main([str(tmp_path / "out"), "--input", str(pairs_csv), "--output", str(out)])
    assert pd.read_json(out, lines=True).columns[-1] == "predicted_score"


def test_task_forces_either_reading(tmp_path):
    """Whole-number ratings (0 to 4 stars) are classes unless TASK says regression."""
    reviews = make_reviews(400, seed=3)
    stars = reviews.assign(stars=reviews["sentiment"] * 3 + np.arange(400) % 2)
    data = write_csv(stars, tmp_path / "stars.csv")
    settings = {
        "text_column": "review",
        "label_columns": "stars",
        "epochs": 1,
        "train_size": 300,
        "valid_size": 50,
        "test_size": 50,
    }
    classes = tl.main(quick(tl, tmp_path, data, out_dir=tmp_path / "classes", label_names="0,1,2,3,4", **settings))
    assert classes["task"] == "single_label" and classes["labels"] == ["0", "1", "2", "3", "4"]
    scored = tl.main(quick(tl, tmp_path, data, out_dir=tmp_path / "scores", task="regression", **settings))
    assert scored["task"] == "regression" and "pearson" in scored["test"]
    fails(
        tl,
        quick(
            tl,
            tmp_path,
            write_csv(stars.assign(stars=stars["stars"] + 0.5), tmp_path / "half.csv"),
            task="classification",
            **settings,
        ),
        "stars holds numbers that are not whole ('3.5' in rows",
        "or pass --task regression to predict the score",
    )


@pytest.mark.parametrize(
    "value, message",
    [
        ("NaN", "relatedness is a regression target (TASK) but holds 'NaN' in row 7"),
        (
            "inf",
            "relatedness holds 'inf' in row 7 (0-based, header not counted); a regression target needs finite numbers",
        ),
        ("high", "relatedness is a regression target (TASK) but holds 'high' in row 7"),
    ],
)
def test_a_regression_column_of_what_is_not_a_number_is_one_line(tmp_path, value, message):
    df = make_pairs(300).astype({"relatedness": object})
    df.loc[7, "relatedness"] = value
    data = write_csv(df, tmp_path / "bad.csv")
    before = files_under(tmp_path)
    fails(
        tl,
        quick(
            tl,
            tmp_path,
            data,
            label_columns="relatedness",
            task="regression",
            train_size=200,
            valid_size=50,
            test_size=50,
        ),
        message,
    )
    assert files_under(tmp_path) == before


# ------------------------------------------------------------------------------------- class weights
def test_balanced_class_weights_are_scikit_learns():
    labels = torch.tensor([0] * 80 + [1] * 15 + [2] * 5)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels.numpy())
    assert class_weights(labels, 3, "balanced").tolist() == pytest.approx(expected.tolist())
    assert class_weights(labels, 3, "none") is None
    multi = torch.tensor([[1, 0], [0, 0], [0, 1], [1, 0]], dtype=torch.float32)
    assert class_weights(multi, 2, "balanced").tolist() == [1.0, 3.0]  # negatives / positives, per label
    logits, targets = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    weights = torch.tensor([0.5, 2.0, 3.0])
    loss, _ = batch_loss(logits, targets, 0.5, weights)
    by_hand = sum(weights[y] * -torch.log_softmax(row, -1)[y] for row, y in zip(logits, targets, strict=True))
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


@pytest.mark.parametrize("module", [td, tl], ids=["distilbert", "lstm"])
def test_class_weights_are_printed_once_and_recorded(tmp_path, tiny_model, pairs_csv, module, capsys):
    reviews = make_reviews(700, seed=5)
    rare = reviews[(reviews["sentiment"] == 0) | (np.arange(700) % 6 == 0)].reset_index(drop=True)  # 1 in ~7 positive
    data = write_csv(rare, tmp_path / "rare.csv")
    settings = {
        "text_column": "review",
        "label_columns": "sentiment",
        "class_weights": "balanced",
        "shuffle": True,
        "train_size": 0.7,
        "valid_size": 0.15,
        "test_size": 0.15,
        "epochs": 2,
    }
    metrics = module.main(quick(module, tmp_path, data, tiny_model, **settings))
    train = metrics["examples"]["train"]
    assert metrics["class_weights"]["positive"] > 2 and 0.5 < metrics["class_weights"]["negative"] < 1
    assert train / (2 * metrics["class_weights"]["positive"]) == pytest.approx(
        round(train / (2 * metrics["class_weights"]["positive"])), abs=1e-3
    )  # n / (2 x a whole count)
    assert capsys.readouterr().out.count("class weights (balanced): negative ") == 1
    assert set(metrics["test"]["recall"]) == {"negative", "positive"}
    fails(
        module,
        quick(module, tmp_path / "r", pairs_csv, tiny_model, label_columns="relatedness", class_weights="balanced"),
        "CLASS_WEIGHTS (--class-weights) balanced weights classes, but relatedness holds scores (a regression "
        "task); drop --class-weights",
    )


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "columns, message",
    [
        ("sentence1,sentence1", "TEXT_COLUMN (--text-column) names sentence1 twice; a pair needs two columns"),
        ("sentence1,sentence2,judgment", "TEXT_COLUMN (--text-column) names 3 columns; give one (a text) or two"),
    ],
)
def test_text_columns_named_twice_or_thrice_are_one_line(tmp_path, pairs_csv, columns, message):
    fails(tl, quick(tl, tmp_path, pairs_csv, label_columns="judgment", text_column=columns), message)


def test_an_empty_second_text_is_one_line_saying_how_many_and_where(tmp_path):
    df = make_pairs(300)
    df.loc[[4, 9, 200], "sentence2"] = ""
    data = write_csv(df, tmp_path / "gaps.csv")
    fails(
        tl,
        quick(tl, tmp_path, data, label_columns="judgment", train_size=200, valid_size=50, test_size=50),
        "gaps.csv: empty or missing sentence2 in rows 4, 9, 200 (0-based, header not counted) (3 of 300 rows); "
        "every pair needs both texts",
    )


def test_a_pair_column_missing_in_one_file_is_one_line(tmp_path, pairs_csv):
    test = write_csv(make_pairs(100, seed=9).drop(columns="sentence2"), tmp_path / "test.csv")
    fails(
        tl,
        quick(
            tl,
            tmp_path,
            pairs_csv,
            label_columns="judgment",
            test_url=test,
            train_size=600,
            valid_size=150,
            test_size=100,
        ),
        "test.csv has no sentence2 column",
        "every file needs the training file's columns",
    )


def test_scores_from_the_metrics_are_scipys():
    logits = torch.tensor([[0.1], [0.5], [0.2], [0.9]])
    result = scores(logits, torch.tensor([1.0, 2.0, 1.5, 4.0]), ["s"], 0.5)
    assert result["pearson"] == pytest.approx(np.corrcoef([0.1, 0.5, 0.2, 0.9], [1.0, 2.0, 1.5, 4.0])[0, 1])
    assert result["spearman"] == pytest.approx(1.0)
    assert scores(torch.zeros(4, 1), torch.tensor([1.0, 2.0, 1.5, 4.0]), ["s"], 0.5)["pearson"] is None
