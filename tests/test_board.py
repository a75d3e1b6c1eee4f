"""textclf.board through both scripts: TensorBoard curves that tensorboard's own reader reads back, and a resumed run
that continues them without a step twice. CPU, offline."""

import shutil

import pytest
from conftest import make_reviews, write_csv
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_reliability import SCRIPTS
from test_training import interrupt_at

import train_distilbert as td
import train_lstm_baseline as tl

EVERY_BATCH = ["train/loss", "train/grad_norm", "train/reviews_per_second"]
EVERY_EPOCH = ["train/epoch_loss", "train/epoch_accuracy", "valid/loss", "valid/accuracy"]


def curves(out_dir):
    """{tag: [(step, value), ...]} of the run's one TensorBoard folder, as tensorboard reads it."""
    [folder] = (out_dir / "tensorboard").iterdir()
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}, events


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_run_writes_its_curves_for_tensorboard(tmp_path, tiny_model, name):
    module, args = SCRIPTS[name]
    csv = write_csv(make_reviews(1_000), tmp_path / "reviews.csv")
    extra = {"model": tiny_model, "lr_decay": 0.8} if module is td else {}
    metrics = module.main(args(tmp_path, csv.as_uri(), log_every=5, **extra))
    scalars, events = curves(tmp_path / "out")
    rates = ["train/learning_rate_top", "train/learning_rate_bottom"] if module is td else ["train/learning_rate"]
    for tag in EVERY_BATCH + EVERY_EPOCH + rates + ["test/accuracy", "test/loss", "test/macro_f1"]:
        assert scalars.get(tag), tag
    steps = 38 if module is td else 19  # optimizer steps an epoch: 600 reviews in batches of 16 and 32
    assert [step for step, _ in scalars["valid/accuracy"]] == [steps, 2 * steps]
    assert [value for _, value in scalars["valid/accuracy"]] == pytest.approx(
        [e["valid_accuracy"] for e in metrics["epochs"]]
    )  # float32
    assert scalars["test/accuracy"] == [(2 * steps, pytest.approx(metrics["test_accuracy"]))]
    assert [step for step, _ in scalars["train/loss"]][:3] == [5, 10, 15] and scalars["train/loss"][-1][0] == 2 * steps
    if module is td:  # layer-wise rates: the head's above the embeddings'
        assert all(
            top > bottom
            for (_, top), (_, bottom) in zip(
                scalars["train/learning_rate_top"], scalars["train/learning_rate_bottom"], strict=True
            )
        )
    assert all(value > 0 for _, value in scalars["train/grad_norm"] + scalars["train/reviews_per_second"])
    assert events.PluginTagToContent("hparams")  # the settings beside the final scores
    assert scalars["hparam/test_accuracy"][0][1] == pytest.approx(metrics["test_accuracy"])


def test_tensorboard_off_writes_nothing(tmp_path):
    csv = write_csv(make_reviews(1_000), tmp_path / "reviews.csv")
    SCRIPTS["lstm"][0].main(SCRIPTS["lstm"][1](tmp_path, csv.as_uri(), epochs=1, tensorboard=False))
    assert not (tmp_path / "out" / "tensorboard").exists()


def test_a_resumed_run_continues_its_curves_without_a_step_twice(tmp_path, monkeypatch):
    """Stopped after epoch 1, resumed, stopped 5 steps into epoch 2, then put back to the end-of-epoch-1 checkpoint
    (as a kill would: curves written after the last checkpoint) and resumed to the end: every step once, and the
    curves those of an uninterrupted run."""
    _, args = SCRIPTS["lstm"]
    csv = write_csv(make_reviews(1_000), tmp_path / "reviews.csv")
    settings = {"log_every": 1, "epochs": 2}
    tl.main(args(tmp_path / "straight", csv.as_uri(), **settings))
    out = tmp_path / "resumed" / "out"
    interrupt_at(tl, monkeypatch, "evaluate", 1)
    with pytest.raises(SystemExit):
        tl.main(args(tmp_path / "resumed", csv.as_uri(), **settings))
    shutil.copy(out / "checkpoint.pt", tmp_path / "end-of-epoch-1.pt")
    monkeypatch.undo()
    interrupt_at(tl, monkeypatch, "batch_loss", 5)
    with pytest.raises(SystemExit):
        tl.main([f"--out-dir={out}", "--resume"])
    monkeypatch.undo()
    shutil.copy(tmp_path / "end-of-epoch-1.pt", out / "checkpoint.pt")
    tl.main([f"--out-dir={out}", "--resume"])
    resumed, _ = curves(out)
    straight, _ = curves(tmp_path / "straight" / "out")
    for tag in ["train/loss", "train/grad_norm", "valid/accuracy", "test/accuracy"]:
        steps = [step for step, _ in resumed[tag]]
        assert steps == sorted(set(steps)) and steps == [step for step, _ in straight[tag]], tag
        assert [v for _, v in resumed[tag]] == pytest.approx([v for _, v in straight[tag]], rel=1e-5), tag


def test_accumulated_batches_log_once_a_step(tmp_path):
    """LOG_EVERY 1 with 3 batches a step: one point a step, not three at the same step."""
    csv = write_csv(make_reviews(1_000), tmp_path / "reviews.csv")
    tl.main(SCRIPTS["lstm"][1](tmp_path, csv.as_uri(), epochs=1, log_every=1, grad_accum_steps=3))
    scalars, _ = curves(tmp_path / "out")
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5, 6, 7]  # 19 batches, 7 steps


def test_without_the_tensorboard_package_a_run_says_what_to_do(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(
        builtins,
        "__import__",
        lambda name, *a, **k: (
            (_ for _ in ()).throw(ImportError(name))
            if name == "torch.utils.tensorboard"
            else real_import(name, *a, **k)
        ),
    )
    csv = write_csv(make_reviews(1_000), tmp_path / "reviews.csv")
    from test_reliability import fails

    fails(
        tl,
        SCRIPTS["lstm"][1](tmp_path, csv.as_uri(), epochs=1),
        "TENSORBOARD needs the tensorboard package: pip install tensorboard, or pass --tensorboard false",
    )
