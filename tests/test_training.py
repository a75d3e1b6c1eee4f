"""textclf.training through both scripts: an interrupted run resumes to the uninterrupted result, --resume keeps
the run's own settings and data, PATIENCE stops a run that stopped improving, a diverging loss or an
out-of-memory error stops with advice, and a run's reference cycles are freed before its process group. CPU,
offline."""

import gc
import os
import signal
import weakref

import pytest
import torch
from conftest import make_reviews, write_csv
from test_reliability import SCRIPTS, fails, files_under, lstm_args

import train_distilbert as td
import train_lstm_baseline as tl
from textclf import training


@pytest.fixture(params=SCRIPTS)
def script(request):
    return SCRIPTS[request.param]


# ------------------------------------------------------------------------------------- interruption and resume
def comparable(metrics):
    """Every number of a run but its wall-clock seconds, in order."""
    return [value for record in metrics["epochs"] for key, value in record.items() if key != "seconds"] + [
        metrics[key] for key in ("best_epoch", "valid_accuracy", "test_accuracy")
    ]


def interrupt_at(module, monkeypatch, function, call):
    """Make the call-th call of module.function deliver a real SIGINT (Ctrl-C) to this process."""
    real, calls = getattr(module, function), []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, function, wrapped)


@pytest.mark.parametrize("stop_at", ["mid-epoch", "end of epoch 1", "the last validation", "the test"])
def test_ctrl_c_saves_a_checkpoint_and_resume_gives_the_uninterrupted_result(
    script, tmp_path, tiny_model, monkeypatch, capsys, stop_at
):
    module, args = script
    csv = write_csv(make_reviews(1_000, seed=7), tmp_path / "reviews.csv")
    extra = {"model": tiny_model} if module is td else {}
    straight = module.main(args(tmp_path / "straight", csv.as_uri(), **extra))

    if stop_at == "mid-epoch":
        interrupt_at(module, monkeypatch, "batch_loss", 5)
    else:  # Ctrl-C while epoch 1 or 2 (the last: it was ignored, and the run went on to exit 0) or the test is evaluated
        interrupt_at(
            module, monkeypatch, "evaluate", {"end of epoch 1": 1, "the last validation": 2, "the test": 3}[stop_at]
        )
    with pytest.raises(SystemExit) as exit:
        module.main(args(tmp_path / "resumed", csv.as_uri(), **extra))
    assert exit.value.code == 130
    err = capsys.readouterr().err
    out_dir = tmp_path / "resumed" / "out"
    assert f"the run is saved in {out_dir / 'checkpoint.pt'}" in err
    assert f"--out-dir {out_dir} --resume" in err
    assert (out_dir / "checkpoint.pt").exists() and not (out_dir / "metrics.json").exists()
    assert not [p for p in files_under(out_dir) if p.endswith(".tmp") or p.startswith(".")]

    # a fresh run into the same folder would destroy the checkpoint: refused
    fails(
        module,
        args(tmp_path / "resumed", csv.as_uri(), **extra),
        "holds an unfinished run",
        "continue it with --resume",
    )
    monkeypatch.undo()
    if stop_at == "end of epoch 1":  # a checkpoint written before PATIENCE existed resumes the same
        checkpoint = torch.load(out_dir / "checkpoint.pt", weights_only=True)
        del checkpoint["state"]["stopped_early_at"], checkpoint["settings"]["PATIENCE"]
        torch.save(checkpoint, out_dir / "checkpoint.pt")
    resumed = module.main([f"--out-dir={out_dir}", "--resume"])
    assert comparable(resumed) == pytest.approx(comparable(straight), rel=1e-5)
    assert not (out_dir / "checkpoint.pt").exists()


def test_a_second_ctrl_c_stops_at_once(script, tmp_path, tiny_model, monkeypatch, capsys):
    module, args = script
    csv = write_csv(make_reviews(1_000), tmp_path / "reviews.csv")
    real_batch_loss, calls = module.batch_loss, []

    def wrapped(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the first asks for a checkpoint after this step
            os.kill(os.getpid(), signal.SIGINT)  # the second stops here, before the step
        return real_batch_loss(*a, **k)

    monkeypatch.setattr(module, "batch_loss", wrapped)
    extra = {"model": tiny_model} if module is td else {}
    with pytest.raises(SystemExit) as exit:
        module.main(args(tmp_path, csv.as_uri(), **extra))
    err = capsys.readouterr().err
    assert exit.value.code == 130 and len(calls) == 3
    assert "SIGINT: saving a checkpoint after this step (Ctrl-C again to quit now)" in err
    assert err.strip().splitlines()[-1] == "interrupted (SIGINT): nothing to resume"
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_resume_refuses_other_settings_other_data_or_no_checkpoint(tmp_path, monkeypatch):
    csv = write_csv(make_reviews(1_000, seed=8), tmp_path / "reviews.csv")
    fails(
        tl, lstm_args(tmp_path, csv.as_uri(), resume=True), "nothing to resume", str(tmp_path / "out" / "checkpoint.pt")
    )
    interrupt_at(tl, monkeypatch, "batch_loss", 3)
    with pytest.raises(SystemExit):
        tl.main(lstm_args(tmp_path, csv.as_uri()))
    monkeypatch.undo()
    fails(
        tl,
        [f"--out-dir={tmp_path / 'out'}", "--resume", "--epochs=5", "--hidden-dim=16"],
        "these differ: EPOCHS (5, the run has 2)",
    )
    write_csv(make_reviews(1_000, seed=9), tmp_path / "data" / "reviews.csv")  # the data changed underneath
    fails(
        tl,
        [f"--out-dir={tmp_path / 'out'}", "--resume"],
        "is not the file the checkpoint was trained on",
        "put the original back to resume, or start over without --resume in another --out-dir",
    )


def test_a_run_on_a_relative_data_path_resumes_from_another_folder(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    write_csv(make_reviews(1_000, seed=8), tmp_path / "here" / "reviews.csv")
    monkeypatch.chdir(tmp_path / "here")
    interrupt_at(tl, monkeypatch, "batch_loss", 3)
    with pytest.raises(SystemExit):
        tl.main(lstm_args(tmp_path, "reviews.csv"))
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path / "elsewhere")
    checkpoint = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    assert checkpoint["settings"]["DATA_URL"] == str(tmp_path / "here" / "reviews.csv")
    out = f"--out-dir={tmp_path / 'out'}"
    (tmp_path / "here" / "reviews.csv").rename(tmp_path / "elsewhere" / "moved.csv")  # the data moved
    fails(
        tl,
        [out, "--resume"],
        f"the run's data file {tmp_path / 'here' / 'reviews.csv'} is not there; if it moved, "
        "continue with --resume --data-url NEW_PATH",
    )
    write_csv(make_reviews(1_000, seed=9), tmp_path / "elsewhere" / "other.csv")
    fails(tl, [out, "--resume", "--data-url=other.csv"], "other.csv is not the file the checkpoint was trained on")
    metrics = tl.main([out, "--resume", "--data-url=moved.csv"])  # the same file, by its checksum
    assert len(metrics["epochs"]) == 2 and metrics["settings"]["DATA_URL"] == str(tmp_path / "elsewhere" / "moved.csv")


def test_the_resume_command_is_quoted_for_the_shell(tmp_path, monkeypatch, capsys):
    csv = write_csv(make_reviews(1_000, seed=8), tmp_path / "reviews.csv")
    interrupt_at(tl, monkeypatch, "batch_loss", 3)
    with pytest.raises(SystemExit):
        tl.main(lstm_args(tmp_path, csv.as_uri(), out_dir=tmp_path / "my runs" / "lstm"))
    assert f"--out-dir '{tmp_path / 'my runs' / 'lstm'}' --resume" in capsys.readouterr().err


def test_a_damaged_checkpoint_is_one_line_and_left_alone(tmp_path, monkeypatch):
    csv = write_csv(make_reviews(1_000, seed=8), tmp_path / "reviews.csv")
    interrupt_at(tl, monkeypatch, "batch_loss", 3)
    with pytest.raises(SystemExit):
        tl.main(lstm_args(tmp_path, csv.as_uri()))
    monkeypatch.undo()
    checkpoint = tmp_path / "out" / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:5000])  # a disk that lost its end
    fails(
        tl,
        [f"--out-dir={tmp_path / 'out'}", "--resume"],
        f"{checkpoint} is damaged (",
        "cannot be resumed; restore it, or delete it to start the run over",
    )
    assert checkpoint.stat().st_size == 5000


# ------------------------------------------------------------------------------------- failures during training
def test_non_finite_loss_stops_with_the_step_and_the_setting_to_change(script, tmp_path, tiny_model, monkeypatch):
    module, args = script
    csv = write_csv(make_reviews(1_000), tmp_path / "reviews.csv")
    real_batch_loss, calls = module.batch_loss, []

    def poisoned(*a, **k):  # the 7th batch's loss overflows
        calls.append(1)
        loss_sum, correct = real_batch_loss(*a, **k)
        return (loss_sum * float("inf") if len(calls) == 7 else loss_sum), correct

    monkeypatch.setattr(module, "batch_loss", poisoned)
    extra = {"model": tiny_model} if module is td else {}
    fails(
        module,
        args(tmp_path, csv.as_uri(), log_every=5, **extra),
        "training diverged at epoch 1, batch 7: the loss is inf",
        "lower --learning-rate",
    )
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_weights_that_diverge_in_the_last_step_are_never_kept(script, tmp_path, tiny_model, monkeypatch):
    """The training loss of every batch is finite, but the last step of epoch 2 leaves the weights NaN (as a
    too-large step can): validation says so, and the epoch 1 model stays, finite, with no metrics.json."""
    module, args = script
    csv = write_csv(make_reviews(1_000), tmp_path / "reviews.csv")
    batches = 38 if module is td else 19  # 600 reviews in batches of 16 and 32
    optimizer = torch.optim.AdamW if module is td else torch.optim.Adam
    real_step, calls = optimizer.step, []

    def poisoned(self, *a, **k):  # the optimizer step after the last batch of epoch 2 leaves NaN weights
        calls.append(1)
        result = real_step(self, *a, **k)
        if len(calls) == 2 * batches:
            with torch.no_grad():
                for group in self.param_groups:
                    for parameter in group["params"]:
                        parameter.fill_(float("nan"))
        return result

    monkeypatch.setattr(optimizer, "step", poisoned)
    extra = {"model": tiny_model} if module is td else {}
    fails(
        module,
        args(tmp_path, csv.as_uri(), **extra),
        "training diverged after epoch 2: the validation logits are not finite",
        "lower --learning-rate",
        "Nothing of this epoch was kept",
    )
    out = tmp_path / "out"
    assert not (out / "metrics.json").exists() and (out / "checkpoint.pt").exists()  # epoch 1's, to go back to
    if module is tl:
        saved = torch.load(out / "model.pt", weights_only=True)
        assert saved["epoch"] == 1 and all(torch.isfinite(w).all() for w in saved["model"].values())
    else:
        from safetensors.torch import load_file

        assert all(torch.isfinite(w).all() for w in load_file(out / "model" / "model.safetensors").values())


def test_a_validation_loss_beyond_float32_stops_the_run(script, tmp_path, tiny_model, monkeypatch):
    """Finite logits whose loss is not (a margin of 6e38 overflows float32): the model is not kept either."""
    module, args = script
    csv = write_csv(make_reviews(1_000), tmp_path / "reviews.csv")
    monkeypatch.setattr(
        module,
        "evaluate",
        lambda model, batches, *a, **k: torch.tensor([[3e38, -3e38]]).repeat(sum(map(len, batches)), 1),
    )
    extra = {"model": tiny_model} if module is td else {}
    fails(module, args(tmp_path, csv.as_uri(), **extra), "training diverged after epoch 1: the validation loss is inf")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_learning_rate_beyond_float32_is_one_line(script, tmp_path, tiny_model):
    module, args = script
    csv = write_csv(make_reviews(1_000), tmp_path / "reviews.csv")
    extra = {"model": tiny_model} if module is td else {}
    tip = "or try --precision fp32" if module is td else "or set --grad-clip 1"  # what each run has not tried yet
    fails(
        module,
        args(tmp_path, csv.as_uri(), learning_rate=1e38, **extra),
        "training diverged at epoch 1",
        f"lower --learning-rate (now 1e+38) {tip}. Nothing",
    )
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_out_of_memory_gives_the_batch_size_advice(script, tmp_path, tiny_model, monkeypatch):
    module, args = script
    csv = write_csv(make_reviews(1_000), tmp_path / "reviews.csv")

    def out_of_memory(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(module, "batch_loss", out_of_memory)
    extra = {"model": tiny_model} if module is td else {}
    text = fails(
        module,
        args(tmp_path, csv.as_uri(), batch_size=16, **extra),
        "out of GPU memory",
        "lower --batch-size (e.g. 8) and raise --grad-accum-steps (e.g. 2) for the same effective batch",
    )
    assert "--batch-size 16" in text


# ------------------------------------------------------------------------------------- early stopping
def no_progress(script, tmp_path, tiny_model, **overrides):
    """args for a run whose validation score cannot improve (a learning rate of 1e-12 leaves the logits as they
    were), 4 epochs with PATIENCE 2: it stops after epoch 3."""
    module, args = script
    tmp_path.mkdir(exist_ok=True)
    csv = write_csv(make_reviews(1_000, seed=10), tmp_path / "reviews.csv")
    extra = {"model": tiny_model} if module is td else {}
    return args(tmp_path, csv.as_uri(), epochs=4, patience=2, learning_rate=1e-12, **extra, **overrides)


def test_patience_stops_the_run_and_says_so(script, tmp_path, tiny_model, capsys):
    module, _ = script
    metrics = module.main(no_progress(script, tmp_path, tiny_model))
    out = capsys.readouterr().out
    assert [record["epoch"] for record in metrics["epochs"]] == [1, 2, 3]
    assert metrics["stopped_early_at"] == 3 and metrics["best_epoch"] == 1
    assert "epoch 3: no better validation accuracy for 2 epochs (PATIENCE): stopping early, best epoch 1" in out
    assert "epoch 4/4" not in capsys.readouterr().err and metrics["settings"]["PATIENCE"] == 2


def test_patience_off_runs_every_epoch(tmp_path):
    csv = write_csv(make_reviews(1_000, seed=10), tmp_path / "reviews.csv")
    metrics = tl.main(lstm_args(tmp_path, csv.as_uri(), epochs=3, learning_rate=1e-12))
    assert len(metrics["epochs"]) == 3 and metrics["stopped_early_at"] is None and metrics["best_epoch"] == 1
    fails(tl, lstm_args(tmp_path, csv.as_uri(), patience=-1), "PATIENCE (--patience) must be 0 (off)")


def test_a_run_interrupted_after_its_early_stop_resumes_to_the_same_stop(script, tmp_path, tiny_model, monkeypatch):
    module, _ = script
    straight = module.main(no_progress(script, tmp_path / "straight", tiny_model))
    interrupt_at(module, monkeypatch, "evaluate", 4)  # validation of epochs 1-3, then the final test
    with pytest.raises(SystemExit) as exit:
        module.main(no_progress(script, tmp_path / "resumed", tiny_model))
    assert exit.value.code == 130
    out_dir = tmp_path / "resumed" / "out"
    state = torch.load(out_dir / "checkpoint.pt", weights_only=True)["state"]
    assert state["stopped_early_at"] == 3 and state["epoch"] == 4
    monkeypatch.undo()
    resumed = module.main([f"--out-dir={out_dir}", "--resume"])
    assert resumed["stopped_early_at"] == 3 and len(resumed["epochs"]) == 3
    assert comparable(resumed) == pytest.approx(comparable(straight), rel=1e-5)


# ------------------------------------------------------------------------------------------ torchrun at exit
def test_what_a_run_leaves_in_reference_cycles_is_freed_before_its_process_group(tmp_path, monkeypatch):
    """A DDP wrapper is a reference cycle, freed only by the cycle collector. main() collects before it destroys
    the process group: left to the interpreter's exit, a gloo process sometimes aborted there ("terminate called
    without an active exception") after a finished run."""

    class Wrapper:
        pass

    cycles, freed = [], []

    def run(settings, given, held):
        wrapper = Wrapper()
        wrapper.itself = wrapper
        cycles.append(weakref.ref(wrapper))

    monkeypatch.setattr(training.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(training.dist, "destroy_process_group", lambda: freed.append(cycles[0]() is None))
    gc.disable()  # no collection by chance in between
    try:
        training.main(run, {"OUT_DIR": str(tmp_path)}, None, [])
    finally:
        gc.enable()
    assert freed == [True]


# ------------------------------------------------------------------------------------- the loop's batches
def test_batches_say_when_the_optimizer_steps_and_over_how_many_examples(tmp_path, monkeypatch):
    """600 reviews in batches of 32 (one of 24, somewhere: the batches are shuffled) and 3 batches a step: the
    optimizer steps after batches 3, 6, ... 18 and after the last (19); each batch's summed loss is divided by its
    step's examples (96, or 88 for the step with the short batch, or the last step's)."""
    seen, real = [], training.Run.record

    def record(self, batch, *rest):
        seen.append((batch.index, batch.ends_step, batch.step_examples, batch.weight, len(batch.tensors[2])))
        return real(self, batch, *rest)

    monkeypatch.setattr(training.Run, "record", record)
    csv = write_csv(make_reviews(1_000, seed=8), tmp_path / "reviews.csv")
    tl.main(lstm_args(tmp_path, csv.as_uri(), epochs=1, grad_accum_steps=3))
    assert [index for index, *_ in seen] == list(range(19))
    assert [index + 1 for index, ends, *_ in seen if ends] == [3, 6, 9, 12, 15, 18, 19]
    sizes = [size for *_, size in seen]
    assert sorted(sizes) == [24] + [32] * 18 and all(weight == 1 for *_, weight, _ in seen)
    assert [examples for _, _, examples, *_ in seen] == [sum(sizes[i - i % 3 : i - i % 3 + 3]) for i in range(19)]
