"""predict.py classifies new text exactly as training evaluated it; compare.py tables and plots runs."""

import gzip
import io
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import cli, make_reviews, write_csv
from test_reliability import fails

import compare
import predict
import train_distilbert as td
import train_lstm_baseline as tl
from textclf.parallel import auto_precision

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"train_size": 600, "valid_size": 200, "test_size": 300}


@pytest.fixture(scope="session")
def runs(tmp_path_factory, tiny_model):
    """A finished run of each script on the same reviews, trained briefly (test accuracy well below 1), and the
    reviews file. The test split holds 300 reviews: more than one evaluation batch of either script."""
    tmp = tmp_path_factory.mktemp("runs")
    reviews = make_reviews(1_100, seed=7)
    csv = write_csv(reviews, tmp / "reviews.csv")
    common = {"data_url": csv.as_uri(), "data_dir": tmp / "data", "epochs": 3, **SIZES}
    td.main(cli(**common, model_name=tiny_model, max_length=16, learning_rate=3e-3, out_dir=tmp / "distilbert"))
    tl.main(
        cli(
            **common,
            vocab_size=40,
            embedding_dim=8,
            hidden_dim=8,
            batch_size=32,
            learning_rate=0.02,
            out_dir=tmp / "lstm",
        )
    )
    return {"distilbert": tmp / "distilbert", "lstm": tmp / "lstm", "reviews": reviews}


def held_out(runs):
    return runs["reviews"].iloc[SIZES["train_size"] + SIZES["valid_size"] :].reset_index(drop=True)


@pytest.mark.parametrize("kind", ["distilbert", "lstm"])
def test_predicting_the_test_split_reproduces_test_accuracy(runs, tmp_path, kind):
    test = held_out(runs)
    source = write_csv(test, tmp_path / "test.csv")
    predict.main([str(runs[kind]), "--input", str(source), "--output", str(tmp_path / "predicted.csv")])
    predicted = pd.read_csv(tmp_path / "predicted.csv")
    assert list(predicted.columns) == ["review", "sentiment", "predicted_label", "predicted_score"]
    assert predicted["review"].tolist() == test["review"].tolist()  # the input rows, in their order
    accuracy = (predicted["predicted_label"] == test["sentiment"].map({0: "negative", 1: "positive"})).mean()
    test_accuracy = json.loads((runs[kind] / "metrics.json").read_text())["test_accuracy"]
    assert 0.6 < test_accuracy < 0.99  # not a trivial model: borderline reviews exist
    assert accuracy == test_accuracy
    assert predicted["predicted_score"].between(0.5, 1).all()


@pytest.mark.parametrize("kind", ["distilbert", "lstm"])
def test_texts_from_arguments_and_standard_input(runs, capsys, monkeypatch, kind):
    texts = ["a wonderful superb film", "an awful boring movie\twith a tab"]
    predict.main([str(runs[kind]), *texts])
    from_arguments = capsys.readouterr().out.splitlines()
    assert len(from_arguments) == 2
    labels, scores, shown = zip(*(line.split("\t") for line in from_arguments), strict=True)
    assert labels == ("positive", "negative") and all(0.5 <= float(score) <= 1 for score in scores)
    assert shown == ("a wonderful superb film", "an awful boring movie with a tab")

    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(["", texts[0], "  ", texts[1]]) + "\n\n"))
    predict.main([str(runs[kind]), "-"])  # blank lines hold no text: skipped, not the whole stream refused
    assert capsys.readouterr().out.splitlines() == from_arguments
    predict.main(["--batch-size", "1", str(runs[kind]), texts[0], "--device", "cpu", texts[1]])  # options anywhere
    assert capsys.readouterr().out.splitlines() == from_arguments


def test_output_formats_hold_the_same_predictions(runs, tmp_path):
    test = held_out(runs)
    write_csv(test, tmp_path / "in.csv.gz")
    test.to_csv(tmp_path / "in.tsv", sep="\t", index=False)
    test.to_json(tmp_path / "in.jsonl", orient="records", lines=True)
    frames = []
    for source, target in [("in.csv.gz", "out.jsonl"), ("in.tsv", "out.tsv"), ("in.jsonl", "out.csv.gz")]:
        predict.main([str(runs["lstm"]), "--input", str(tmp_path / source), "--output", str(tmp_path / target)])
    frames = [
        pd.read_json(tmp_path / "out.jsonl", lines=True),
        pd.read_csv(tmp_path / "out.tsv", sep="\t"),
        pd.read_csv(tmp_path / "out.csv.gz"),
    ]
    with gzip.open(tmp_path / "out.csv.gz") as f:
        assert f.readline().decode().strip() == "review,sentiment,predicted_label,predicted_score"
    for frame in frames:
        assert frame["review"].tolist() == test["review"].tolist()
        assert frame["predicted_label"].tolist() == frames[0]["predicted_label"].tolist()
        pd.testing.assert_series_equal(frame["predicted_score"], frames[0]["predicted_score"], rtol=1e-6)


def test_large_inputs_stream_in_chunks_with_the_same_results(runs, tmp_path, monkeypatch):
    source = write_csv(held_out(runs), tmp_path / "in.csv")
    predict.main([str(runs["lstm"]), "--input", str(source), "--output", str(tmp_path / "whole.csv")])
    chunks = []
    real_logits = predict.Run.logits
    monkeypatch.setattr(predict, "CHUNK", 64)
    monkeypatch.setattr(
        predict.Run,
        "logits",
        lambda self, texts, size, pairs=None: chunks.append(len(texts)) or real_logits(self, texts, size, pairs),
    )
    predict.main([str(runs["lstm"]), "--input", str(source), "--output", str(tmp_path / "chunked.csv")])
    assert chunks == [64, 64, 64, 64, 44]
    whole, chunked = pd.read_csv(tmp_path / "whole.csv"), pd.read_csv(tmp_path / "chunked.csv")
    assert chunked["predicted_label"].tolist() == whole["predicted_label"].tolist()
    pd.testing.assert_series_equal(chunked["predicted_score"], whole["predicted_score"], rtol=1e-5)


def test_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, monkeypatch):
    run = str(runs["lstm"])
    output = str(tmp_path / "out.csv")
    fails(predict, [str(tmp_path), "a text"], "holds no finished run (no metrics.json)")
    (tmp_path / "metrics.json").write_text("{}")
    fails(predict, [str(tmp_path), "a text"], "metrics.json is not a training script's metrics.json (KeyError")
    (tmp_path / "metrics.json").write_text('{"settings": {}}')
    fails(
        predict,
        [str(tmp_path), "a text"],
        "metrics.json is a run of train_lstm_baseline.py, but its model (model.pt) is missing",
    )
    fails(predict, [run], "no input: give texts as arguments, --input FILE, or -")
    for size in ("-1", "0"):  # -1 once classified with scores from uninitialised memory, 0 meant the default
        fails(
            predict,
            [run, "a text", "--batch-size", size],
            f"--batch-size must be a positive number of texts, got {size}",
        )
    fails(predict, [run, "--input", str(tmp_path / "missing.csv")], "missing.csv does not exist")
    source = write_csv(pd.DataFrame({"text": ["fine", "good"]}), tmp_path / "in.csv")
    fails(
        predict,
        [run, "--input", str(source), "--output", output],
        "has no column 'review' (it has ['text'])",
        "--text-column",
    )
    with_empty = write_csv(
        pd.DataFrame({"id": [1, 2, 3, 4], "review": ["fine", " ", "good", ""]}), tmp_path / "empty.csv"
    )
    fails(
        predict,
        [run, "--input", str(with_empty), "--output", output],
        "empty text in column 'review', rows 1, 3",
        "every text needs",
    )
    fails(predict, [run, "a good film", ""], "empty text in row 1")
    fails(predict, [run, "a text", "--batch-size", "many"], "argument --batch-size: invalid int value: 'many'")
    fails(predict, [run, "--input", str(source), "--output", str(tmp_path / "out.xlsx")], "unknown format '.xlsx'")
    (tmp_path / "broken.jsonl").write_text('{"review": "fine"}\n{"review": \n')
    fails(
        predict,
        [run, "--input", str(tmp_path / "broken.jsonl"), "--output", output],
        "broken.jsonl: line 2 is not JSON (Expecting value at column 13)",
    )
    assert not list(tmp_path.glob("*out*")) and not list(tmp_path.glob(".*"))  # no output, not even a temp file


@pytest.mark.parametrize("kind", ["distilbert", "lstm"])
def test_a_damaged_model_is_one_line(runs, tmp_path, kind):
    run = shutil.copytree(runs[kind], tmp_path / "run")
    weights = run / ("model/model.safetensors" if kind == "distilbert" else "model.pt")
    weights.write_bytes(weights.read_bytes()[:1000])  # cut short: a copy that did not finish
    fails(predict, [str(run), "a text"], f"the model in {run} is damaged", "train the run again or restore its files")


def test_device_errors_are_not_called_a_damaged_model(runs, monkeypatch):
    """Out of memory and CUDA errors are RuntimeErrors, as a damaged torch file's is: only the last is "damaged"."""

    def failing(error):
        def load(self, run_dir, device, script):
            raise error

        return load

    monkeypatch.setattr(predict.Run, "load", failing(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate")))
    fails(predict, [str(runs["lstm"]), "a film"], "out of GPU memory (--device auto): free the GPU or use --device cpu")
    monkeypatch.setattr(predict.Run, "load", failing(torch.AcceleratorError("CUDA error: an illegal memory access")))
    with pytest.raises(torch.AcceleratorError):  # not disguised
        predict.main([str(runs["lstm"]), "a film"])
    monkeypatch.setattr(predict.Run, "load", failing(RuntimeError("PytorchStreamReader failed reading zip archive")))
    fails(predict, [str(runs["lstm"]), "a film"], "is damaged (RuntimeError: PytorchStreamReader failed")
    monkeypatch.undo()

    def out_of_memory(self, texts, batch_size, pairs=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(predict.Run, "logits", out_of_memory)
    fails(
        predict,
        [str(runs["distilbert"]), "a film", "--batch-size", "64"],
        "out of GPU memory (--device auto): lower --batch-size (now 64, e.g. 32)",
    )


def test_command_line_reads_standard_input(runs):
    done = subprocess.run(
        [sys.executable, "predict.py", str(runs["distilbert"]), "-"],
        cwd=ROOT,
        text=True,
        input="a wonderful superb film\nan awful boring movie\n",
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [line.split("\t")[0] for line in done.stdout.splitlines()] == ["positive", "negative"]


def test_a_reader_that_stops_early_is_not_an_error(runs):
    """python predict.py RUN - | head -n 1: the pipe closes after the first line."""
    done = subprocess.run(
        f"yes 'a wonderful superb film' | head -n 30000 | {sys.executable} predict.py {runs['lstm']} - | head -n 1",
        shell=True,
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.stdout.startswith("positive\t") and len(done.stdout.splitlines()) == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def png_size(path):
    header = Path(path).read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_compare_prints_a_row_per_run_and_draws_the_curves(runs, tmp_path, capsys):
    compare.main([str(runs["distilbert"]), str(runs["lstm"] / "metrics.json"), "--output", str(tmp_path / "c.png")])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| run | script | model | parameters | training reviews |")
    for line, kind, script in [
        (lines[2], "distilbert", "train_distilbert.py"),
        (lines[3], "lstm", "train_lstm_baseline.py"),
    ]:
        metrics = json.loads((runs[kind] / "metrics.json").read_text())
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert (
            cells[0] == runs[kind].name and cells[1] == script
        )  # the run's folder, not its whole path and cells[4] == "600" and cells[6] == "3"
        assert cells[7] == "cpu" + (f", {auto_precision(torch.device('cpu'))[0]}" if kind == "distilbert" else "")
        assert cells[-2:] == [f"{metrics['valid_accuracy']:.4f}", f"{metrics['test_accuracy']:.4f}"]
    assert lines[2].split("|")[6].strip() == "16" and lines[3].split("|")[6].strip() == "4096"  # max length
    assert png_size(tmp_path / "c.png") == (1200, 450) and (tmp_path / "c.png").stat().st_size > 20_000


def test_compare_shows_what_a_partial_metrics_file_has(runs, tmp_path, capsys):
    """Hand-edited or older files: no train_seconds, no model settings, no epochs, a null best epoch, or a
    fractional TRAIN_SIZE without the example counts newer runs record. Each is a row with ? where it lacks."""
    full = json.loads((runs["lstm"] / "metrics.json").read_text())
    assert full["examples"] == {"train": 600, "valid": 200, "test": 300}
    partial = {"settings": {"TRAIN_SIZE": 0.5, "EPOCHS": 3}, "epochs": [], "best_epoch": None, "test_accuracy": 0.5}
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "metrics.json").write_text(json.dumps(partial))
    fraction = {**full, "settings": {**full["settings"], "TRAIN_SIZE": 0.6}}
    (tmp_path / "fraction.json").write_text(json.dumps(fraction))
    compare.main([str(tmp_path / "partial"), str(tmp_path / "fraction.json"), "--output", str(tmp_path / "c.png")])
    lines = capsys.readouterr().out.splitlines()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert cells[0][:5] == ["partial", "train_lstm_baseline.py", "LSTM ?/?", "?", "50% of the rows"]
    assert cells[0][8:] == ["?", "?", "?", "?", "0.5000"] and cells[0][6] == "0 of 3"
    assert cells[1][0] == "fraction" and cells[1][4] == "600"  # the count the run resolved the fraction to
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_compare_refuses_an_output_format_before_writing_anything(runs, tmp_path):
    with pytest.raises(SystemExit) as exit:
        compare.main([str(runs["lstm"]), "--output", str(tmp_path / "new" / "curves.jpgx")])
    assert str(exit.value.code).startswith("error: --output") and "cannot write .jpgx files; use one of" in str(
        exit.value.code
    )
    assert not (tmp_path / "new").exists()


def test_compare_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(SystemExit) as exit:
        compare.main([str(tmp_path)])
    assert str(exit.value.code).startswith("error: ") and "metrics.json" in str(exit.value.code)


# ------------------------------------------------------------------------------------- reliability, round four
def custom_code_folder(tiny_model, path, marker):
    """A model folder whose config.json asks for its own Python code (auto_map, an unknown model_type); the code
    writes marker when it runs."""
    shutil.copytree(tiny_model, path)
    config = json.loads((path / "config.json").read_text())
    config.update(
        model_type="strange-custom",
        auto_map={"AutoConfig": "custom.Config", "AutoModelForSequenceClassification": "custom.Model"},
    )
    (path / "config.json").write_text(json.dumps(config))
    (path / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return path


def test_code_in_a_model_folder_never_runs(runs, tmp_path, tiny_model):
    """transformers asked "run the custom code? [y/N]" on standard input: with predict.py RUN -, the user's first
    texts answered it, the folder's code ran and those texts were missing from the output."""
    marker = tmp_path / "ran"
    run = tmp_path / "run"
    shutil.copytree(runs["distilbert"], run)
    shutil.rmtree(run / "model")
    custom_code_folder(tiny_model, run / "model", marker)
    done = subprocess.run(
        [sys.executable, "predict.py", str(run), "-"],
        cwd=ROOT,
        input="y\nyes\n1\na fine film\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1 and done.stdout == "" and not marker.exists() and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: the model in {run / 'model'} needs Python code of its own to load "
        f"(config.json's auto_map), and this collection never runs code from a model "
        f"folder; use a model that transformers supports as it is"
    )
    custom = custom_code_folder(tiny_model, tmp_path / "custom", marker)
    csv = write_csv(make_reviews(1_100), tmp_path / "reviews.csv")
    fails(
        td,
        cli(data_url=csv, data_dir=tmp_path / "data", model_name=custom, out_dir=tmp_path / "out", **SIZES),
        f"the model in {custom} needs Python code of its own",
        "never runs code from a model folder",
    )
    assert not marker.exists()


def test_a_model_folder_without_its_vocabulary_file_is_refused(runs, tmp_path, tiny_model):
    """Without tokenizer.json the tokenizer loaded with its 5 special tokens: every word [UNK], predict.py scored 0.49
    on a run's own test split, and training learnt nothing."""
    run = tmp_path / "run"
    shutil.copytree(runs["distilbert"], run)
    (run / "model" / "tokenizer.json").unlink()
    fails(
        predict,
        [str(run), "a film"],
        f"the tokenizer in {run / 'model'} has 5 tokens for a model with 56",
        "its vocabulary file (tokenizer.json, or vocab.txt) is missing",
    )
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "tokenizer.json").unlink()
    csv = write_csv(make_reviews(1_100), tmp_path / "reviews.csv")
    fails(
        td,
        cli(data_url=csv, data_dir=tmp_path / "data", model_name=model, out_dir=tmp_path / "out", **SIZES),
        f"the tokenizer in {model} has 5 tokens",
    )
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_bytes_that_are_not_utf8_are_one_line(runs):
    """Standard input and arguments that are not UTF-8 (a Latin-1 file): a traceback from the tokenizer before."""
    for kind in ("distilbert", "lstm"):
        done = subprocess.run(
            [sys.executable, "predict.py", str(runs[kind]), "-"],
            cwd=ROOT,
            capture_output=True,
            input="a fine film\ncaf\xe9 au lait\n".encode("latin-1"),
            timeout=120,
            check=False,
        )
        assert done.returncode == 1 and b"Traceback" not in done.stderr, done.stderr
        assert done.stderr.decode().strip().splitlines()[-1] == (
            "error: the text in row 1 (0-based, header not counted) is not UTF-8: "
            "it holds the byte 0xe9; convert the input to UTF-8, e.g. iconv -f "
            "latin1 -t utf-8"
        )
        done = subprocess.run(
            [sys.executable.encode(), b"predict.py", str(runs[kind]).encode(), b"caf\xe9"],
            cwd=ROOT,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 1 and b"is not UTF-8: it holds the byte 0xe9" in done.stderr


def test_odd_input_files_are_one_line(runs, tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    fails(
        predict,
        [str(runs["lstm"]), "--input", str(tmp_path / "empty.csv")],
        f"--input {tmp_path / 'empty.csv'} is empty",
    )
    fails(predict, [str(runs["lstm"]), "--input", str(tmp_path)], f"--input {tmp_path} is a folder; give a file")
    for line, what in [("null", "null"), ("7", "a int"), ('["a film"]', "a list")]:
        (tmp_path / "odd.jsonl").write_text('{"review": "a fine film"}\n' + line + "\n")
        fails(
            predict,
            [str(runs["lstm"]), "--input", str(tmp_path / "odd.jsonl")],
            f"--input {tmp_path / 'odd.jsonl'}: line 2 is {what}, not a JSON object (one object a line)",
        )


def test_a_metrics_file_that_lacks_a_setting_takes_the_scripts_default(runs, tmp_path, capsys):
    for kind in ("distilbert", "lstm"):
        run = tmp_path / kind
        shutil.copytree(runs[kind], run)
        metrics = json.loads((run / "metrics.json").read_text())
        for name in ("EVAL_BATCH_SIZE", "THRESHOLD", "TEXT_COLUMN"):
            del metrics["settings"][name]
        (run / "metrics.json").write_text(json.dumps(metrics))
        predict.main([str(run), "a wonderful superb film"])
        assert capsys.readouterr().out.startswith("positive\t")


def test_compare_with_no_runs_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit:
        compare.main([])
    assert str(exit.value.code) == "error: the following arguments are required: runs"


def test_compare_draws_twenty_runs_apart(runs):
    """20 runs: the colours repeated after 10, and the legend covered the plots."""
    metrics = json.loads((runs["lstm"] / "metrics.json").read_text())
    figure = compare.figure_of([(f"run {i}", metrics) for i in range(20)])
    colors = {
        tuple(line.get_color()) if not isinstance(line.get_color(), str) else line.get_color()
        for line in figure.axes[0].get_lines()
    }
    assert len(colors) == 20
    figure.canvas.draw()
    legend = figure.legends[0].get_window_extent()
    assert all(legend.y1 <= axes.get_tightbbox().y0 for axes in figure.axes)  # below the plots, labels included
    assert len(figure.legends[0].get_texts()) == 40
