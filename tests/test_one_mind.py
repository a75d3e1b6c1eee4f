"""One run, one mind: every process and machine of a torchrun run agrees (stop requests, errors, divergence, data,
precision), torchrun's variables count only from torchrun, and the newest files (TensorBoard, the model card,
temporary names, the other script's model and checkpoint) fail cleanly. gloo on the CPU; two "machines" are two
working directories with a static rendezvous on 127.0.0.1."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import cli, make_reviews, write_csv
from huggingface_hub import ModelCard
from test_distributed import SIGNAL_AT_STEP, torchrun
from test_faults import hidden, signal_at
from test_reliability import fails

import compare
import predict
import textclf.parallel
import train_distilbert as td
import train_lstm_baseline as tl
from textclf.card import model_card
from textclf.runfolder import atomic_write

ROOT = Path(__file__).resolve().parents[1]
LSTM = {
    "train_size": 200,
    "valid_size": 50,
    "test_size": 50,
    "vocab_size": 60,
    "embedding_dim": 8,
    "hidden_dim": 16,
    "batch_size": 16,
    "epochs": 2,
    "log_every": 2,
    "tensorboard": False,
}


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    return write_csv(make_reviews(300, seed=31), tmp_path_factory.mktemp("data") / "reviews.csv")


def errors(text):
    return [line for line in text.splitlines() if line.startswith("error: ")]


def ours(text):
    """What the run's processes printed: torchrun's own failure report (a traceback of the launcher) cut off."""
    return text.split("torch/distributed/elastic/multiprocessing/api.py")[0]


def machines(tmp_path, script, args, node_args=((), ()), seconds=150):
    """Two torchrun "machines" of one process each, in tmp_path/node0 and node1 (args, plus node_args[rank] there):
    [(exit status, stdout, stderr)] of each. A run that does not end within seconds is a hang: the test fails."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nodes = []
    for rank in (0, 1):
        (tmp_path / f"node{rank}").mkdir(exist_ok=True)
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
                    str(script),
                    *args,
                    *node_args[rank],
                ],
                cwd=tmp_path / f"node{rank}",
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
            )
        )
    try:
        outputs = [node.communicate(timeout=seconds) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    return [(node.returncode, *output) for node, output in zip(nodes, outputs, strict=True)]


# ------------------------------------------------------------------------------------- A1: a stop request
@pytest.mark.parametrize("where", ["training", "the final test"])
def test_a_stop_request_to_one_process_stops_every_process_with_one_resume_line(tmp_path, reviews, where):
    settings = cli(**LSTM, data_url=reviews, data_dir=tmp_path / "data", out_dir=tmp_path / "out")
    if where == "training":  # SIGTERM to rank 1 alone, at its 3rd batch
        code = SIGNAL_AT_STEP.format(
            root=str(ROOT), script="train_lstm_baseline", step=3, rank=1, target="os.getpid()", signal="SIGTERM"
        )
    else:  # during rank 1's test evaluation (after 2 validations), where it once died alone
        code = SIGNAL_AT_STEP.format(
            root=str(ROOT), script="train_lstm_baseline", step=3, rank=1, target="os.getpid()", signal="SIGTERM"
        ).replace("batch_loss", "evaluate")
    (tmp_path / "stop.py").write_text(code)
    stopped = torchrun(tmp_path / "stop.py", settings)
    assert stopped.returncode != 0 and (tmp_path / "out" / "checkpoint.pt").exists(), stopped.stderr[-3000:]
    lines = [line for line in stopped.stderr.splitlines() if line.startswith("interrupted (SIGTERM)")]
    assert len(lines) == 1 and "continue it with: torchrun <its options> train_lstm_baseline.py" in lines[0]
    assert "machines that share no filesystem need a copy of it" in lines[0]
    for symptom in ("is not a valid Signals", "Connection closed by peer", "ValueError"):
        assert symptom not in stopped.stderr, stopped.stderr[-3000:]
    resumed = torchrun("train_lstm_baseline.py", [f"--out-dir={tmp_path / 'out'}", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["world_sizes"] == [2]


# ------------------------------------------------------------------------------------- A2: precision
def test_machines_that_would_choose_different_precisions_are_refused(monkeypatch):
    """A GPU with native bf16 beside one without: bf16 on one machine, fp16 with the scaler on the other."""
    choices = [("a100-box", "bf16"), ("a100-box", "bf16"), ("v100-box", "fp16")]
    with pytest.raises(textclf.parallel.RecipeError) as refused:
        textclf.parallel.same_everywhere(choices)
    assert str(refused.value) == (
        "PRECISION=auto chooses differently on these machines' GPUs: bf16 on a100-box; "
        "fp16 on v100-box; pass the same --precision to all (fp16 runs on every CUDA GPU), "
        "or use GPUs of one kind"
    )
    assert textclf.parallel.same_everywhere([("a", "bf16"), ("b", "bf16")]) == "bf16"
    monkeypatch.setattr(textclf.parallel, "gathered", lambda value, world: [value, ("v100-box", "fp16")])
    monkeypatch.setattr(textclf.parallel, "cpu_bf16", lambda: "avx512_bf16")
    with pytest.raises(textclf.parallel.RecipeError, match="bf16 on .*; fp16 on v100-box"):
        textclf.parallel.run_precision("auto", torch.device("cpu"), None, 2)  # what run() asks
    assert textclf.parallel.run_precision("fp32", torch.device("cpu"), None, 2) == ("fp32", "PRECISION")


# ------------------------------------------------------------------------------------- A3, A5, A6, A7: machines
def test_an_error_on_one_machine_stops_both_promptly_with_its_line_there(tmp_path, reviews):
    """Machine 1's OUT_DIR is a file: it says so, and machine 0 stops at once instead of waiting 60 minutes."""
    (tmp_path / "node1").mkdir()
    (tmp_path / "node1" / "runs").write_text("a file")
    results = machines(
        tmp_path, ROOT / "train_lstm_baseline.py", cli(**LSTM, data_url=reviews, data_dir="data", out_dir="runs/two")
    )
    (code0, _, err0), (code1, _, err1) = results
    assert code0 != 0 and code1 != 0
    assert errors(err1) == ["error: OUT_DIR (--out-dir) runs/two lies under runs, which is a file; give a folder"]
    assert errors(err0) == [] and "Traceback" not in ours(err0) + ours(err1) and "DistNetworkError" not in err0 + err1


def test_machines_with_different_data_are_refused(tmp_path):
    for rank, seed in ((0, 1), (1, 2)):  # the same name, other contents
        (tmp_path / f"node{rank}").mkdir()
        write_csv(make_reviews(300, seed=seed), tmp_path / f"node{rank}" / "reviews.csv")
    results = machines(
        tmp_path, ROOT / "train_lstm_baseline.py", cli(**LSTM, data_url="reviews.csv", data_dir="data", out_dir="out")
    )
    assert all(code != 0 for code, *_ in results)
    for _, _, err in results:
        assert errors(err)[0].startswith("error: the machines read different data from ") and "Traceback" not in ours(
            err
        )


def test_a_resume_on_two_machines_needs_the_checkpoint_on_each_then_clears_both(tmp_path, reviews, monkeypatch, capsys):
    """Begun in one process, stopped, resumed on two machines: without the copied checkpoint machine 1 says so (and
    machine 0 stops); with it the run says that it now has 2 processes, records both, cleans each machine's own
    DATA_DIR leftovers, and leaves no checkpoint on either machine (the next run there is a new one)."""
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    node0.mkdir()
    node1.mkdir()
    monkeypatch.chdir(node0)
    signal_at(tl, monkeypatch, "batch_loss", 20, signal.SIGTERM)  # in epoch 2: epoch 1's model is saved
    with pytest.raises(SystemExit):
        tl.main(cli(**LSTM, data_url=reviews, data_dir="data", out_dir="runs/two"))
    monkeypatch.undo()
    assert (node0 / "runs" / "two" / "checkpoint.pt").exists()
    missing = machines(tmp_path, ROOT / "train_lstm_baseline.py", ["--out-dir=runs/two", "--resume"])
    assert all(code != 0 for code, *_ in missing)
    assert errors(missing[1][2]) == ["error: nothing to resume: runs/two/checkpoint.pt does not exist"]
    assert errors(missing[0][2]) == []

    (node1 / "runs" / "two").mkdir(parents=True)
    (node1 / "runs" / "two" / "checkpoint.pt").write_bytes((node0 / "runs" / "two" / "checkpoint.pt").read_bytes())
    (node1 / "data").mkdir()
    stale = node1 / "data" / f".reviews.csv.textclf-{socket.gethostname()}-999999999.tmp"  # a killed process's
    stale.write_text("partial")
    resumed = machines(tmp_path, ROOT / "train_lstm_baseline.py", ["--out-dir=runs/two", "--resume"])
    assert [code for code, *_ in resumed] == [0, 0], resumed[0][2][-2000:] + resumed[1][2][-2000:]
    assert "resuming with 2 processes a run that had 1" in resumed[0][1]
    metrics = json.loads((node0 / "runs" / "two" / "metrics.json").read_text())
    assert metrics["world_sizes"] == [1, 2] and metrics["world_size"] == 2
    assert not (node0 / "runs" / "two" / "checkpoint.pt").exists()
    assert not (node1 / "runs" / "two" / "checkpoint.pt").exists() and not stale.exists()


def test_a_model_folder_missing_on_one_machine_stops_both(tmp_path, reviews, tiny_model):
    (tmp_path / "node0").mkdir()
    (tmp_path / "node0" / "model").symlink_to(tiny_model)  # machine 1 has no ./model
    results = machines(
        tmp_path,
        ROOT / "train_distilbert.py",
        cli(
            data_url=reviews,
            data_dir="data",
            out_dir="out",
            model_name="model",
            train_size=200,
            valid_size=50,
            test_size=50,
            max_length=32,
            epochs=1,
            tensorboard=False,
        ),
    )
    assert all(code != 0 for code, *_ in results)
    assert errors(results[1][2])[0].startswith("error: MODEL_NAME (--model-name) 'model' is neither a local folder")
    assert errors(results[0][2]) == [] and "Traceback" not in ours(results[0][2]) + ours(results[1][2])


# ------------------------------------------------------------------------------------- A4, D14: divergence
INFINITE_IN_RANK_1 = """
import math, os, sys
sys.path.insert(0, {root!r})
import train_lstm_baseline as script
real, calls = script.batch_loss, []
def batch_loss(*args, **kwargs):  # rank 1's 3rd batch overflows (fp16 logits, say); rank 0's are all finite
    calls.append(1)
    loss, correct = real(*args, **kwargs)
    return (loss * math.inf if len(calls) == 3 and os.environ["RANK"] == "1" else loss), correct
script.batch_loss = batch_loss
script.main(sys.argv[1:])
"""


def test_divergence_in_one_process_is_one_line_from_every_process_alike(tmp_path, reviews):
    """Rank 1 alone saw an infinite loss and left quietly; rank 0 then died of "Connection closed by peer"."""
    (tmp_path / "infinite.py").write_text(INFINITE_IN_RANK_1.format(root=str(ROOT)))
    done = torchrun(
        tmp_path / "infinite.py", cli(**LSTM, data_url=reviews, data_dir=tmp_path / "data", out_dir=tmp_path / "out")
    )
    assert done.returncode != 0
    lines = errors(done.stderr)
    assert lines == [
        (
            "error: training diverged at epoch 1, batch 3: the loss is inf; lower --learning-rate (now "
            "0.005) or set --grad-clip 1. Nothing of this epoch was kept"
        )
    ], done.stderr[-3000:]
    assert "Connection closed by peer" not in done.stderr


def test_a_loss_sum_beyond_float32_of_finite_losses_is_divergence(tmp_path, monkeypatch):
    """Every batch's loss finite, their sum over the epoch not: an IndexError once."""
    csv = write_csv(make_reviews(300, seed=5), tmp_path / "reviews.csv")
    monkeypatch.setattr(tl, "batch_loss", lambda *a: (torch.tensor(3e38, requires_grad=True), torch.tensor(1)))
    text = fails(
        tl,
        cli(**LSTM, data_url=csv, data_dir=tmp_path / "data", out_dir=tmp_path / "out"),
        "training diverged at epoch 1, batch",
    )
    assert "(its sum over the epoch overflows)" in text


# ------------------------------------------------------------------------------------- B: torchrun's variables
@pytest.mark.parametrize("variables", [{"RANK": "1"}, {"LOCAL_RANK": "1"}, {"WORLD_SIZE": "2"}])
def test_torchrun_variables_without_torchrun_are_one_line(tmp_path, reviews, monkeypatch, variables):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    name = next(iter(variables))
    fails(
        tl,
        cli(**LSTM, data_url=reviews, data_dir=tmp_path / "data", out_dir=tmp_path / "out"),
        f"{name} is set but not ",
        "a data-parallel run starts with torchrun",
        f"unset {name} for one process",
    )
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- C8: TensorBoard
def test_tensorboard_that_cannot_write_is_one_line_and_the_run_goes_on(tmp_path, reviews, monkeypatch, capfd):
    args = cli(**{**LSTM, "tensorboard": True}, data_url=reviews, data_dir=tmp_path / "data", out_dir=tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "tensorboard").write_text("a file")
    assert tl.main(args)["test_accuracy"] >= 0
    err = capfd.readouterr().err
    assert f"TensorBoard: could not write {tmp_path / 'out' / 'tensorboard'}" in err and "(Not a directory)" in err
    assert "Traceback" not in err

    import torch.utils.tensorboard  # a read-only file system, for a new run and for a resumed one

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", read_only)
    assert tl.main([*args[:-1], f"--out-dir={tmp_path / 'ro'}"])["test_accuracy"] >= 0
    assert "(Read-only file system); the run goes on without its curves" in capfd.readouterr().err


def test_a_full_disk_under_tensorboard_is_one_line_not_a_writer_threads_traceback(
    tmp_path, reviews, monkeypatch, capfd
):
    from tensorboard.compat.tensorflow_stub.io import gfile

    real, calls = gfile.GFile.write, []

    def write(self, data):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(gfile.GFile, "write", write)
    metrics = tl.main(
        cli(
            **{**LSTM, "tensorboard": True, "log_every": 1},
            data_url=reviews,
            data_dir=tmp_path / "data",
            out_dir=tmp_path / "out",
        )
    )
    assert metrics["test_accuracy"] >= 0
    err = capfd.readouterr().err
    assert err.count("(No space left on device); the run goes on without its curves") == 1
    assert "Traceback" not in err and "Exception in thread" not in err


def test_a_missing_tensorboard_package_is_named_before_any_download(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    fails(
        tl,
        cli(
            **{**LSTM, "tensorboard": True},
            data_url="http://127.0.0.1:9/never-fetched.csv",
            data_dir=tmp_path / "data",
            out_dir=tmp_path / "out",
        ),
        "TENSORBOARD needs the tensorboard package: pip install tensorboard",
    )


# ------------------------------------------------------------------------------------- C9: a kill during the card
KILL_IN_THE_CARD = """
import os, signal, sys
sys.path.insert(0, {root!r})
import train_distilbert as td
real = td.atomic_write
def atomic_write(path, write, stale=None):  # the card half-written, then the machine goes down
    if path.name != "README.md":
        return real(path, write, stale)
    return real(path, lambda f: (write(f), f.flush(), os.kill(os.getpid(), signal.SIGKILL)), stale)
td.atomic_write = atomic_write
td.main(sys.argv[1:])
"""


def test_a_kill_during_the_model_card_leaves_nothing_a_resume_keeps_or_writes_twice(tmp_path, reviews, tiny_model):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tmp_path / "kill.py").write_text(KILL_IN_THE_CARD.format(root=str(ROOT)))
    args = cli(
        data_url=reviews,
        data_dir=tmp_path / "data",
        out_dir=tmp_path / "out",
        model_name=tiny_model,
        train_size=200,
        valid_size=50,
        test_size=50,
        max_length=32,
        epochs=1,
    )
    done = subprocess.run([sys.executable, tmp_path / "kill.py", *args], capture_output=True, text=True, check=False)
    assert done.returncode == -signal.SIGKILL
    assert [p for p in hidden(tmp_path / "out" / "model") if "README.md" in p]  # what the kill left
    td.main([f"--out-dir={tmp_path / 'out'}", "--resume"])
    assert hidden(tmp_path / "out" / "model") == []
    folder = next((tmp_path / "out" / "tensorboard").iterdir())
    events = EventAccumulator(str(folder)).Reload()
    assert len(events.Scalars("test/accuracy")) == 1


# ------------------------------------------------------------------------------------- C10: long names
def test_names_near_the_file_name_limit_are_written(tmp_path, reviews):
    long = "p" * 236
    atomic_write(tmp_path / f"{long}.json", lambda f: f.write(b"{}"))  # 241 bytes: its temporary name was 280
    assert (tmp_path / f"{long}.json").read_text() == "{}" and hidden(tmp_path) == []
    tl.main(cli(**LSTM, data_url=reviews, data_dir=tmp_path / "data", out_dir=tmp_path / "run"))
    predict.main([str(tmp_path / "run"), "a great film", "--output", str(tmp_path / f"{long}.csv")])
    assert len(pd.read_csv(tmp_path / f"{long}.csv")) == 1
    compare.main([str(tmp_path / "run"), "--output", str(tmp_path / f"{long}.png")])
    assert (tmp_path / f"{long}.png").stat().st_size > 0


# ------------------------------------------------------------------------------------- D11-D13: runs and scripts
def test_one_out_dir_holds_one_scripts_model_and_predict_answers_with_it(tmp_path, reviews, tiny_model):
    common = {
        "data_url": reviews,
        "data_dir": tmp_path / "data",
        "out_dir": tmp_path / "out",
        "train_size": 200,
        "valid_size": 50,
        "test_size": 50,
        "tensorboard": False,
    }
    td.main(cli(**common, model_name=tiny_model, max_length=32, epochs=1))
    assert predict.Run(tmp_path / "out", torch.device("cpu")).kind == "distilbert"
    metrics = tl.main(cli(**{**LSTM, **common}))
    assert metrics["script"] == "train_lstm_baseline.py" and not (tmp_path / "out" / "model").exists()
    assert predict.Run(tmp_path / "out", torch.device("cpu")).kind == "lstm"
    td.main(cli(**common, model_name=tiny_model, max_length=32, epochs=1))
    assert not (tmp_path / "out" / "model.pt").exists()


def test_resume_with_the_other_scripts_checkpoint_is_one_line(tmp_path, reviews, monkeypatch):
    signal_at(tl, monkeypatch, "batch_loss", 3, signal.SIGTERM)
    with pytest.raises(SystemExit):
        tl.main(cli(**LSTM, data_url=reviews, data_dir=tmp_path / "data", out_dir=tmp_path / "out"))
    fails(
        td,
        [f"--out-dir={tmp_path / 'out'}", "--resume"],
        f"{tmp_path / 'out' / 'checkpoint.pt'} is a run of train_lstm_baseline.py, not of train_distilbert.py; "
        f"continue it with python train_lstm_baseline.py --out-dir {tmp_path / 'out'} --resume",
    )


def test_a_missing_best_model_is_named_at_resume_before_training(tmp_path, reviews, monkeypatch):
    signal_at(tl, monkeypatch, "batch_loss", 20, signal.SIGTERM)  # in epoch 2
    with pytest.raises(SystemExit):
        tl.main(cli(**LSTM, data_url=reviews, data_dir=tmp_path / "data", out_dir=tmp_path / "out"))
    monkeypatch.undo()
    (tmp_path / "out" / "model.pt").unlink()
    monkeypatch.setattr(tl, "batch_loss", lambda *a: pytest.fail("trained before the check"))
    fails(
        tl,
        [f"--out-dir={tmp_path / 'out'}", "--resume"],
        f"the run's best model so far (epoch 1), {tmp_path / 'out' / 'model.pt'}, is missing: put it back to resume",
    )


def test_a_model_folder_named_relatively_resumes_from_anywhere_and_can_be_moved(
    tmp_path, reviews, tiny_model, monkeypatch
):
    (tmp_path / "models").mkdir()
    os.symlink(tiny_model, tmp_path / "models" / "tiny")
    monkeypatch.chdir(tmp_path / "models")
    signal_at(td, monkeypatch, "batch_loss", 3, signal.SIGTERM)
    with pytest.raises(SystemExit):
        td.main(
            cli(
                data_url=reviews,
                data_dir=tmp_path / "data",
                out_dir=tmp_path / "out",
                model_name="tiny",
                train_size=200,
                valid_size=50,
                test_size=50,
                max_length=32,
                epochs=1,
            )
        )
    saved = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)["settings"]["MODEL_NAME"]
    assert saved == str(tmp_path / "models" / "tiny")
    monkeypatch.undo()
    os.rename(tmp_path / "models", tmp_path / "moved")
    metrics = td.main([f"--out-dir={tmp_path / 'out'}", "--resume", f"--model-name={tmp_path / 'moved' / 'tiny'}"])
    assert metrics["settings"]["MODEL_NAME"] == str(tmp_path / "moved" / "tiny")


# ------------------------------------------------------------------------------------- rough edges of the card
def test_the_model_card_survives_odd_labels_many_classes_and_out_dir_dot(tmp_path, monkeypatch):
    names = ["a|b", *(f"class{i}" for i in range(29))]
    monkeypatch.chdir(tmp_path)
    metrics = {
        "settings": {**td.DEFAULTS, "OUT_DIR": ".", "DATA_URL": str(tmp_path / "my#reviews.csv")},
        "labels": names,
        "multi_label": False,
        "device": "cpu",
        "world_size": 1,
        "best_epoch": 1,
        "examples": {"train": 8, "valid": 1, "test": 1},
        "train_seconds": 1.0,
        "epochs": [
            {
                "epoch": 1,
                "train_loss": 0.5,
                "train_accuracy": 0.5,
                "valid_loss": 0.5,
                "valid_accuracy": 0.5,
                "seconds": 1.0,
            }
        ],
        "test": {"accuracy": 0.75, "macro_f1": 0.5, "confusion_matrix": [[0] * 30] * 30},
        "precision": "fp32",
    }
    card = model_card(metrics, tmp_path)
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.model_name == tmp_path.name and f"# {tmp_path.name}\n" in card.text
    assert loaded.data.eval_results[0].dataset_name == "my#reviews.csv"
    assert "The confusion matrix of the 30 classes is in the run's metrics.json." in card.text
    assert len(card.text) < 5_000
    small = {**metrics, "labels": ["a|b", "c"], "test": {**metrics["test"], "confusion_matrix": [[1, 0], [0, 1]]}}
    rows = [line for line in model_card(small, tmp_path).text.splitlines() if line.startswith("| true")]
    assert rows == ["| true \\ predicted | a\\|b | c |"]
