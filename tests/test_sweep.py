"""sweep.py: an Optuna search over either script's settings, each trial an ordinary run; two workers on one SQLite
study, pruning, a stopped sweep continued, the best trial's command, a failed trial, and one line for each bad input.
The LSTM on tiny data: a trial takes a second or two."""

import json
import multiprocessing
import os
import shlex
import shutil
import socket
import subprocess
import sys

import optuna
import pytest
from conftest import make_reviews, write_csv
from optuna.trial import TrialState
from test_reliability import ROOT, files_under

import compare
import predict
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
    # a pruned trial is a finished run of its best epoch: predict.py and compare.py take it, no checkpoint is left
    pruned = json.loads((folder / "metrics.json").read_text())
    assert pruned["pruned"] and pruned["stopped_early_at"] == 1 and len(pruned["epochs"]) == 1
    assert not (folder / "checkpoint.pt").exists() and (folder / "model.pt").is_file()
    predict.main([str(folder), "a great film"])  # (a run that is not finished is refused)
    assert "| trial-1 | train_lstm_baseline.py |" in compare.table([compare.load(folder)])
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
    # the abandoned trial 2 is run again as trial 3; that one, interrupted, is queued again as trial 4
    trials = study_of(tmp_path).trials
    states = [(t.number, t.state) for t in trials]
    assert states == [
        (0, TrialState.COMPLETE),
        (1, TrialState.COMPLETE),
        (2, TrialState.FAIL),
        (3, TrialState.FAIL),
        (4, TrialState.WAITING),
    ]
    assert trials[3].user_attrs["retry_of"] == 2 and trials[4].user_attrs["retry_of"] == 3
    assert trials[4].system_attrs["fixed_params"] == trials[3].params  # (a queued trial's settings, until it runs)
    interrupted = tmp_path / "sweep" / "train_lstm_baseline" / "trial-3"
    assert json.loads((interrupted / "trial.json").read_text())["state"] == "failed"
    assert not (interrupted / "checkpoint.pt").exists()  # nothing to resume: the sweep runs it again
    monkeypatch.undo()
    sweep.main(command(tmp_path, reviews, trials=5))
    trials = study_of(tmp_path).trials
    # neither the abandoned nor the interrupted trial counts against --trials: five ran to their end
    assert [t.number for t in trials] == [0, 1, 2, 3, 4, 5, 6]
    assert [t.state for t in trials[4:]] == [TrialState.COMPLETE] * 3 and trials[4].params == trials[3].params


def test_the_best_trials_command_reproduces_its_score_and_a_failed_trial_is_recorded(tmp_path, reviews, capsys):
    """train_size 5000 cannot be split from 1,000 rows: that trial fails with the run's error line, the sweep goes on."""
    space = ("learning_rate=0.01,0.03", "train_size=600,5000")
    argv = command(tmp_path, reviews, "--seed=3", "--pruner=none", space=space, trials=4)
    sweep.main([word for word in argv if word != "--train-size=600"])  # searched: not given after --
    trials = study_of(tmp_path).trials
    failed = [t for t in trials if t.params["TRAIN_SIZE"] == 5_000]
    assert failed and all(t.state == TrialState.FAIL for t in failed)
    assert all(t.user_attrs["error"].startswith("the split needs 5,400 rows") for t in failed)
    for t in failed:  # a failed trial has its folder and trial.json, as a finished one does
        record = json.loads(
            (tmp_path / "sweep" / "train_lstm_baseline" / f"trial-{t.number}" / "trial.json").read_text()
        )
        assert record["state"] == "failed" and "the split needs 5,400 rows" in record["why"]
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
        (("distill_alpha=0.3,0.7",), [], "DISTILL_ALPHA changes nothing without a teacher (--teacher)"),
        (("distill_temperature=1:4",), [], "DISTILL_TEMPERATURE changes nothing without a teacher"),
        (("epochs=1,2",), [], "EPOCHS is also given after -- (--epochs)"),
        (("train_size=0.2:300",), [], "(inside the range 0.2:300: every value a trial may draw must be one)"),
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


def fake_trial(study, trial, module, script, base_argv, folder):
    """A trial that ends at once with a score: what the sweep does between trials, without training."""
    trial.set_user_attr("command", shlex.join(["python", script, f"--out-dir={folder}"]))
    study.tell(trial, 0.5)


def test_workers_that_start_together_on_a_new_study_both_run(tmp_path, reviews, monkeypatch):
    """Two workers started at the same moment on a new SQLite study, six fresh studies in a row: both create or open
    the study, neither dies, and the trials are run once each."""
    monkeypatch.setattr(sweep, "run_trial", fake_trial)
    context = multiprocessing.get_context("fork")
    for round_ in range(6):
        argv = command(tmp_path / f"round-{round_}", reviews, trials=4)
        barrier = context.Barrier(2)

        def worker(argv=argv, barrier=barrier):
            barrier.wait()
            try:
                sweep.main(argv)
            except SystemExit as e:
                print(e.code, file=sys.stderr)
                os._exit(1)
            os._exit(0)

        workers = [context.Process(target=worker) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        assert [w.exitcode for w in workers] == [0, 0], f"round {round_}"
        trials = study_of(tmp_path / f"round-{round_}").trials
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 4


def test_each_worker_and_each_restart_draws_its_own_settings_from_the_seed(tmp_path, reviews, monkeypatch):
    monkeypatch.setattr(sweep, "run_trial", fake_trial)
    space = ("learning_rate=1e-4:1e-1:log", "seed=1,2,3,4,5,6,7,8")
    sweep.main(command(tmp_path / "a", reviews, "--seed=5", space=space, trials=3))
    sweep.main(command(tmp_path / "a", reviews, "--seed=5", space=space, trials=6))  # a restart, or a second worker
    drawn = [t.params for t in study_of(tmp_path / "a").trials]
    assert len({json.dumps(p, sort_keys=True) for p in drawn}) == 6  # trial 3 is not trial 0 again
    # one worker's study is the same every time
    sweep.main(command(tmp_path / "b", reviews, "--seed=5", space=space, trials=6))
    assert [t.params for t in study_of(tmp_path / "b").trials] == drawn


def test_a_study_folder_deleted_mid_sweep_is_one_line(tmp_path, reviews, monkeypatch):
    def deleting(study, trial, module, script, base_argv, folder):
        fake_trial(study, trial, module, script, base_argv, folder)
        shutil.rmtree(folder.parent)

    monkeypatch.setattr(sweep, "run_trial", deleting)
    with pytest.raises(SystemExit) as exit:
        sweep.main(command(tmp_path, reviews, trials=3))
    text = str(exit.value.code)
    assert text.startswith("error: the sweep's folder") and "was deleted while the sweep ran" in text
