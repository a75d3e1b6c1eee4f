"""Both scripts under torchrun (2 processes, gloo, CPU) end where one process ends: the same schedule, the same
batches, the same model to floating-point tolerance, every review evaluated once, and a SIGTERM to torchrun
resumable to the same result."""

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli, make_reviews, write_csv
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

import train_distilbert as td
import train_lstm_baseline as tl

ROOT = Path(__file__).resolve().parents[1]


def torchrun(script, args, cwd=ROOT):
    """Run script under torchrun with 2 processes on this CPU; returns the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )


LOSS_TOLERANCE = 1e-3  # relative: summation order moved a loss by 1.7e-4 on an AVX2 CPU, 1e-5 on an AMX one
FLIPPED = 2  # examples of a split whose prediction may flip: their logits sit within rounding of the boundary


def close(single, parallel):
    """The two runs agree as far as the order of summation lets them. Two processes sum each step's gradient in two
    halves, so float32 rounds differently from the first step on, and training carries that on: how far depends on
    the CPU's kernels (AVX2, AVX-512, AMX), never on whether the runs did the same thing. Losses agree within
    LOSS_TOLERANCE, an accuracy within FLIPPED examples of its split, the example counts and the best epoch exactly
    (the best epoch where no two epochs' validation accuracies sit within FLIPPED examples). A wrong share of the
    data or a gradient averaged wrongly moves the losses by percents."""
    n = parallel["examples"]
    assert n == single["examples"]
    assert len(parallel["epochs"]) == len(single["epochs"])
    for ours, theirs in zip(parallel["epochs"], single["epochs"], strict=True):
        assert set(ours) == set(theirs)
        for key in ours:
            if key == "epoch":
                assert ours[key] == theirs[key]
            elif key.endswith(("loss", "rmse", "pearson", "spearman")):  # losses; regression's root and correlations
                assert ours[key] == pytest.approx(theirs[key], rel=LOSS_TOLERANCE), key
            elif key.endswith("accuracy"):
                split = "train" if key.startswith("train") else "valid"
                assert ours[key] == pytest.approx(theirs[key], abs=FLIPPED / n[split] + 1e-9), key
    if single["test_accuracy"] is not None:  # regression has none
        assert parallel["test_accuracy"] == pytest.approx(single["test_accuracy"], abs=FLIPPED / n["test"] + 1e-9)
    assert parallel["test"]["loss"] == pytest.approx(single["test"]["loss"], rel=LOSS_TOLERANCE)
    valid = sorted(epoch.get("valid_accuracy", epoch.get("valid_pearson")) for epoch in single["epochs"])
    if all(b - a > 2 * FLIPPED / n["valid"] for a, b in itertools.pairwise(valid)):
        assert parallel["best_epoch"] == single["best_epoch"]
    assert parallel["world_size"] == 2 and parallel["devices"] == ["cpu", "cpu"] and single["world_size"] == 1


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    return write_csv(make_reviews(1_100, seed=12), tmp_path_factory.mktemp("data") / "reviews.csv").as_uri()


SIGNAL_AT_STEP = """
import os, signal, sys
sys.path.insert(0, {root!r})
import {script} as script
real, calls = script.batch_loss, []
def batch_loss(*args, **kwargs):  # the training loop's loss: once per batch
    calls.append(1)
    if len(calls) == {step} and os.environ["RANK"] == "{rank}":
        os.kill({target}, signal.{signal})
    return real(*args, **kwargs)
script.batch_loss = batch_loss
script.main(sys.argv[1:])
"""


def test_lstm_under_torchrun_matches_one_process_and_resumes(tmp_path, reviews):
    # 609 training reviews in batches of 32: the last batch holds 1 review for 2 processes; 201 and 199
    # evaluation reviews do not divide by 2; two batches per optimizer step
    settings = {
        "data_url": reviews,
        "data_dir": tmp_path / "data",
        "train_size": 609,
        "valid_size": 201,
        "test_size": 199,
        "vocab_size": 60,
        "embedding_dim": 8,
        "hidden_dim": 16,
        "batch_size": 32,
        "grad_accum_steps": 2,
        "eval_batch_size": 16,
        "epochs": 2,
        "learning_rate": 0.01,
        "log_every": 2,
    }  # under torchrun, a stop request is agreed on every LOG_EVERY optimizer steps
    single = tl.main(cli(**settings, out_dir=tmp_path / "single"))
    done = torchrun("train_lstm_baseline.py", cli(**settings, out_dir=tmp_path / "ddp"))
    assert done.returncode == 0, done.stderr[-3000:]
    close(single, json.loads((tmp_path / "ddp" / "metrics.json").read_text()))
    ours, theirs = (torch.load(tmp_path / name / "model.pt", weights_only=True)["model"] for name in ("single", "ddp"))
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) < 1e-4
    assert "error" not in done.stdout and done.stdout.count("best epoch") == 1  # rank 0 alone prints

    # SIGTERM to torchrun, which forwards it to every process
    (tmp_path / "interrupt.py").write_text(
        SIGNAL_AT_STEP.format(
            root=str(ROOT), script="train_lstm_baseline", step=5, rank=0, target="os.getppid()", signal="SIGTERM"
        )
    )
    stopped = torchrun(tmp_path / "interrupt.py", cli(**settings, out_dir=tmp_path / "resumed"))
    assert stopped.returncode != 0 and (tmp_path / "resumed" / "checkpoint.pt").exists()
    assert (
        f"interrupted (SIGTERM): the run is saved in {tmp_path / 'resumed' / 'checkpoint.pt'}; continue it "
        f"with: torchrun <its options> train_lstm_baseline.py --out-dir {tmp_path / 'resumed'} --resume"
    ) in stopped.stderr
    assert stopped.stderr.count("interrupted (SIGTERM)") == 1  # one line, from rank 0
    assert (
        "--resume (machines that share no filesystem need a copy of it at that path first; torchrun reports the "
        "stop as a failure, the checkpoint is complete)"
    ) in stopped.stderr
    state = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["state"]
    assert state["batch"] == 8  # both processes stopped after the same optimizer step: the 4th (2 batches each)
    resumed = torchrun("train_lstm_baseline.py", [f"--out-dir={tmp_path / 'resumed'}", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    close(single, json.loads((tmp_path / "resumed" / "metrics.json").read_text()))


def test_distilbert_under_torchrun_matches_one_process(tmp_path, reviews, tiny_model):
    model = tmp_path / "no-dropout"  # dropout draws differ per process: off, the runs compare exactly
    config = AutoConfig.from_pretrained(tiny_model)
    config.update({"dropout": 0.0, "attention_dropout": 0.0, "seq_classif_dropout": 0.0})
    AutoModelForSequenceClassification.from_pretrained(tiny_model, config=config).save_pretrained(model)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(model)
    # 611 training reviews in batches of 16: the last batch holds 3 reviews for 2 processes
    settings = {
        "data_url": reviews,
        "data_dir": tmp_path / "data",
        "model_name": model,
        "train_size": 611,
        "valid_size": 201,
        "test_size": 199,
        "max_length": 32,
        "grad_accum_steps": 3,
        "eval_batch_size": 16,
        "epochs": 2,
        "learning_rate": 3e-3,
        "precision": "fp32",
    }  # bf16 rounds each process's share apart
    single = td.main(cli(**settings, out_dir=tmp_path / "single"))
    done = torchrun("train_distilbert.py", cli(**settings, out_dir=tmp_path / "ddp"))
    assert done.returncode == 0, done.stderr[-3000:]
    close(single, json.loads((tmp_path / "ddp" / "metrics.json").read_text()))
    start, ours, theirs = (
        AutoModelForSequenceClassification.from_pretrained(path).state_dict()
        for path in (model, tmp_path / "single" / "model", tmp_path / "ddp" / "model")
    )
    assert set(ours) == set(theirs) and not any(key.startswith("module.") for key in theirs)
    # Adam divides by the gradient's own size, so a weight whose gradient is near 0 may move by a whole step in one
    # run and not the other: the weights agree as a whole, to a hundredth of how far training moved them
    moved = sum((ours[k] - start[k]).abs().sum().item() for k in ours)
    apart = sum((ours[k] - theirs[k]).abs().sum().item() for k in ours)
    assert apart < moved / 100, (apart, moved)


def test_a_process_that_dies_ends_the_run_naming_it_not_a_hang(tmp_path, reviews):
    # one process dies (out of host memory, a lost node)
    (tmp_path / "die.py").write_text(
        SIGNAL_AT_STEP.format(
            root=str(ROOT), script="train_lstm_baseline", step=3, rank=1, target="os.getpid()", signal="SIGKILL"
        )
    )
    done = torchrun(
        tmp_path / "die.py",
        cli(
            data_url=reviews,
            data_dir=tmp_path / "data",
            train_size=600,
            valid_size=200,
            test_size=200,
            vocab_size=60,
            embedding_dim=8,
            hidden_dim=16,
            batch_size=16,
            out_dir=tmp_path / "out",
        ),
    )
    assert done.returncode != 0
    cause = done.stderr[done.stderr.index("Root Cause") :]
    assert "rank      : 1" in cause and "SIGKILL" in cause


def test_under_torchrun_all_processes_stop_early_together(tmp_path, reviews):
    """A learning rate of 1e-12 leaves the validation accuracy where epoch 1 put it: PATIENCE 1 ends the run
    after epoch 2 in every process (a process that went on alone would hang the next all-reduce)."""
    settings = {
        "data_url": reviews,
        "data_dir": tmp_path / "data",
        "train_size": 600,
        "valid_size": 200,
        "test_size": 200,
        "vocab_size": 60,
        "embedding_dim": 8,
        "hidden_dim": 16,
        "batch_size": 32,
        "epochs": 4,
        "patience": 1,
        "learning_rate": 1e-12,
    }
    single = tl.main(cli(**settings, out_dir=tmp_path / "single"))
    done = torchrun("train_lstm_baseline.py", cli(**settings, out_dir=tmp_path / "ddp"))
    assert done.returncode == 0, done.stderr[-3000:]
    parallel = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert single["stopped_early_at"] == parallel["stopped_early_at"] == 2
    assert len(parallel["epochs"]) == 2 and parallel["world_size"] == 2
    assert done.stdout.count("stopping early") == 1  # rank 0 alone prints


@pytest.mark.parametrize("name", ["lstm", "distilbert"])
def test_a_batch_of_one_review_on_two_processes_trains_as_one_process(tmp_path, reviews, tiny_model, name):
    """--batch-size 1 on 2 processes: every batch leaves rank 1 a stand-in of weight 0, and the run is still the
    one-process run (it divided by rank 1's count of real reviews, 0, before)."""
    settings = {
        "data_url": reviews,
        "data_dir": tmp_path / "data",
        "train_size": 40,
        "valid_size": 21,
        "test_size": 19,
        "batch_size": 1,
        "epochs": 1,
    }
    if name == "lstm":
        module, settings = tl, {**settings, "vocab_size": 60, "embedding_dim": 8, "hidden_dim": 16}
    else:
        module, settings = td, {**settings, "model_name": tiny_model, "max_length": 32, "learning_rate": 3e-3}
    single = module.main(cli(**settings, out_dir=tmp_path / "single"))
    done = torchrun(f"{module.__name__}.py", cli(**settings, out_dir=tmp_path / "ddp"))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    parallel = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    if name == "lstm":  # no dropout: the same numbers
        close(single, parallel)
    assert parallel["world_size"] == 2 and len(parallel["epochs"]) == 1


def test_distilbert_with_dropout_resumed_under_torchrun_ends_with_the_uninterrupted_weights(tmp_path, tiny_model):
    """Dropout draws differ between processes (their shares of a batch differ in shape): each process's random state
    goes into the checkpoint. With rank 0's state restored in both, the resumed weights were 5e-4 off."""
    csv = write_csv(make_reviews(400, seed=13, min_words=1, max_words=30), tmp_path / "reviews.csv")
    settings = {
        "data_url": csv.as_uri(),
        "data_dir": tmp_path / "data",
        "model_name": tiny_model,
        "train_size": 300,
        "valid_size": 50,
        "test_size": 50,
        "max_length": 32,
        "epochs": 1,
        "learning_rate": 3e-3,
        "precision": "fp32",
        "log_every": 1,
    }
    straight = torchrun("train_distilbert.py", cli(**settings, out_dir=tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    (tmp_path / "interrupt.py").write_text(
        SIGNAL_AT_STEP.format(
            root=str(ROOT), script="train_distilbert", step=6, rank=1, target="os.getppid()", signal="SIGTERM"
        )
    )
    stopped = torchrun(tmp_path / "interrupt.py", cli(**settings, out_dir=tmp_path / "resumed"))
    assert stopped.returncode != 0, stopped.stderr[-3000:]
    # torchrun passes the SIGTERM on to both processes: they stop together after step 6, or after step 7 where a
    # loaded machine delivers it a step later (the check is after each step here: LOG_EVERY 1)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["state"]["batch"] in (6, 7)
    resumed = torchrun("train_distilbert.py", [f"--out-dir={tmp_path / 'resumed'}", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ours, theirs = (
        AutoModelForSequenceClassification.from_pretrained(tmp_path / name / "model").state_dict()
        for name in ("straight", "resumed")
    )
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


NODE = """
import sys
sys.path.insert(0, {root!r})
import train_distilbert
train_distilbert.main(sys.argv[1:])
"""


def test_two_machines_that_share_no_filesystem_finish_with_metrics_on_the_first(tmp_path, tiny_model):
    """Two torchrun "machines" (--nnodes 2, one process each) in two working directories, with relative DATA_DIR and
    OUT_DIR: each prepares its own data; rank 0 alone writes results, and nothing after training reads them."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    csv = write_csv(make_reviews(300, seed=14), tmp_path / "reviews.csv")
    args = cli(
        data_url=csv,
        data_dir="data",
        out_dir="runs/two",
        model_name=tiny_model,
        train_size=200,
        valid_size=50,
        test_size=50,
        max_length=32,
        epochs=1,
        learning_rate=3e-3,
    )
    nodes = []
    for rank in (0, 1):
        (tmp_path / f"node{rank}").mkdir()
        (tmp_path / f"node{rank}" / "node.py").write_text(NODE.format(root=str(ROOT)))
        nodes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--nnodes=2",
                    "--nproc_per_node=1",
                    f"--node-rank={rank}",
                    "--master-addr=127.0.0.1",
                    f"--master-port={port}",
                    "node.py",
                    *args,
                ],
                cwd=tmp_path / f"node{rank}",
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        )
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    metrics = json.loads((tmp_path / "node0" / "runs" / "two" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["devices"] == ["cpu", "cpu"]
    assert not (tmp_path / "node1" / "runs" / "two" / "metrics.json").exists()
    for rank in (0, 1):  # each machine downloaded nothing, and tokenized into its own DATA_DIR
        assert list((tmp_path / f"node{rank}" / "data").glob("tokens-*.pt"))


def test_a_data_error_under_torchrun_is_one_line_and_every_process_stops(tmp_path):
    """Rank 0 printed the error line, then rank 1 died in the barrier with gloo's traceback ("Connection closed by
    peer"). Now the others learn of the failure and stop quietly; torchrun reports the exit status."""
    csv = write_csv(make_reviews(300).rename(columns={"review": "body"}), tmp_path / "bad.csv")
    done = torchrun(
        "train_lstm_baseline.py",
        cli(
            data_url=csv,
            data_dir=tmp_path / "data",
            out_dir=tmp_path / "out",
            train_size=200,
            valid_size=50,
            test_size=50,
        ),
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and "has no review column" in errors[0], done.stderr[-3000:]
    assert "Connection closed by peer" not in done.stderr and "gloo" not in done.stderr, done.stderr[-3000:]
