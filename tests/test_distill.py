"""textclf.distill through both scripts: a fine-tuned teacher's soft targets on labelled and unlabelled texts, for every
task shape; the loss by hand; its outputs computed once and cached; resume and torchrun; and one line for each bad
input. Teachers are tiny DistilBERT runs trained here, offline."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import cli, make_reviews, write_csv
from test_distributed import close, torchrun
from test_reliability import ROOT, fails, files_under
from test_tasks import make_pairs
from test_training import comparable, interrupt_at

import compare
import train_distilbert as td
import train_lstm_baseline as tl
from textclf import augment, distill
from textclf.distill import Distiller, soft_losses
from textclf.training import Run

SIZES = {"train_size": 100, "valid_size": 200, "test_size": 300}  # few labels: where a teacher's help shows


def lstm_args(tmp_path, data, **overrides):
    settings = {
        "data_url": data,
        "data_dir": tmp_path / "data",
        **SIZES,
        "vocab_size": 60,
        "embedding_dim": 8,
        "hidden_dim": 16,
        "batch_size": 32,
        "epochs": 3,
        "learning_rate": 0.01,
        "tensorboard": False,
        "out_dir": tmp_path / "out",
        **overrides,
    }
    return cli(**settings)


def teacher_run(tmp_path, model, data, **overrides):
    """A tiny DistilBERT fine-tuned on 600 labelled rows of data: the teacher."""
    settings = {
        "data_url": data,
        "data_dir": tmp_path / "teacher-data",
        "model_name": model,
        "train_size": 600,
        "valid_size": 200,
        "test_size": 300,
        "max_length": 64,
        "epochs": 2,
        "learning_rate": 3e-3,
        "tensorboard": False,
        "out_dir": tmp_path / "teacher",
        **overrides,
    }
    td.main(cli(**settings))
    return tmp_path / "teacher"


@pytest.fixture(scope="module")
def imdb_like(tmp_path_factory):
    """Labelled reviews (the first 600 train the teacher; the student sees 100 of them) and 2,000 unlabelled ones."""
    tmp = tmp_path_factory.mktemp("distill")
    reviews = make_reviews(3_100, seed=21)
    labelled = write_csv(reviews.iloc[:1_100], tmp / "labelled.csv")
    unlabelled = write_csv(reviews.iloc[1_100:][["review"]], tmp / "unlabelled.csv")
    return tmp, labelled, unlabelled


@pytest.fixture(scope="module")
def teacher(imdb_like, tiny_model):
    tmp, labelled, _ = imdb_like
    return teacher_run(tmp, tiny_model, labelled)


# ------------------------------------------------------------------------------------------------- the loss
def test_the_loss_mixes_labels_and_soft_targets_as_the_docs_say():
    torch.manual_seed(0)
    student, teacher_logits = torch.randn(4, 3), torch.randn(4, 3)
    labels = torch.tensor([0, 2, 1, 0])
    labelled = np.array([True, True, False, False])
    alpha, t = 0.3, 2.0
    distiller = Distiller(teacher_logits, labelled, "single_label", alpha, t, torch.device("cpu"))
    loss, correct = distiller.loss(student, labels, [0, 1, 2, 3], 0.5)
    hard = F.cross_entropy(student, labels, reduction="none")
    p = F.softmax(teacher_logits / t, -1)
    soft = (p * (p.log() - F.log_softmax(student / t, -1))).sum(-1) * t * t  # KL(teacher || student) x T²
    expected = (alpha * hard[:2] + (1 - alpha) * soft[:2]).sum() + soft[2:].sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert correct.item() == int((student.argmax(-1) == labels)[:2].sum())  # the labelled rows only
    # rows are looked up by their index in the frame
    shuffled, _ = distiller.loss(student[[3, 1]], labels[[3, 1]], [3, 1], 0.5)
    assert shuffled.item() == pytest.approx((soft[3] + alpha * hard[1] + (1 - alpha) * soft[1]).item(), rel=1e-5)


def test_the_soft_loss_of_each_task():
    student, teacher_logits = torch.tensor([[0.5, -1.0]]), torch.tensor([[2.0, 0.0]])
    bce = F.binary_cross_entropy_with_logits(student, teacher_logits.sigmoid(), reduction="none").mean(-1)
    assert soft_losses(student, teacher_logits, "multi_label", 2.0).tolist() == pytest.approx(bce.tolist())
    assert soft_losses(torch.tensor([[3.0]]), torch.tensor([[1.5]]), "regression", 2.0).tolist() == [2.25]
    same = soft_losses(teacher_logits, teacher_logits, "single_label", 4.0)
    assert same.tolist() == pytest.approx([0.0], abs=1e-6)  # a student that is its teacher has nothing to learn


# ------------------------------------------------------------------------------------------- end to end
def test_unlabelled_texts_teach_the_student_to_agree_with_its_teacher(
    tmp_path, imdb_like, teacher, capsys, monkeypatch
):
    """The LSTM on 100 labels alone (DISTILL_ALPHA 1: the teacher only measured), then taught on 2,000 unlabelled texts
    too: it agrees with its teacher on more of the test split, and the teacher's outputs were computed once."""
    _, labelled, unlabelled = imdb_like
    alone = tl.main(lstm_args(tmp_path / "alone", labelled, teacher=teacher, distill_alpha=1.0))
    vocabulary_texts = []
    real_build_vocab = tl.build_vocab

    def build_vocab(texts, *args):
        vocabulary_texts.append(len(texts))
        return real_build_vocab(texts, *args)

    monkeypatch.setattr(tl, "build_vocab", build_vocab)
    taught = tl.main(lstm_args(tmp_path / "taught", labelled, teacher=teacher, unlabeled_url=unlabelled))
    assert vocabulary_texts == [2_100]  # the vocabulary is built from the unlabelled texts too
    assert taught["teacher"]["agreement"] > alone["teacher"]["agreement"] + 0.05, (alone["teacher"], taught["teacher"])
    assert taught["test_accuracy"] > alone["test_accuracy"]
    assert taught["teacher"]["transfer_texts"] == taught["transfer_texts"] == 2_000
    assert taught["teacher"]["labelled_texts"] == 100 and taught["examples"]["train"] == 100
    teacher_test = json.loads((teacher / "metrics.json").read_text())
    assert taught["teacher"]["test"]["accuracy"] <= 1 and teacher_test["labels"] == taught["labels"]
    out = capsys.readouterr().out
    assert "soft targets for 100 labelled and 2,000 unlabelled texts" in out
    assert "the student agrees on" in out
    assert "epoch 3: train distillation loss" in out  # the loss it trains on is named as what it is

    # a second student with other settings reuses the teacher's outputs: none are computed again
    def compute(*args, **kwargs):
        raise AssertionError("the teacher's outputs were computed again")

    monkeypatch.setattr(distill.Teacher, "compute", compute)
    settings = {"hidden_dim": 8, "data_dir": tmp_path / "taught" / "data", "out_dir": tmp_path / "second"}
    tl.main(lstm_args(tmp_path / "taught", labelled, teacher=teacher, unlabeled_url=unlabelled, **settings))
    table = compare.table([compare.load(tmp_path / "taught" / "out")])
    # the teacher's row: its own checkpoint and max length, not the student's
    teacher_row = next(line for line in table.splitlines() if line.startswith("| out: teacher | teacher |"))
    cells = [cell.strip() for cell in teacher_row.split("|")]
    assert cells[3] == Path(teacher_test["settings"]["MODEL_NAME"]).name and cells[6] == "64", teacher_row
    figure = compare.figure_of([compare.load(tmp_path / "taught" / "out")])
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert "out, training (distillation loss)" in labels and "distillation loss" in figure.axes[0].get_ylabel()


def test_a_distilbert_student_of_a_distilbert_teacher(tmp_path, imdb_like, teacher, tiny_model):
    _, labelled, unlabelled = imdb_like
    settings = {"model_name": tiny_model, "max_length": 64, "learning_rate": 3e-3, "epochs": 1, "tensorboard": False}
    metrics = td.main(
        cli(
            data_url=labelled,
            data_dir=tmp_path / "data",
            out_dir=tmp_path / "out",
            teacher=teacher,
            unlabeled_url=unlabelled,
            **SIZES,
            **settings,
        )
    )
    assert metrics["teacher"]["agreement"] > 0.9 and metrics["transfer_texts"] == 2_000
    card = (tmp_path / "out" / "model" / "README.md").read_text()
    assert f"Distilled from `{teacher}`" in card and "2,000 unlabelled texts" in card


@pytest.mark.parametrize("task", ["multi_label", "regression", "pairs"])
def test_every_task_shape_distils(tmp_path, tiny_model, task):
    reviews = make_reviews(1_400, seed=22)
    if task == "multi_label":
        reviews["long"] = (reviews["review"].str.split().str.len() > 20).astype(int)
        data, extra = reviews, {"label_columns": "sentiment,long"}
    elif task == "regression":
        noise = np.random.default_rng(0).normal(0, 0.1, len(reviews))
        reviews["score"] = np.round(1 + 3 * reviews["sentiment"] + noise, 3)
        data, extra = reviews, {"label_columns": "score"}
    else:
        data, extra = make_pairs(1_400, seed=3), {"text_column": "sentence1,sentence2", "label_columns": "judgment"}
    labelled = write_csv(data.iloc[:1_100], tmp_path / "labelled.csv")
    texts = [c.strip() for c in extra.get("text_column", "review").split(",")]
    unlabelled = write_csv(data.iloc[1_100:][texts], tmp_path / "unlabelled.csv")
    teacher = teacher_run(tmp_path, tiny_model, labelled, **extra)
    epochs = 8 if task == "regression" else 3  # a score takes the LSTM longer to learn than a class
    metrics = tl.main(lstm_args(tmp_path, labelled, teacher=teacher, unlabeled_url=unlabelled, epochs=epochs, **extra))
    assert metrics["task"] == ("single_label" if task == "pairs" else task)
    assert metrics["transfer_texts"] == 300 and metrics["teacher"]["agreement"] is not None
    if task == "regression":
        assert metrics["teacher"]["test"]["pearson"] > 0.5 and metrics["teacher"]["agreement"] > 0.3
        last = metrics["epochs"][-1]  # the labels' RMSE on the training rows, near the validation rows' own
        assert 0.5 < last["train_rmse"] / last["valid_rmse"] < 2, last
    else:
        assert metrics["teacher"]["agreement"] > 0.6


def test_a_distilled_run_resumes_to_the_uninterrupted_numbers(tmp_path, imdb_like, teacher, monkeypatch):
    _, labelled, unlabelled = imdb_like
    args = {"teacher": teacher, "unlabeled_url": unlabelled, "epochs": 2}
    straight = tl.main(lstm_args(tmp_path / "straight", labelled, **args))
    interrupt_at(distill.Distiller, monkeypatch, "loss", 30)  # mid-epoch 1 (66 batches an epoch)
    with pytest.raises(SystemExit):
        tl.main(lstm_args(tmp_path / "resumed", labelled, **args))
    monkeypatch.undo()
    resumed = tl.main([f"--out-dir={tmp_path / 'resumed' / 'out'}", "--resume"])
    assert comparable(resumed) == comparable(straight)
    assert resumed["teacher"] == straight["teacher"]


def test_a_distilled_run_under_torchrun_matches_one_process(tmp_path, imdb_like, teacher):
    _, labelled, unlabelled = imdb_like
    args = {"teacher": teacher, "unlabeled_url": unlabelled, "epochs": 2}
    single = tl.main(lstm_args(tmp_path / "single", labelled, **args))
    done = torchrun(ROOT / "train_lstm_baseline.py", lstm_args(tmp_path / "two", labelled, **args))
    assert done.returncode == 0, done.stderr[-3000:]
    parallel = json.loads((tmp_path / "two" / "out" / "metrics.json").read_text())
    close(single, parallel)
    assert parallel["teacher"]["test"]["accuracy"] == pytest.approx(single["teacher"]["test"]["accuracy"], abs=2 / 300)


# ----------------------------------------------------------------------------------------------- bad input
def test_bad_distillation_settings_are_one_line_and_write_nothing(tmp_path, imdb_like, teacher, tiny_model):
    _, labelled, unlabelled = imdb_like
    shutil.copy(labelled, tmp_path / "labelled.csv")
    before = files_under(tmp_path)
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    lstm_run = tmp_path / "lstm-run"  # what an LSTM run leaves: model.pt and metrics.json
    lstm_run.mkdir()
    (lstm_run / "model.pt").write_bytes(b"")
    (lstm_run / "metrics.json").write_text("{}")
    adapter = tmp_path / "adapter"  # a LoRA run's adapters, without their base
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    pair_teacher = tmp_path / "pair-teacher"  # a run of the same labels that read pairs
    shutil.copytree(teacher, pair_teacher)
    record = json.loads((pair_teacher / "metrics.json").read_text())
    record["settings"]["TEXT_COLUMN"] = "a,b"
    (pair_teacher / "metrics.json").write_text(json.dumps(record))
    before = files_under(tmp_path)
    cases = [
        (
            {"unlabeled_url": unlabelled},
            "UNLABELED_URL (--unlabeled-url) gives texts for a teacher to label, but no TEACHER",
        ),
        ({"teacher": teacher, "distill_alpha": 1.5}, "DISTILL_ALPHA (--distill-alpha) must be in [0, 1]"),
        (
            {"teacher": teacher, "distill_temperature": 0},
            "DISTILL_TEMPERATURE (--distill-temperature) must be above 0 and at most 100",
        ),
        ({"teacher": teacher, "distill_temperature": 1e20}, "must be above 0 and at most 100"),
        ({"teacher": teacher, "distill_temperature": "inf"}, "must be above 0 and at most 100"),
        ({"teacher": lstm_run}, f"TEACHER (--teacher) {lstm_run} is a train_lstm_baseline.py run"),
        ({"teacher": lstm_run / "model.pt"}, "is a train_lstm_baseline.py run; a teacher is a transformer"),
        ({"teacher": adapter}, f"holds LoRA adapters alone, without their base; give the run's folder ({tmp_path})"),
        ({"teacher": pair_teacher}, "was trained on pairs of texts (a,b), but this run's data have one text a row"),
        ({"teacher": empty}, f"TEACHER (--teacher) {empty} is a folder but holds no model"),
        ({"teacher": tiny_model}, "predicts the labels LABEL_0, LABEL_1, but the data's are negative, positive"),
        ({"teacher": teacher, "label_columns": "sentiment", "label_names": "bad,good"}, "but the data's are bad, good"),
    ]
    for overrides, message in cases:
        fails(tl, lstm_args(tmp_path, tmp_path / "labelled.csv", **overrides), message)
    assert files_under(tmp_path) == before


def test_a_teacher_of_another_task_or_a_transfer_file_without_the_text_column_is_refused(tmp_path, imdb_like, teacher):
    _, labelled, _ = imdb_like
    reviews = pd.read_csv(labelled)
    reviews["score"] = reviews["sentiment"] + 0.5
    scores = write_csv(reviews, tmp_path / "scores.csv")
    fails(
        tl,
        lstm_args(tmp_path, scores, label_columns="score", teacher=teacher),
        f"TEACHER (--teacher) {teacher} is a single-label model, but the data make this run a regression task",
    )
    other = write_csv(pd.DataFrame({"body": ["a text"] * 10}), tmp_path / "other.csv")
    fails(
        tl,
        lstm_args(tmp_path, labelled, teacher=teacher, unlabeled_url=other),
        "other.csv has no review column",
    )
    assert not (tmp_path / "out").exists()


def test_a_resume_with_another_teacher_is_refused(tmp_path, imdb_like, teacher, tiny_model, monkeypatch):
    _, labelled, _ = imdb_like
    mine = tmp_path / "mine"
    shutil.copytree(teacher, mine)
    interrupt_at(distill.Distiller, monkeypatch, "loss", 2)
    with pytest.raises(SystemExit):
        tl.main(lstm_args(tmp_path, labelled, teacher=mine))
    monkeypatch.undo()
    checkpoint = tmp_path / "out" / "checkpoint.pt"
    before = checkpoint.read_bytes()
    teacher_run(tmp_path / "retrained", tiny_model, labelled, seed=7, epochs=1)  # other weights, in the same folder
    shutil.rmtree(mine)
    shutil.copytree(tmp_path / "retrained" / "teacher", mine)
    fails(
        tl,
        [f"--out-dir={tmp_path / 'out'}", "--resume"],
        f"TEACHER (--teacher) {mine} is not the teacher this run began with",
    )
    assert checkpoint.read_bytes() == before


def test_the_archives_unlabelled_reviews_are_the_transfer_texts(tmp_path):
    from test_own_data import aclimdb_archive

    from textclf.data import load_reviews

    archive = aclimdb_archive(tmp_path / "aclImdb_v1.tar.gz")
    path, frame, names = load_reviews(str(archive), tmp_path / "data", tl.DEFAULTS, "UNLABELED_URL", texts_only=True)
    assert path == tmp_path / "data" / "aclImdb_v1-unsup.csv.gz" and names == []
    assert frame["text"].tolist() == ["unlabelled"] and list(frame.columns) == ["text"]
    labelled = load_reviews(str(archive), tmp_path / "data", tl.DEFAULTS)[1]  # the labelled CSV beside it, as before
    assert "unlabelled" not in labelled["text"].tolist() and len(labelled) == 12


def test_a_pair_student_refuses_a_single_text_teacher_and_one_without_a_pair_template(tmp_path, imdb_like, teacher):
    from families import save_family

    pairs = write_csv(make_pairs(600, seed=5), tmp_path / "pairs.csv")
    args = {"text_column": "sentence1,sentence2", "label_columns": "judgment"}
    fails(
        tl,
        lstm_args(tmp_path, pairs, teacher=teacher, **args),
        f"TEACHER (--teacher) {teacher} was trained on one text a row, but this run's data are pairs",
    )
    gpt2 = save_family("gpt2", tmp_path / "gpt2")  # GPT-2 joins a pair's texts with nothing between them
    fails(
        tl,
        lstm_args(tmp_path, pairs, teacher=gpt2, **args),
        f"TEACHER (--teacher) {gpt2} has a tokenizer without a pair template",
    )
    assert not (tmp_path / "out").exists()


def test_the_teachers_test_scores_are_its_own_runs(tmp_path, imdb_like, teacher):
    """A student tested on the teacher run's test split reports exactly the teacher run's test figures: the teacher is
    loaded and computed as its run tested it (its weights as saved, its precision, its test batches)."""
    _, labelled, _ = imdb_like
    own = json.loads((teacher / "metrics.json").read_text())
    sizes = {"train_size": 100, "valid_size": 700, "test_size": 300}  # the teacher's test split: rows 800 to 1,100
    metrics = tl.main(lstm_args(tmp_path, labelled, teacher=teacher, epochs=1, **sizes))
    taught = metrics["teacher"]["test"]
    assert taught["accuracy"] == own["test"]["accuracy"]
    assert taught["loss"] == pytest.approx(own["test"]["loss"], rel=1e-6, abs=1e-7)
    assert metrics["teacher"]["max_length"] == 64 and metrics["teacher"]["model_name"] == own["settings"]["MODEL_NAME"]


def test_transfer_texts_never_hold_validation_or_test_texts_nor_repeats(tmp_path, imdb_like, teacher, capsys):
    """The labelled file given again as UNLABELED_URL (a natural mistake), plus a repeated row: its training rows are
    labelled already, its validation and test rows must stay unseen, and a repeat counts once."""
    _, labelled, _ = imdb_like
    rows = pd.read_csv(labelled)
    again = write_csv(pd.concat([rows, rows.iloc[[900]]]), tmp_path / "again.csv")
    metrics = tl.main(lstm_args(tmp_path, labelled, teacher=teacher, unlabeled_url=again, epochs=1))
    assert metrics["transfer_texts"] == 1_100 - 600  # rows 600 to 1,100: neither trained on, validated nor tested
    out = capsys.readouterr().out
    assert "500 of its 1,101 texts are validation or test texts and 101 repeat a training text or an earlier one" in out
    only_held_out = write_csv(rows.iloc[100:600], tmp_path / "held-out.csv")
    fails(
        tl,
        lstm_args(tmp_path / "second", labelled, teacher=teacher, unlabeled_url=only_held_out),
        "holds no text beside the validation and test texts",
    )


def test_a_teacher_cache_of_the_right_key_and_the_wrong_length_is_rebuilt(tmp_path, imdb_like, teacher, capsys):
    _, labelled, unlabelled = imdb_like
    first = tl.main(lstm_args(tmp_path / "a", labelled, teacher=teacher, unlabeled_url=unlabelled, epochs=1))
    [cache] = (tmp_path / "a" / "data").glob("teacher-*.pt")
    damaged = torch.load(cache, weights_only=True)
    damaged["logits"] = damaged["logits"][:-7]
    torch.save(damaged, cache)
    capsys.readouterr()
    again = tl.main(lstm_args(tmp_path / "a", labelled, teacher=teacher, unlabeled_url=unlabelled, epochs=1))
    assert "is unreadable (ValueError" in capsys.readouterr().out
    assert again["teacher"] == first["teacher"] and again["test_accuracy"] == first["test_accuracy"]


def test_the_archives_reviews_take_the_datas_text_column(tmp_path):
    from test_own_data import aclimdb_archive

    from textclf.data import load_reviews

    archive = aclimdb_archive(tmp_path / "aclImdb_v1.tar.gz")
    settings = {**tl.DEFAULTS, "TEXT_COLUMN": "body"}
    _, frame, _ = load_reviews(str(archive), tmp_path / "data", settings, "UNLABELED_URL", texts_only=True)
    assert frame["text"].tolist() == ["unlabelled"]


def test_a_distilled_regression_reports_the_labels_rmse_and_its_loss_as_distillation(tmp_path):
    """train RMSE is the labelled rows' error to their scores, not the root of the mixed loss: the regression
    Distiller's second sum is their squared error."""
    student, teacher_logits = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[1.5], [2.5], [0.0]])
    labels = torch.tensor([2.0, 2.0, 0.0])
    distiller = Distiller(teacher_logits, np.array([True, True, False]), "regression", 0.5, 2.0, torch.device("cpu"))
    loss, squared = distiller.loss(student, labels, [0, 1, 2], 0.5)
    assert squared.item() == pytest.approx(1.0 + 0.0)  # (1 - 2)² + (2 - 2)², the unlabelled row not counted
    assert loss.item() == pytest.approx(0.5 * 1 + 0.5 * 0.25 + 0.5 * 0 + 0.5 * 0.25 + 9.0)


# ----------------------------------------------------------------------------------------- DISTILL_AUGMENT
def test_augmented_copies_are_deterministic_and_made_of_the_training_texts_words():
    texts = ["a great film and a superb story", "the plot was dull", "awful"]
    first = augment.copies(texts, 4, 1, "[MASK]")
    assert first == augment.copies(texts, 4, 1, "[MASK]") and first != augment.copies(texts, 4, 2, "[MASK]")
    assert len(first) == 12 and all(first)
    words = {word for text in texts for word in text.split()} | {"[MASK]"}
    assert all(set(copy.split()) <= words for copy in first)
    masked = sum(copy.split().count("[MASK]") for copy in augment.copies(texts * 200, 5, 0, "[MASK]"))
    assert 0.05 < masked / (5 * 200 * 12) < 0.15  # about MASK of the words (fewer where a copy is a window)


def test_augmented_copies_join_the_transfer_texts_and_never_touch_validation_or_test(tmp_path, imdb_like, teacher):
    _, labelled, unlabelled = imdb_like
    settings, given = tl.DEFAULTS, ["DATA_URL", "TRAIN_SIZE", "VALID_SIZE", "TEST_SIZE", "TEACHER"]
    base = {**settings, "DATA_URL": str(labelled), "DATA_DIR": str(tmp_path / "data"), "TEACHER": str(teacher)}
    base.update({key.upper(): value for key, value in SIZES.items()})
    plain = Run.reading(base, given)
    frame = plain.load_data()
    augmented = Run.reading({**base, "DISTILL_AUGMENT": 3}, [*given, "DISTILL_AUGMENT"])
    more = augmented.load_data()
    assert augmented.n_augmented == 300 and augmented.n_transfer == 300 and len(more) == len(frame) + 300
    pd.testing.assert_frame_equal(more.iloc[: len(frame)], frame)  # training, validation and test rows as they were
    training_words = {word for text in frame["text"].iloc[:100] for word in text.split()} | {"[MASK]"}
    assert all(set(text.split()) <= training_words for text in more["text"].iloc[len(frame) :])
    assert list(augmented.train_rows) == [*range(100), *range(len(frame), len(frame) + 300)]
    metrics = tl.main(lstm_args(tmp_path, labelled, teacher=teacher, distill_augment=3, unlabeled_url=unlabelled))
    assert metrics["augmented_texts"] == 300 and metrics["transfer_texts"] == 2_300
    assert metrics["teacher"]["augmented_texts"] == 300


def test_a_pair_is_augmented_text_by_text(tmp_path, tiny_model):
    pairs = make_pairs(1_400, seed=22)
    labelled = write_csv(pairs.iloc[:1_100], tmp_path / "labelled.csv")
    extra = {"text_column": "sentence1,sentence2", "label_columns": "judgment"}
    teacher = teacher_run(tmp_path, tiny_model, labelled, epochs=1, **extra)
    metrics = tl.main(lstm_args(tmp_path, labelled, teacher=teacher, distill_augment=2, epochs=1, **extra))
    assert metrics["augmented_texts"] == 200 and metrics["teacher"]["agreement"] is not None
    frame = augment.augmented_frame(pd.DataFrame({"text": ["a b c d"], "text_pair": ["e f g h"]}), 2, 0, "[MASK]")
    assert list(frame.columns) == ["text", "text_pair"] and len(frame) == 2
    assert all(set(text.split()) <= {"e", "f", "g", "h", "[MASK]"} for text in frame["text_pair"])


def test_an_augmented_run_resumes_to_the_uninterrupted_numbers(tmp_path, imdb_like, teacher, monkeypatch):
    _, labelled, _ = imdb_like
    args = {"teacher": teacher, "distill_augment": 2, "epochs": 2}
    straight = tl.main(lstm_args(tmp_path / "straight", labelled, **args))
    interrupt_at(distill.Distiller, monkeypatch, "loss", 5)
    with pytest.raises(SystemExit):
        tl.main(lstm_args(tmp_path / "resumed", labelled, **args))
    monkeypatch.undo()
    resumed = tl.main([f"--out-dir={tmp_path / 'resumed' / 'out'}", "--resume"])
    assert comparable(resumed) == comparable(straight) and resumed["teacher"] == straight["teacher"]


def test_bad_augment_settings_are_one_line(tmp_path, imdb_like, teacher):
    _, labelled, _ = imdb_like
    fails(tl, lstm_args(tmp_path, labelled, teacher=teacher, distill_augment=-1), "DISTILL_AUGMENT (--distill-augment)")
    fails(tl, lstm_args(tmp_path, labelled, distill_augment=2), "beside a TEACHER (--teacher); got 2 and no teacher")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ DISTILL_HIDDEN
def test_the_hidden_state_loss_by_hand():
    """Two rows of 3 and 2 tokens, two kept layers: per row the mean over its real tokens and the layers of
    1 - cos(student, teacher), summed over the rows, x the weight."""
    torch.manual_seed(0)
    student = [torch.randn(2, 3, 4) for _ in range(3)]  # embeddings, then the two layers' outputs
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    flat = torch.randn(5, 2, 4)  # row 7's 3 tokens, then row 2's 2, each at the two layers
    starts = np.full(10, -1)
    starts[7], starts[2] = 0, 3
    hidden = distill.HiddenStates(flat.to(torch.bfloat16), starts, 0.5)
    loss = hidden.loss(student, mask, [7, 2])
    teacher = flat.to(torch.bfloat16).float()
    expected = 0.0
    for i, (start, length) in enumerate([(0, 3), (3, 2)]):
        terms = [
            1 - F.cosine_similarity(student[k + 1][i, t], teacher[start + t, k], dim=0)
            for t in range(length)
            for k in range(2)
        ]
        expected += sum(terms) / len(terms)
    assert loss.item() == pytest.approx(0.5 * float(expected), rel=1e-5)


def test_a_student_of_the_teachers_layers_learns_its_hidden_states(tmp_path, imdb_like, teacher, capsys):
    _, labelled, unlabelled = imdb_like
    settings = {
        "model_name": teacher / "model",
        "student_layers": 1,
        "teacher": teacher,
        "unlabeled_url": unlabelled,
        "max_length": 64,
        "learning_rate": 3e-3,
        "epochs": 1,
        "tensorboard": False,
        "data_dir": tmp_path / "data",
        **SIZES,
    }
    plain = td.main(cli(data_url=labelled, out_dir=tmp_path / "plain", **settings))
    taught = td.main(cli(data_url=labelled, out_dir=tmp_path / "hidden", distill_hidden=1.0, **settings))
    assert taught["student"]["layers"] == [0] and taught["settings"]["DISTILL_HIDDEN"] == 1.0
    assert taught["epochs"][0]["train_loss"] > plain["epochs"][0]["train_loss"]  # the cosine term is in the loss
    assert list((tmp_path / "data").glob("hidden-*.pt"))
    assert "hidden states of its layers (0) for 2,100 texts" in capsys.readouterr().out
    again = td.main(cli(data_url=labelled, out_dir=tmp_path / "again", distill_hidden=1.0, **settings))
    assert "its hidden states for 2,100 texts from" in capsys.readouterr().out
    assert comparable(again) == comparable(taught)
    card = (tmp_path / "hidden" / "model" / "README.md").read_text()
    assert "| `DISTILL_HIDDEN` | 1.0 |" in card


def test_bad_hidden_state_settings_are_one_line(tmp_path, imdb_like, teacher, tiny_model, small_model):
    _, labelled, _ = imdb_like
    base = {"data_url": labelled, "data_dir": tmp_path / "data", "out_dir": tmp_path / "out", **SIZES}
    mine = {"model_name": teacher / "model", "student_layers": 1, "teacher": teacher}
    cases = [
        ({**mine, "distill_hidden": -1.0}, "DISTILL_HIDDEN (--distill-hidden) must not be negative"),
        ({"model_name": teacher / "model", "student_layers": 1, "distill_hidden": 1.0}, "needs a TEACHER"),
        ({"model_name": teacher / "model", "teacher": teacher, "distill_hidden": 1.0}, "needs a student made from"),
        (
            {**mine, "model_name": small_model, "distill_hidden": 1.0},
            f"{small_model}'s are 64 wide and the teacher's 32",
        ),
        ({**mine, "model_name": tiny_model, "distill_hidden": 1.0}, f"MODEL_NAME {tiny_model} is not the teacher's"),
    ]
    for overrides, message in cases:
        fails(td, cli(**{**base, **overrides}), message)
    assert not (tmp_path / "out").exists()
