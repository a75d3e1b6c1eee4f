"""sweep.py: an Optuna search over either script's settings, each trial an ordinary run; two workers on one SQLite
study, pruning, a stopped sweep continued, the best trial's command, a failed trial, and one line for each bad input.
The LSTM on tiny data: a trial takes a second or two."""

import json
import os
import shlex
import socket
import subprocess
import sys

import optuna
import pytest
from conftest import make_reviews, write_csv
from optuna.trial import TrialState
from test_reliability import ROOT, files_under

import sweep
import train_lstm_baseline as tl
from textclf.training import Run

SETTINGS = [
    "--train-size=600",
    "--valid-size=200",
    "--test-size=200",
    "--vocab-size=60",
    "--embedding-dim=8",
    "--hidden-dim=16",
    "--batch-size=32",
    "--epochs=3",
    "--tensorboard=false",
]


@pytest.fixture
def reviews(tmp_path):
    return write_csv(make_reviews(1_000, seed=8), tmp_path / "reviews.csv")


def command(tmp_path, reviews, *extra, space=("learning_rate=1e-3:5e-2:log",), trials=3):
    spaces = [word for spec in space for word in ("--space", spec)]
    base = [f"--data-url={reviews}", f"--data-dir={tmp_path / 'data'}", *SETTINGS]
    return [
        "train_lstm_baseline.py",
        f"--trials={trials}",
        f"--sweep-dir={tmp_path / 'sweep'}",
        *spaces,
        *extra,
        "--",
        *base,
    ]


def study_of(tmp_path, name="train_lstm_baseline"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'sweep' / name / 'study.db'}")


def test_two_workers_on_one_study_run_the_trials_once_each(tmp_path, reviews):
    argv = command(tmp_path, reviews, "--seed=1", trials=4)
    workers = [
        subprocess.Popen([sys.executable, "sweep.py", *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr.decode()[-2000:]
    trials = study_of(tmp_path).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for t in trials:  # each trial one run, in its own folder, as its command says
        folder = tmp_path / "sweep" / "train_lstm_baseline" / f"trial-{t.number}"
        assert json.loads((folder / "trial.json").read_text())["state"] in ("complete", "pruned")
        assert t.user_attrs["command"].endswith(f"--out-dir={folder}")
    assert len({t.user_attrs["command"] for t in trials}) == 4
    assert (tmp_path / "sweep" / "train_lstm_baseline" / "scores.png").is_file()


def test_pruning_stops_a_learning_rate_that_cannot_learn(tmp_path, reviews, capsys):
    """A good learning rate first, then one that cannot learn: the median pruner stops the second after epoch 1."""
    storage = f"sqlite:///{tmp_path / 'sweep' / 'train_lstm_baseline' / 'study.db'}"
    (tmp_path / "sweep" / "train_lstm_baseline").mkdir(parents=True)
    made = optuna.create_study(study_name="train_lstm_baseline", storage=storage, direction="maximize")
    made.enqueue_trial({"LEARNING_RATE": 0.05})
    made.enqueue_trial({"LEARNING_RATE": 1e-9})
    sweep.main(command(tmp_path, reviews, "--startup-trials=1", space=("learning_rate=1e-9:0.05:log",), trials=2))
    first, hopeless = study_of(tmp_path).trials
    assert first.state == TrialState.COMPLETE and len(first.intermediate_values) == 3
    assert hopeless.state == TrialState.PRUNED and list(hopeless.intermediate_values) == [1]
    folder = tmp_path / "sweep" / "train_lstm_baseline" / "trial-1"
    assert json.loads((folder / "trial.json").read_text())["state"] == "pruned"
    assert not (folder / "metrics.json").exists() and (folder / "checkpoint.pt").exists()
    # the score each epoch reported is the one the run's metrics.json holds
    metrics = json.loads((tmp_path / "sweep" / "train_lstm_baseline" / "trial-0" / "metrics.json").read_text())
    assert list(first.intermediate_values.values()) == [e["valid_accuracy"] for e in metrics["epochs"]]
    assert "trial 1 pruned after epoch 1" in capsys.readouterr().out
    assert Run.observer is None  # nothing of the sweep stays in the package


def test_a_stopped_sweep_continues_its_trial_count_and_fails_what_was_left_running(tmp_path, reviews, monkeypatch):
    sweep.main(command(tmp_path, reviews, trials=2))
    study = study_of(tmp_path)
    left = study.ask()  # a worker killed mid-trial: its trial stays running in the database
    left.set_user_attr("worker", {"host": socket.gethostname(), "pid": 2**22 + 12345})
    calls = []
    real = tl.batch_loss

    def interrupted(*args, **kwargs):  # Ctrl-C in the next trial's fifth batch
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), 2)
        return real(*args, **kwargs)

    monkeypatch.setattr(tl, "batch_loss", interrupted)
    with pytest.raises(SystemExit) as exit:
        sweep.main(command(tmp_path, reviews, trials=5))
    assert exit.value.code == 130
    states = [(t.number, t.state) for t in study_of(tmp_path).trials]
    assert states == [(0, TrialState.COMPLETE), (1, TrialState.COMPLETE), (2, TrialState.FAIL), (3, TrialState.FAIL)]
    assert study_of(tmp_path).trials[3].user_attrs["error"] == "interrupted"
    monkeypatch.undo()
    sweep.main(command(tmp_path, reviews, trials=5))
    trials = study_of(tmp_path).trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4] and trials[4].state == TrialState.COMPLETE


def test_the_best_trials_command_reproduces_its_score_and_a_failed_trial_is_recorded(tmp_path, reviews, capsys):
    """train_size 5000 cannot be split from 1,000 rows: that trial fails with the run's error line, the sweep goes on."""
    space = ("learning_rate=0.01,0.03", "train_size=600,5000")
    sweep.main(command(tmp_path, reviews, "--seed=3", "--pruner=none", space=space, trials=4))
    trials = study_of(tmp_path).trials
    failed = [t for t in trials if t.params["TRAIN_SIZE"] == 5_000]
    assert failed and all(t.state == TrialState.FAIL for t in failed)
    assert all(t.user_attrs["error"].startswith("the split needs 5,400 rows") for t in failed)
    out = capsys.readouterr().out
    best_line = out[out.index("run it again with:") :].splitlines()[1].strip()
    words = shlex.split(best_line)
    assert words[:2] == ["python", "train_lstm_baseline.py"]
    again = tl.main(words[2:])
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert again["valid_accuracy"] == best.value
    assert "| failed: the split needs 5,400 rows" in out


@pytest.mark.parametrize(
    ("space", "extra", "message"),
    [
        (("hidden_size=8,16",), [], "train_lstm_baseline.py has no setting 'hidden_size' to search"),
        (("learning_rate=1e-3",), [], "give two or more different choices"),
        (("learning_rate=1e-3:",), [], "learning_rate=1e-3:"),
        (("learning_rate=0.1:0.01",), [], "LOW must be below HIGH"),
        (
            ("learning_rate=0:0.1",),
            [],
            "0.0 is not a value LEARNING_RATE takes (LEARNING_RATE (--learning-rate) must be positive",
        ),
        (("hidden_dim=8:16.5",), [], "invalid int value: '16.5'"),
        (("learning_rate=0:0.1:log",), [], "a log range needs LOW > 0"),
        (("out_dir=a,b",), [], "has no setting 'out_dir' to search"),
        (("learning_rate=1e-3:1e-2",), ["--storage=sqlite:////nonexistent/folder/study.db"], "does not connect"),
        (("learning_rate=1e-3:1e-2",), ["--storage=nosuchdb://host/db"], "does not connect"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, reviews, space, extra, message):
    before = files_under(tmp_path)
    with pytest.raises(SystemExit) as exit:
        sweep.main(command(tmp_path, reviews, *extra, space=space))
    text = str(exit.value.code)
    assert text.startswith("error: ") and "\n" not in text and message in text, text
    assert files_under(tmp_path) == before


def test_a_study_of_another_script_or_space_is_refused(tmp_path, reviews):
    sweep.main(command(tmp_path, reviews, trials=1))
    before = files_under(tmp_path)
    with pytest.raises(SystemExit) as exit:
        sweep.main(command(tmp_path, reviews, space=("learning_rate=1e-4:1e-2:log",), trials=2))
    assert "was started with another search space" in str(exit.value.code)
    argv = command(tmp_path, reviews, "--study=train_lstm_baseline", trials=2)
    argv[0] = "train_distilbert.py"
    argv = argv[: argv.index("--")] + ["--", f"--data-url={reviews}"]
    with pytest.raises(SystemExit) as exit:
        sweep.main(argv)
    assert "was started with another script (train_lstm_baseline.py)" in str(exit.value.code)
    with pytest.raises(SystemExit) as exit:
        sweep.main(command(tmp_path, reviews, trials=2) + ["--out-dir=elsewhere"])
    assert "--out-dir is the sweep's to set" in str(exit.value.code)
    assert files_under(tmp_path) == before
    shown = sweep.main(["train_lstm_baseline.py", f"--sweep-dir={tmp_path / 'sweep'}", "--show"])
    assert len(shown.trials) == 1
