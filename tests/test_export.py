"""export.py: a finished run as an ONNX model. Each task shape and pairs exports, and ONNX Runtime's logits are
PyTorch's; the LSTM exports; int8 is smaller and mostly agrees; predict.py reads an export as it reads the run; the
card's plain Python runs as written; each family the training script takes exports (tiny random checkpoints); and one
line for each bad input, nothing left behind."""

import contextlib
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cli, make_reviews, write_csv
from families import save_family
from test_reliability import fails, files_under
from test_tasks import make_pairs

import export
import predict
import train_distilbert as td
import train_lstm_baseline as tl


def train(tmp_path, module, data, model=None, name="run", **settings):
    """A quick finished run of module on data (its first 300 rows train, 100 validate, 200 test) in tmp_path/name."""
    base = {
        "data_url": data,
        "data_dir": tmp_path / "data",
        "out_dir": tmp_path / name,
        "train_size": 300,
        "valid_size": 100,
        "test_size": 200,
        "epochs": 2,
        "tensorboard": False,
    }
    if module is td:
        base.update(model_name=model, max_length=48, learning_rate=3e-3)
    else:
        base.update(vocab_size=80, embedding_dim=16, hidden_dim=32, batch_size=32, learning_rate=0.02)
    module.main(cli(**{**base, **settings}))
    return tmp_path / name


def shapes(tmp_path):
    """{shape: (data file, settings)} for single-label, multi-label, regression and pairs."""
    reviews = make_reviews(600, seed=31)
    reviews["long"] = (reviews["review"].str.split().str.len() > 20).astype(int)
    reviews["score"] = np.round(1 + 3 * reviews["sentiment"] + reviews["long"], 2) + 0.01
    reviews_csv = write_csv(reviews, tmp_path / "reviews.csv")
    pairs_csv = write_csv(make_pairs(600, seed=3), tmp_path / "pairs.csv")
    return {
        "single_label": (reviews_csv, {}),
        "multi_label": (reviews_csv, {"label_columns": "sentiment,long"}),
        "regression": (reviews_csv, {"label_columns": "score"}),
        "pairs": (pairs_csv, {"text_column": "sentence1,sentence2", "label_columns": "judgment"}),
    }


def quietly(function, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args)


def predictions(folder, data, output, text_column):
    """predict.py's output file of data; a run in fp32, as its export computes (PRECISION auto may have trained it in
    bf16, which predict.py --precision auto would use)."""
    fp32 = [] if (folder / "model.onnx").exists() else ["--precision", "fp32"]
    predict.main([str(folder), "--input", str(data), "--text-column", text_column, "--output", str(output), *fp32])
    return pd.read_csv(output)


@pytest.mark.parametrize("shape", ["single_label", "multi_label", "regression", "pairs"])
def test_each_task_shape_exports_and_onnx_runtime_gives_pytorchs_logits(tmp_path, shape):
    """A tiny BERT (its pairs take token type ids): the fp32 export's logits within 1e-4 of PyTorch's on the test
    split, and predict.py's output file from the export the run's, label for label."""
    data, settings = shapes(tmp_path)[shape]
    bert = save_family("bert", tmp_path / "bert")
    run = train(tmp_path, td, data, bert, **settings)
    check = export.main([str(run), str(tmp_path / "export")])
    assert check["texts"] == 200 and check["largest_logit_difference"] < 1e-4 and check["label_agreement"] == 1.0
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    block = config["textclf"]
    assert block["task"] == ("single_label" if shape == "pairs" else shape) and block["max_length"] == 48
    assert ("token_type_ids" in block["inputs"]) == (shape == "pairs")
    assert {"model.onnx", "config.json", "README.md", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "export").iterdir()
    }
    column = settings.get("text_column", "review")
    ours = predictions(run, data, tmp_path / "run.csv", column)
    theirs = predictions(tmp_path / "export", data, tmp_path / "export.csv", column)
    assert list(ours.columns) == list(theirs.columns)
    for name in ours.columns:
        if name.startswith("predicted_score"):
            np.testing.assert_allclose(theirs[name], ours[name], atol=1e-4)
        else:
            assert theirs[name].tolist() == ours[name].tolist(), name


@pytest.mark.parametrize("pairs", [False, True], ids=["single", "pairs"])
def test_the_lstm_exports_in_fp32_and_int8(tmp_path, pairs):
    data, settings = shapes(tmp_path)["pairs" if pairs else "single_label"]
    run = train(tmp_path, tl, data, **settings)
    check = export.main([str(run), str(tmp_path / "fp32")])
    assert check["largest_logit_difference"] < 1e-4 and check["label_agreement"] == 1.0
    assert json.loads((tmp_path / "fp32" / "vocab.json").read_text())[:2] == ["<pad>", "<unk>"]
    small = export.main([str(run), str(tmp_path / "int8"), "--int8"])
    assert small["label_agreement"] >= 0.9
    assert (tmp_path / "int8" / "model.onnx").stat().st_size < (tmp_path / "fp32" / "model.onnx").stat().st_size
    column = settings.get("text_column", "review")
    ours = predictions(run, data, tmp_path / "run.csv", column)
    theirs = predictions(tmp_path / "fp32", data, tmp_path / "export.csv", column)
    assert theirs["predicted_label"].tolist() == ours["predicted_label"].tolist()
    np.testing.assert_allclose(theirs["predicted_score"], ours["predicted_score"], atol=1e-4)


def test_int8_writes_a_smaller_file_whose_labels_mostly_agree(tmp_path, small_model):
    data, _ = shapes(tmp_path)["single_label"]
    run = train(tmp_path, td, data, small_model, epochs=3)
    fp32 = export.main([str(run), str(tmp_path / "fp32")])
    int8 = export.main([str(run), str(tmp_path / "int8"), "--int8"])
    sizes = [(tmp_path / name / "model.onnx").stat().st_size for name in ("fp32", "int8")]
    assert sizes[1] < 0.6 * sizes[0], sizes
    assert int8["label_agreement"] >= 0.9 and int8["precision"] == "int8"
    assert abs(int8["onnx"]["accuracy"] - fp32["onnx"]["accuracy"]) <= 0.1
    card = (tmp_path / "int8" / "README.md").read_text()
    assert "Its weights are int8" in card and f"{int8['label_agreement']:.4f}" in card


def card_code(folder):
    return re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.DOTALL).group(1)


def run_card(folder):
    """The card's code as a user copies it, in a namespace of its own: what it prints."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(card_code(folder), {})  # noqa: S102 (the card export.py wrote, run as a user runs it)
    return printed.getvalue().strip()


@pytest.mark.parametrize("kind", ["bert", "bert-pairs", "lstm", "lstm-pairs", "multi_label", "regression"])
def test_the_cards_plain_python_gives_the_runs_label(tmp_path, kind):
    shape = "pairs" if kind.endswith("pairs") else kind if kind in ("multi_label", "regression") else "single_label"
    data, settings = shapes(tmp_path)[shape]
    module = tl if kind.startswith("lstm") else td
    model = None if module is tl else save_family("bert", tmp_path / "bert")
    run = train(tmp_path, module, data, model, **settings)
    export.main([str(run), str(tmp_path / "export")])
    code = card_code(tmp_path / "export")
    assert "import torch" not in code and "transformers" not in code
    printed = run_card(tmp_path / "export")
    source = predict.Run(run, torch.device("cpu"), "fp32")
    if shape == "pairs":
        logits = source.logits(["A man is playing a guitar."], 8, ["A person plays music."])
    else:
        logits = source.logits(["A wonderful, moving film."], 8)
    if shape == "multi_label":
        expected = [source.labels[k] for k in np.flatnonzero(logits[0].sigmoid().numpy() > 0.5)]
        assert printed == str(expected)
    elif shape == "regression":
        assert float(printed) == pytest.approx(float(logits[0, 0]), abs=1e-4)
    else:
        label, probability = printed.split()
        assert label == source.labels[int(logits[0].argmax())]
        assert float(probability) == pytest.approx(float(logits[0].softmax(-1).max()), abs=1e-4)


def test_head_and_tail_of_a_long_text_are_cut_as_the_run_cut_them(tmp_path):
    """A text past MAX_LENGTH: the card's code and predict.py on the export keep its head and tail as training did."""
    reviews = make_reviews(600, seed=31, min_words=30, max_words=90)
    data = write_csv(reviews, tmp_path / "long.csv")
    run = train(tmp_path, td, data, save_family("bert", tmp_path / "bert"), max_length=24, head_tokens=6)
    export.main([str(run), str(tmp_path / "export")])
    text = reviews["review"].iloc[-1]
    folder = tmp_path / "export"
    code = card_code(folder).replace('"A wonderful, moving film."', repr(text))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(code, {})  # noqa: S102
    source = predict.Run(run, torch.device("cpu"), "fp32")
    logits = source.logits([text], 8)
    label, probability = printed.getvalue().split()
    assert label == source.labels[int(logits[0].argmax())]
    assert float(probability) == pytest.approx(float(logits[0].softmax(-1).max()), abs=1e-4)


FAMILIES = ["distilbert", "roberta", "deberta-v2", "modernbert", "gpt2", "llama", "qwen"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_exports(tmp_path, family):
    """Tiny random checkpoints of each family (decoders with the pad token the run added), fine-tuned for an epoch:
    the export's logits are PyTorch's on padded batches of the test split. (A family the exporter cannot trace is one
    line: test_a_run_whose_data_is_gone_or_a_failed_trace_or_a_disagreeing_export_leaves_nothing.)"""
    data, _ = shapes(tmp_path)["single_label"]
    run = train(tmp_path, td, data, save_family(family, tmp_path / family), epochs=1)
    check = export.main([str(run), str(tmp_path / "export")])
    assert check["largest_logit_difference"] < 1e-4 and check["label_agreement"] == 1.0


def test_a_lora_run_exports_its_merged_model(tmp_path):
    data, _ = shapes(tmp_path)["single_label"]
    run = train(tmp_path, td, data, save_family("bert", tmp_path / "bert"), lora_rank=4, learning_rate=1e-2)
    check = export.main([str(run), str(tmp_path / "export")])
    assert check["largest_logit_difference"] < 1e-4 and check["label_agreement"] == 1.0


# ----------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export-lstm")
    data, _ = shapes(tmp)["single_label"]
    return train(tmp, tl, data)


def test_bad_input_is_one_line_and_touches_nothing(tmp_path, lstm_run):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    before = files_under(tmp_path)
    fails(export, [str(unfinished), str(tmp_path / "out")], f"{unfinished} holds no finished run")
    fails(export, [str(lstm_run / "model.pt"), str(tmp_path / "out")], "takes the run folder", str(lstm_run))
    fails(export, [str(lstm_run), str(theirs)], f"EXPORT_DIR {theirs} holds files already (notes.txt)")
    fails(export, [str(lstm_run), str(a_file)], f"EXPORT_DIR {a_file} is a file")
    fails(export, [str(lstm_run), str(tmp_path / "out"), "--check-texts", "-1"], "--check-texts must be 0")
    assert files_under(tmp_path) == before and (theirs / "notes.txt").read_text() == "mine"


def test_a_run_whose_data_is_gone_or_a_failed_trace_or_a_disagreeing_export_leaves_nothing(
    tmp_path, lstm_run, monkeypatch
):
    def untraceable(*args, **kwargs):
        raise RuntimeError("Could not guess the shape of a dynamic dimension")

    with monkeypatch.context() as patch:
        patch.setattr(torch.onnx, "export", untraceable)
        fails(export, [str(lstm_run), str(tmp_path / "out")], "torch.onnx.export cannot trace LSTMClassifier")
    with monkeypatch.context() as patch:
        patch.setattr(export, "compare", lambda *args: (0.5, 0.97))
        fails(export, [str(lstm_run), str(tmp_path / "out")], "the fp32 export disagrees", "nothing was exported")
    record = json.loads((lstm_run / "metrics.json").read_text())
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "metrics.json").write_text(
        json.dumps({**record, "settings": {**record["settings"], "DATA_URL": "gone.csv"}})
    )
    (moved / "model.pt").write_bytes((lstm_run / "model.pt").read_bytes())
    fails(export, [str(moved), str(tmp_path / "out")], "checks the export on the run's test split", "gone.csv")
    assert not any(p.name.startswith(".out") or p.name == "out" for p in tmp_path.iterdir())


def test_an_interrupted_export_leaves_no_folder(tmp_path, lstm_run, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "quantized", interrupted)
    with pytest.raises(SystemExit) as exit:
        export.main([str(lstm_run), str(tmp_path / "out"), "--int8"])
    assert exit.value.code == 130
    assert list(tmp_path.iterdir()) == []  # neither the export nor its hidden folder


def test_predict_reads_an_export_from_standard_input_with_threads(tmp_path, lstm_run, capsys, monkeypatch):
    export.main([str(lstm_run), str(tmp_path / "export")])
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("a great film\nan awful film\n"))
    predict.main([str(tmp_path / "export"), "-", "--threads", "1"])
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2 and "an ONNX export" in captured.err
