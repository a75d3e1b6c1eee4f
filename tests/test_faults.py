"""Faults injected on purpose: full disks, kills at the dangerous moments, two runs at once, a mistyped model,
interruptions outside the training loop, and logs that are not a terminal. Both scripts, CPU, offline."""

import errno
import gzip
import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import transformers
from conftest import make_reviews, write_csv
from test_reliability import SCRIPTS, distilbert_args, fails, files_under, lstm_args
from test_training import comparable

import textclf.runfolder
import train_distilbert as td
import train_lstm_baseline as tl

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=SCRIPTS)
def script(request, tiny_model):
    """(module, args(tmp_path, url, **overrides)) with the tiny model filled in for DistilBERT."""
    module, args = SCRIPTS[request.param]
    if module is td:
        return module, lambda tmp_path, url, **o: args(tmp_path, url, **{"model": tiny_model, **o})
    return module, args


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(name, size) -> a folder on a tmpfs of that size (skips where this machine cannot mount one)."""
    mounts = []

    def make(name, size):
        folder = tmp_path / name
        folder.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command here")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            pytest.skip(f"cannot mount a small filesystem here: {done.stderr.strip()}")
        mounts.append(folder)
        return folder

    yield make
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def unchanged(out, before):
    """Every file of before ({path: bytes}) is in out as it was; what is new is the curves of the failed attempt, in a
    TensorBoard folder of its own."""
    after = {p: (out / p).read_bytes() for p in files_under(out) if (out / p).is_file()}
    return {p: after.get(p) for p in before} == before and all(
        p.startswith("tensorboard/") for p in set(after) - set(before)
    )


def hidden(path):
    """Hidden entries (temporary files, parked folders) anywhere under path."""
    return [p for p in files_under(path) if any(part.startswith(".") for part in Path(p).parts)]


def in_subprocess(code, *args, **kwargs):
    """Start `python -c code args` in the repository root; code gets sys.argv[1:] = args."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def wait_for(condition, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def slow_server():
    """slow_server(payload) -> URL that sends all but the last 64 kB at once and the rest when .release() is
    called (or after 60 s); with barrier=n, no bytes are sent until n requests are in flight."""
    servers = []

    def start(payload, barrier=None):
        gate, waiting = threading.Event(), threading.Barrier(barrier) if barrier else None

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if waiting:
                    waiting.wait(timeout=60)
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload[:-65_536])
                self.wfile.flush()
                gate.wait(timeout=60)
                self.wfile.write(payload[-65_536:])

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append((server, gate))
        start.release = gate.set
        return f"http://127.0.0.1:{server.server_port}/movie_data.csv.gz"

    yield start
    for server, gate in servers:
        gate.set()
        server.shutdown()
        server.server_close()


def big_reviews():
    """About 2 MB: more than one read of the download loop (1 MB) arrives before the server pauses."""
    return make_reviews(12_000, seed=3, max_words=60).to_csv(index=False).encode()


# ------------------------------------------------------------------------------------- full disks
def test_full_disk_in_out_dir_keeps_the_earlier_results(tmp_path, small_disk, tiny_model):
    """A real 3 MB filesystem holds a small run; a bigger run into it cannot write its model: one line, and the
    earlier model and metrics.json still belong together and still load."""
    disk = small_disk("disk", "3m")
    csv = write_csv(make_reviews(1_000, seed=4), tmp_path / "reviews.csv").as_uri()
    bigger = tmp_path / "bigger-distilbert"  # about 6 MB of weights
    transformers.DistilBertForSequenceClassification(
        transformers.DistilBertConfig(
            vocab_size=transformers.AutoTokenizer.from_pretrained(tiny_model).vocab_size,
            dim=256,
            n_layers=2,
            n_heads=2,
            hidden_dim=1024,
            max_position_embeddings=128,
        )
    ).save_pretrained(bigger)
    transformers.AutoTokenizer.from_pretrained(tiny_model).save_pretrained(bigger)
    cases = [
        (tl, lstm_args, {}, {"embedding_dim": 64, "hidden_dim": 512}, "model.pt"),
        (td, distilbert_args, {"model": tiny_model}, {"model": bigger}, "model"),
    ]
    for module, args, small, big, model in cases:
        out = disk / module.__name__
        module.main(args(tmp_path, csv, epochs=1, out_dir=out, **small))
        before = {p: (out / p).read_bytes() for p in files_under(out) if (out / p).is_file()}
        fails(
            module,
            args(tmp_path, csv, epochs=1, out_dir=out, **big),
            f"could not write {out / model}",
            "No space left on device",
            "bytes are free there",
            "is intact",
        )
        assert unchanged(out, before)
    assert [label for label, _ in tl.predict(["a wonderful superb film"], disk / tl.__name__)] == ["positive"]
    classify = transformers.pipeline("text-classification", model=str(disk / td.__name__ / "model"))
    assert classify("an awful boring movie")[0]["label"] in ("negative", "positive")


def test_a_write_that_fails_with_enospc_is_one_line_and_keeps_the_old_model(script, tmp_path, monkeypatch):
    """The same through a writer that raises ENOSPC, for machines that cannot mount a small filesystem."""
    module, args = script
    csv = write_csv(make_reviews(1_000, seed=4), tmp_path / "reviews.csv").as_uri()
    module.main(args(tmp_path, csv, epochs=1))
    out = tmp_path / "out"
    before = {p: (out / p).read_bytes() for p in files_under(out) if (out / p).is_file()}

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if module is tl:
        monkeypatch.setattr(torch, "save", no_space)
    else:
        monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", no_space)
    model = out / ("model.pt" if module is tl else "model")
    fails(module, args(tmp_path, csv, epochs=1, seed=5), f"could not write {model}", "No space left on device")
    assert unchanged(out, before)


def test_full_disk_in_data_dir_says_so_and_how_much_is_needed(tmp_path, small_disk, serve, monkeypatch):
    payload = os.urandom(1_500_000)
    url = serve({"movie_data.csv.gz": payload}) + "/movie_data.csv.gz"
    disk = small_disk("data", "1m")
    fails(
        tl,
        lstm_args(tmp_path, url, data_dir=disk),
        f"could not write {disk / 'movie_data.csv.gz'}",
        "No space left on device",
        "the file needs 1,500,000 bytes",
        "bytes are free there",
    )
    assert files_under(disk) == []


def test_a_download_write_that_fails_with_enospc_is_not_blamed_on_the_network(script, tmp_path, serve, monkeypatch):
    module, args = script
    url = serve({"movie_data.csv.gz": gzip.compress(make_reviews(1_000).to_csv(index=False).encode())})
    real_open = open

    class Full(io.BufferedWriter):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def opens_full(path, mode="r", *a, **k):
        return Full(real_open(path, mode, buffering=0)) if "movie_data" in str(path) else real_open(path, mode, *a, **k)

    monkeypatch.setattr(textclf.runfolder, "open", opens_full, raising=False)  # where atomic_write() opens files
    text = fails(
        module,
        args(tmp_path, url + "/movie_data.csv.gz"),
        "could not write",
        "No space left on device",
        "the file needs",
    )
    assert "could not download" not in text and files_under(tmp_path / "data") == []


# ------------------------------------------------------------------------------------- kills
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_kill_during_the_download_leaves_nothing_the_next_run_trips_on(tmp_path, slow_server, how):
    url = slow_server(big_reviews())
    args = lstm_args(tmp_path, url, epochs=1)
    run = subprocess.Popen(
        [sys.executable, "train_lstm_baseline.py", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def partial():
        return [p for p in (tmp_path / "data").glob(".movie_data.csv.gz.*.tmp") if p.stat().st_size]

    wait_for(lambda: (tmp_path / "data").exists() and partial())
    run.send_signal(how)
    _, err = run.communicate(timeout=60)
    if how == signal.SIGKILL:  # nothing runs on SIGKILL: the partial file stays, for the next run to clear
        assert run.returncode == -signal.SIGKILL and partial()
    else:
        assert run.returncode == 128 + signal.SIGTERM and "Traceback" not in err
        assert err.strip().splitlines()[-1] == "interrupted (SIGTERM): nothing to resume"
        assert not partial()
    slow_server.release()
    metrics = tl.main(args)
    assert metrics["test_accuracy"] > 0.5 and hidden(tmp_path / "data") == [".movie_data.csv.gz.source.json"]


KILL_IN_CHECKPOINT = """
import os, signal, sys, torch, importlib
real = torch.save
def save(obj, f):
    if ".checkpoint.pt." in getattr(f, "name", ""):  # half a checkpoint on disk, then the machine dies
        f.write(b"x" * 100_000); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, f)
torch.save = save
importlib.import_module(sys.argv[1]).main(sys.argv[2:])
"""


def test_a_kill_while_writing_the_checkpoint_is_cleaned_up_by_the_next_run(script, tmp_path):
    module, args = script
    csv = write_csv(make_reviews(1_000, seed=6), tmp_path / "reviews.csv").as_uri()
    run = in_subprocess(KILL_IN_CHECKPOINT, module.__name__, *args(tmp_path, csv))
    run.communicate(timeout=120)
    assert run.returncode == -signal.SIGKILL
    assert [p for p in hidden(tmp_path / "out") if p.startswith(".checkpoint.pt.") and p.endswith(".tmp")]
    metrics = module.main(args(tmp_path, csv))
    assert metrics["test_accuracy"] > 0.5 and hidden(tmp_path / "out") == []


KILL_BETWEEN_RENAMES = """
import os, signal, sys, train_distilbert
real = os.replace
def replace(src, dst):
    real(src, dst)
    if str(dst).endswith(".old"):  # the old model moved aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
train_distilbert.main(sys.argv[1:])
"""


def test_a_kill_between_the_model_swaps_renames_is_undone(tmp_path, tiny_model):
    csv = write_csv(make_reviews(1_000, seed=6), tmp_path / "reviews.csv").as_uri()
    td.main(distilbert_args(tmp_path, csv, tiny_model, epochs=1))
    out = tmp_path / "out"
    weights = (out / "model" / "model.safetensors").read_bytes()
    run = in_subprocess(KILL_BETWEEN_RENAMES, *distilbert_args(tmp_path, csv, tiny_model, epochs=1, seed=9))
    run.communicate(timeout=120)
    assert run.returncode == -signal.SIGKILL and not (out / "model").exists()
    assert {p.split(".")[-1] for p in hidden(out) if p.count("/") == 0} == {"old", "tmp"}

    # the next run (here one that stops at once: its data cannot be read) restores the model first
    fails(td, distilbert_args(tmp_path, "file:///nonexistent/reviews.csv", tiny_model), "could not download")
    assert (out / "model" / "model.safetensors").read_bytes() == weights and hidden(out) == []
    assert transformers.pipeline("text-classification", model=str(out / "model"))("a great film")


# ------------------------------------------------------------------------------------- interruptions outside the loop
def signal_at(module, monkeypatch, function, call, signum):
    """Make the call-th call of module.function deliver signum to this process."""
    real, calls = getattr(module, function), []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, function, wrapped)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interruption_while_tokenizing_is_one_line(script, tmp_path, monkeypatch, capsys, signum):
    module, args = script
    csv = write_csv(make_reviews(1_000), tmp_path / "reviews.csv").as_uri()
    signal_at(module, monkeypatch, "tokenize" if module is td else "encode", 1, signum)
    with pytest.raises(SystemExit) as exit:
        module.main(args(tmp_path, csv))
    assert exit.value.code == 128 + signum
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"interrupted ({signal.Signals(signum).name}): nothing to resume"
    assert [p for p in hidden(tmp_path) if p.endswith(".tmp")] == []


def test_sigterm_during_the_final_evaluation_can_be_resumed(script, tmp_path, monkeypatch, capsys):
    module, args = script
    csv = write_csv(make_reviews(1_000, seed=7), tmp_path / "reviews.csv").as_uri()
    straight = module.main(args(tmp_path / "straight", csv))
    signal_at(module, monkeypatch, "evaluate", 3, signal.SIGTERM)  # 2 epochs validated, then the test split
    with pytest.raises(SystemExit) as exit:
        module.main(args(tmp_path / "stopped", csv))
    assert exit.value.code == 143
    out = tmp_path / "stopped" / "out"
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        f"interrupted (SIGTERM): the run is saved in {out / 'checkpoint.pt'}; continue it with: "
        f"python {module.__name__}.py --out-dir {out} --resume"
    )
    monkeypatch.undo()
    resumed = module.main([f"--out-dir={out}", "--resume"])
    assert comparable(resumed) == pytest.approx(comparable(straight), rel=1e-5)


# ------------------------------------------------------------------------------------- two runs at once
HOLD_THE_LOCK = """
import sys, time
from textclf.runfolder import locked
held = locked(sys.argv[1])
held.__enter__()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_run_into_the_same_out_dir_is_refused_until_the_first_ends(script, tmp_path):
    module, args = script
    csv = write_csv(make_reviews(1_000), tmp_path / "reviews.csv").as_uri()
    holder = in_subprocess(HOLD_THE_LOCK, tmp_path / "out")
    assert holder.stdout.readline().strip() == "locked"
    fails(
        module,
        args(tmp_path, csv),
        f"another run is writing to {tmp_path / 'out'} right now",
        "choose another --out-dir",
    )
    holder.kill()  # killed, not finished: the operating system releases its lock all the same
    holder.communicate()
    assert module.main(args(tmp_path, csv))["test_accuracy"] > 0.5


def test_two_runs_sharing_a_data_dir_download_and_cache_safely(tmp_path, slow_server, tiny_model):
    url = slow_server(big_reviews(), barrier=2)  # both downloads in flight at once
    slow_server.release()
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "train_distilbert.py",
                *distilbert_args(tmp_path, url, tiny_model, epochs=1, out_dir=tmp_path / name),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("first", "second")
    ]
    for run in runs:
        assert run.wait(timeout=240) == 0, run.stderr.read()[-2000:]
    first, second = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("first", "second"))
    assert first["test_accuracy"] == second["test_accuracy"]
    assert sorted(files_under(tmp_path / "data"))[:2] == [".movie_data.csv.gz.source.json", "movie_data.csv.gz"]
    assert [p for p in files_under(tmp_path / "data") if p.endswith(".tmp")] == []


# ------------------------------------------------------------------------------------- the model name and settings
def test_a_folder_that_holds_no_model_is_one_line(tmp_path):
    csv = write_csv(make_reviews(1_000), tmp_path / "reviews.csv").as_uri()
    (tmp_path / "empty").mkdir()
    fails(
        td,
        distilbert_args(tmp_path, csv, tmp_path / "empty"),
        f"MODEL_NAME (--model-name) {tmp_path / 'empty'} is a folder but holds no model",
        "config.json, the weights and the tokenizer files",
    )


def test_a_model_folder_with_damaged_weights_is_one_line(tmp_path, tiny_model):
    csv = write_csv(make_reviews(1_000), tmp_path / "reviews.csv").as_uri()
    damaged = shutil.copytree(tiny_model, tmp_path / "damaged")
    (damaged / "model.safetensors").write_bytes(b"not weights")
    fails(
        td,
        distilbert_args(tmp_path, csv, damaged),
        f"MODEL_NAME (--model-name) {damaged} is a folder but holds no "
        "model that transformers can load (Error while deserializing header",
    )


def test_a_mistyped_model_name_without_the_hub_is_one_line(tmp_path):
    csv = write_csv(make_reviews(1_000), tmp_path / "reviews.csv").as_uri()
    done = subprocess.run(
        [sys.executable, "train_distilbert.py", *distilbert_args(tmp_path, csv, "distilbert-base-uncasd")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: MODEL_NAME (--model-name) 'distilbert-base-uncasd' is neither a local folder nor a model the "
            "Hugging Face hub could provide"
        )
    )
    assert "--model-name /path/to/model" in done.stderr


def test_an_unknown_setting_is_one_line_and_exit_1(script, tmp_path):
    module, _ = script
    fails(module, ["--epoch", "3"], "unknown setting '--epoch'; the settings are: --data-url")
    fails(module, ["--epochs", "three"], "argument --epochs: invalid int value: 'three'")


# ------------------------------------------------------------------------------------- logs
def test_progress_in_a_log_is_a_plain_line_every_ten_percent(tmp_path, capsys):
    csv = write_csv(make_reviews(2_000), tmp_path / "reviews.csv").as_uri()
    tl.main(lstm_args(tmp_path, csv, batch_size=8))  # 75 batches an epoch
    err = capsys.readouterr().err
    assert "\r" not in err
    epoch = [line for line in err.splitlines() if line.startswith("epoch 1/2:")]
    assert 10 <= len(epoch) <= 12 and "75/75 (100%)" in epoch[-1] and "loss=" in epoch[-1]
    assert any(line.startswith("evaluate: ") and "(100%)" in line for line in err.splitlines())
