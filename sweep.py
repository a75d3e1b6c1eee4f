"""Search either training script's settings with Optuna: each trial an ordinary run in a folder of its own, a hopeless
one stopped after an epoch (median pruning on the validation score that picks the best epoch), the study in a database
that several workers (GPUs, machines) share and that a stopped sweep continues.

    python sweep.py train_distilbert.py --trials 20 --space "learning_rate=1e-5:1e-3:log" --space "lora_rank=0,8,16" \\
        -- --data-url train.csv --epochs 3
    python sweep.py train_lstm_baseline.py --trials 12 --space "hidden_dim=64,128,256" --space "learning_rate=1e-3:3e-2:log"
    CUDA_VISIBLE_DEVICES=1 python sweep.py train_distilbert.py ...the same... --study NAME   # a second worker, same study
    python sweep.py train_distilbert.py --study NAME --show                                  # the trials so far
    optuna-dashboard sqlite:///runs/sweep/NAME/study.db                                     # watch it live

--space NAME=LOW:HIGH draws uniformly, NAME=LOW:HIGH:log log-uniformly, NAME=A,B,C one of the choices; NAME is any
UPPER_CASE setting of the script by its flag name (learning_rate or learning-rate), an integer setting draws integers.
Everything after -- is the script's command line, the same for every trial. Trial N runs in runs/sweep/NAME/trial-N/
(N the study's trial number: a run predict.py and compare.py take, its trial.json saying how it ended), the study lives
in runs/sweep/NAME/study.db (or --storage, any database URL Optuna takes: postgresql://...). At the end, and with
--show at any time: the trials as a table, the best trial's command, and runs/sweep/NAME/scores.png, the score against
each searched setting. Ctrl-C stops the sweep; started again, it continues, and runs the trial it stopped (or one a
killed worker left) again with the same settings. --seed makes one worker's study the same every time; each worker
and each restart draws its own settings from it. A pruned trial ends as PATIENCE ends a run: its best epoch tested.
"""

import argparse
import contextlib
import fcntl
import json
import os
import random
import shlex
import shutil
import signal
import socket
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

import train_distilbert as td
import train_lstm_baseline as tl
from textclf.metrics import headline
from textclf.runfolder import atomic_write
from textclf.settings import RecipeError, flag, parse_settings
from textclf.training import Run, checked_settings

SCRIPTS = {"train_distilbert.py": td, "train_lstm_baseline.py": tl}
FIXED = ("OUT_DIR", "RESUME")  # the sweep's: each trial runs in its own folder, from the start
NEEDS = {  # settings that change nothing unless another one is set: (that setting, whether it is, what to give)
    "DISTILL_ALPHA": ("TEACHER", bool, "a teacher (--teacher)"),
    "DISTILL_TEMPERATURE": ("TEACHER", bool, "a teacher (--teacher)"),
    "UNLABELED_URL": ("TEACHER", bool, "a teacher (--teacher)"),
    "LORA_ALPHA": ("LORA_RANK", lambda rank: rank > 0, "adapters (--lora-rank above 0)"),
    "LORA_DROPOUT": ("LORA_RANK", lambda rank: rank > 0, "adapters (--lora-rank above 0)"),
    "HEAD_TOKENS": ("TRUNCATION", lambda cut: cut == "head+tail", "--truncation head+tail"),
}
LARGE = ("checkpoint.pt", "model", "model.pt", "adapter")  # what a trial that stopped before its end keeps none of


STATES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def script_of(name):
    """(file name, module) of the training script name (a path, or its file name)."""
    script = Path(name).name
    if script not in SCRIPTS:
        raise RecipeError(f"{name} is not a training script; sweep {' or '.join(SCRIPTS)}")
    return script, SCRIPTS[script]


def typed(module, script, setting, text, what):
    """text as setting's value, typed and read as the script reads its flags (true/false, integers, floats)."""
    try:
        settings, _ = parse_settings([f"{flag(setting)}={text}"], module.DEFAULTS)
    except SystemExit as e:
        raise RecipeError(f"{what}: {str(e.code).removeprefix('error: ')}") from None
    return settings[setting]


def allowed(module, base, given, setting, value, what, range_=None):
    """A RecipeError unless the script takes value for setting beside the sweep's command line (its own checks);
    range_: the range value was drawn from, where it is one."""
    s = {**base, setting: value}
    try:
        checked_settings(s, {*given, setting}, module.POSITIVE_SETTINGS, module.check_settings)
    except RecipeError as e:
        within = f" (inside the range {range_}: every value a trial may draw must be one)" if range_ else ""
        raise RecipeError(f"{what}: {value!r}{within} is not a value {setting} takes ({e})") from None


def parse_space(specs, module, script, base, given):
    """{SETTING: Optuna distribution} of the --space specifications, each checked against the script's settings and
    against what the script accepts for them."""
    if not specs:
        raise RecipeError('give at least one setting to search, e.g. --space "learning_rate=1e-5:1e-3:log"')
    space = {}
    for spec in specs:
        name, equals, values = spec.partition("=")
        setting = name.strip().upper().replace("-", "_")
        what = f"--space {spec!r}"
        if not equals or not values.strip():
            raise RecipeError(f"{what} needs NAME=LOW:HIGH, NAME=LOW:HIGH:log or NAME=A,B,C")
        if setting not in module.DEFAULTS or setting in FIXED:
            known = " ".join(n.lower() for n in module.DEFAULTS if n not in FIXED)
            raise RecipeError(f"{what}: {script} has no setting {name.strip()!r} to search; its settings: {known}")
        if setting in space:
            raise RecipeError(f"{what}: {setting} is searched twice")
        default = module.DEFAULTS[setting]
        if ":" in values:
            parts = [part.strip() for part in values.split(":")]
            log = len(parts) == 3 and parts[2] == "log"
            if len(parts) not in (2, 3) or len(parts) == 3 and not log:
                raise RecipeError(f"{what}: a range is LOW:HIGH or LOW:HIGH:log")
            if isinstance(default, (bool, str)):
                raise RecipeError(f"{what}: {setting} is not a number; give its choices, e.g. {name.strip()}=a,b")
            low, high = (typed(module, script, setting, part, what) for part in parts[:2])
            if not low < high:
                raise RecipeError(f"{what}: LOW must be below HIGH, got {low} and {high}")
            if log and low <= 0:
                raise RecipeError(f"{what}: a log range needs LOW > 0, got {low}")
            kind = IntDistribution if isinstance(default, int) and isinstance(low, int) else FloatDistribution
            for value in inside(low, high, log, kind is IntDistribution):  # the ends, and values between them
                allowed(module, base, given, setting, value, what, None if value in (low, high) else f"{low}:{high}")
            space[setting] = kind(low, high, log=log)
        else:
            choices = [typed(module, script, setting, part.strip(), what) for part in values.split(",")]
            if len(set(choices)) < len(choices) or len(choices) < 2:
                raise RecipeError(f"{what}: give two or more different choices")
            for value in choices:
                allowed(module, base, given, setting, value, what)
            space[setting] = CategoricalDistribution(choices)
        if setting in given:
            raise RecipeError(
                f"{what}: {setting} is also given after -- ({flag(setting)}); each trial sets it from the search: "
                f"drop it from the command line after --"
            )
    for setting in space:
        if setting in NEEDS and NEEDS[setting][0] in module.DEFAULTS:
            other, on, give = NEEDS[setting]
            searched = space.get(other)
            values = searched.choices if isinstance(searched, CategoricalDistribution) else [base[other]]
            fixed = searched is None or isinstance(searched, CategoricalDistribution)  # (a range: some values are on)
            if fixed and not any(on(value) for value in values):
                raise RecipeError(
                    f"--space {setting.lower()}: {setting} changes nothing without {give}, so every trial would "
                    f"be the same run; give {give} after --, or search another setting"
                )
    return space


def inside(low, high, log, integers):
    """The values a range's checks try: its ends and seven between them (evenly spaced, or by ratio for log)."""
    if log:
        between = np.geomspace(low, high, 9)
    else:
        between = np.linspace(low, high, 9)
    values = [low, *(v.item() for v in between[1:-1]), high]
    return sorted({round(v) for v in values}) if integers else values


def command_line(script, base_argv, params, folder):
    """The trial's command line: the sweep's, the trial's settings, its folder."""
    values = {
        name: str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, float) else value
        for name, value in params.items()
    }
    return [*base_argv, *(f"{flag(name)}={value}" for name, value in values.items()), f"--out-dir={folder}"]


@contextlib.contextmanager
def folder_lock(folder):
    """While a worker creates the study, or counts the trials and asks for the next, no other worker of this machine
    does (a file lock in the sweep's folder): --trials is exact on one machine. Workers on several machines may run
    one trial more at most."""
    if not folder.is_dir():
        raise RecipeError(
            f"the sweep's folder {folder} was deleted while the sweep ran; start the sweep again (a new study, "
            f"unless --storage keeps it elsewhere)"
        )
    with open(folder / ".trials.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class SeededByTrial(optuna.samplers.BaseSampler):
    """Optuna's TPE sampler whose random draws for trial N come from (--seed, N): each worker, and each restart, draws
    settings of its own (a study numbers its trials once each), and a study of one worker is the same every time.
    Without a seed, a TPE sampler of random seed."""

    def __init__(self, seed, startup_trials):
        self.seed, self.startup_trials = seed, startup_trials
        self.tpe = self.for_trial(None)

    def for_trial(self, number):
        seed = None
        if self.seed is not None and number is not None:
            seed = int(np.random.SeedSequence([self.seed, number]).generate_state(1)[0])
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.startup_trials)

    def before_trial(self, study, trial):
        self.tpe = self.for_trial(trial.number)
        self.tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self.tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):
        self.tpe.after_trial(study, trial, state, values)


def racing(error):
    """Whether a database error is another worker creating the same tables or study at the same moment."""
    text = str(error).lower()
    return isinstance(error, (OperationalError, IntegrityError)) and any(
        words in text for words in ("already exists", "unique", "duplicate", "locked")
    )


def open_study(name, storage, script, space, base_argv, args, create, attempts=8):
    """The study in storage, made if new (with create), checked to be this script's, search space's and command's.
    Workers that start together on a new study are safe: on one machine they take turns (folder_lock()), and where
    another machine's worker creates the tables or the study at the same moment, this one tries again."""
    for attempt in range(attempts):
        try:
            return try_open_study(name, storage, script, space, base_argv, args, create)
        except SQLAlchemyError as e:
            if not racing(e) or attempt == attempts - 1:
                raise RecipeError(
                    f"--storage {storage} does not connect ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                    f"give a database URL Optuna takes (sqlite:///PATH, postgresql://USER@HOST/DB)"
                ) from None
            time.sleep(random.uniform(0.1, 0.5) * (attempt + 1))


def try_open_study(name, storage, script, space, base_argv, args, create):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            db = optuna.storages.RDBStorage(storage)
    except (ImportError, ValueError, OSError) as e:  # a URL it cannot parse, no driver, no server
        raise RecipeError(
            f"--storage {storage} does not connect ({type(e).__name__}: {' '.join(str(e).split())[:200]}); give a "
            f"database URL Optuna takes (sqlite:///PATH, postgresql://USER@HOST/DB)"
        ) from None
    exists = name in {summary.study_name for summary in optuna.get_all_study_summaries(db)}
    if not exists and not create:
        raise RecipeError(f"there is no study {name!r} in {storage}; start it without --show")
    pruner = optuna.pruners.MedianPruner(n_startup_trials=args.startup_trials) if args.pruner == "median" else None
    study = optuna.create_study(
        storage=db,
        study_name=name,
        direction="maximize",
        sampler=SeededByTrial(args.seed, args.startup_trials),
        pruner=pruner or optuna.pruners.NopPruner(),
        load_if_exists=True,
    )
    searched = {setting: optuna.distributions.distribution_to_json(d) for setting, d in space.items()}
    ours = {"script": script, "space": searched, "command": base_argv}
    if exists and create and study.user_attrs:  # (a study made by Optuna itself, to enqueue trials, is taken as it is)
        theirs = {key: study.user_attrs.get(key) for key in ours}
        differ = [key for key in ours if theirs[key] != ours[key]]
        if differ:
            shown = {"script": "script", "space": "search space", "command": "command line after --"}
            raise RecipeError(
                f"the study {name!r} in {storage} was started with another {shown[differ[0]]} "
                f"({theirs[differ[0]]}); continue it with the same one, or name a new study with --study"
            )
    elif create:  # a new study
        for key, value in ours.items():
            study.set_user_attr(key, value)
    return study


def fail_abandoned(study, folder):
    """Trials this machine left running when its worker died (killed, power) are marked failed and run again."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker", {})
        if worker.get("host") == host and not alive(worker.get("pid")):
            why = f"abandoned by a worker that stopped (pid {worker.get('pid')})"
            retry(study, trial.number, trial.params, folder / f"trial-{trial.number}", why)


def retry(study, number, params, folder, why):
    """A trial stopped before its end (Ctrl-C, SIGTERM, a dead worker): failed, its large files removed, and its
    settings queued as a new trial (its user attribute retry_of: number) that runs first when the sweep continues.
    Such a trial does not count against --trials (retried())."""
    study.tell(number, state=TrialState.FAIL)
    study.enqueue_trial(params, user_attrs={"retry_of": number, "retry_why": why})
    for name in LARGE:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    record(folder, "failed", f"{why}: the sweep runs the same settings again as a new trial")
    print(f"trial {number} {why}: the sweep runs its settings again as a new trial", file=sys.stderr)


def retried(trials):
    """{number of a trial run again: (why, the number of the trial that runs it again)}."""
    return {
        t.user_attrs["retry_of"]: (t.user_attrs.get("retry_why"), t.number)
        for t in trials
        if "retry_of" in t.user_attrs
    }


def alive(pid):
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_trial(study, trial, module, script, base_argv, folder):
    """One trial: the script's run in folder with the trial's settings, its validation score after each epoch reported
    to the pruner, which may stop it there (the run then ends as with PATIENCE: its best epoch tested and saved). Its
    state goes to the study, and to folder/trial.json."""
    argv = command_line(script, base_argv, trial.params, folder)
    trial.set_user_attr("command", shlex.join(["python", script, *argv]))
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
    print(f"\ntrial {trial.number}: {', '.join(f'{k.lower()} {v}' for k, v in trial.params.items())}", flush=True)

    def observer(epoch, score):
        if score is not None:
            trial.report(score, epoch)
        trial.set_user_attr("epochs", epoch)
        return trial.should_prune()

    Run.observer = observer
    Run.interrupted = "the sweep runs this trial's settings again as a new trial when it continues"
    try:
        metrics = module.main(argv)
    except SystemExit as e:
        message = str(e.code)
        if not message.startswith("error:"):  # Ctrl-C or SIGTERM: run again when the sweep continues
            retry(study, trial.number, trial.params, folder, f"interrupted ({signal_name(e.code)})")
            raise
        trial.set_user_attr("error", message.removeprefix("error: "))
        study.tell(trial, state=TrialState.FAIL)
        record(folder, "failed", message)
        print(f"trial {trial.number} failed: {message}", file=sys.stderr)
        return
    finally:
        Run.observer = None
        Run.interrupted = None
    score = metrics["valid"][headline(metrics["valid"])]
    if metrics.get("pruned"):
        epoch = metrics["stopped_early_at"]
        study.tell(trial, state=TrialState.PRUNED)
        record(
            folder,
            "pruned",
            f"stopped after epoch {epoch}: below the median of earlier trials; a run of its "
            f"best epoch, {metrics['best_epoch']}",
        )
        print(f"trial {trial.number} pruned after epoch {epoch}")
        return
    if score is None:
        message = "its validation score is undefined (one value predicted for every text)"
        trial.set_user_attr("error", message)
        study.tell(trial, state=TrialState.FAIL)
        record(folder, "failed", message)
        return
    study.tell(trial, score)
    record(folder, "complete", f"best validation {headline(metrics['valid'])} {score:.4f}")


def signal_name(code):
    """SIGINT of exit status 130 (128 + the signal), or the status itself."""
    try:
        return signal.Signals(code - 128).name
    except (TypeError, ValueError):
        return f"exit status {code}"


def record(folder, state, why):
    """folder/trial.json: how the trial ended (the folder made where the run stopped before making it)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "trial.json", lambda f: f.write(json.dumps({"state": state, "why": why}).encode()))


def number(value):
    return "–" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def table(study, space):
    """The trials as a markdown table: settings, best validation score, epochs run, state (why a failed one failed)."""
    header = ["trial", *(name.lower() for name in space), "best validation score", "epochs", "state"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    trials = study.get_trials(deepcopy=False)
    again = retried(trials)
    for trial in trials:
        scores = list(trial.intermediate_values.values())
        best = trial.value if trial.state == TrialState.COMPLETE else max(scores) if scores else None
        state = STATES[trial.state] + (f": {trial.user_attrs['error']}" if "error" in trial.user_attrs else "")
        if trial.number in again:
            state += f": {again[trial.number][0]}; run again as trial {again[trial.number][1]}"
        cells = [str(trial.number), *(number(trial.params.get(name)) for name in space), number(best)]
        lines.append("| " + " | ".join([*cells, str(len(scores)), state.replace("|", "\\|")]) + " |")
    return "\n".join(lines)


def plot(study, space, path):
    """The best validation score of each complete or pruned trial against each searched setting, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(space), figsize=(4.5 * len(space), 4), squeeze=False, dpi=100)
    for ax, (name, distribution) in zip(axes[0], space.items(), strict=True):
        for state, marker in ((TrialState.COMPLETE, "o"), (TrialState.PRUNED, "x")):
            trials = [t for t in study.get_trials(deepcopy=False, states=(state,)) if t.intermediate_values]
            x = [t.params[name] for t in trials]
            if isinstance(distribution, CategoricalDistribution):
                x = [distribution.choices.index(value) for value in x]
            y = [t.value if state == TrialState.COMPLETE else max(t.intermediate_values.values()) for t in trials]
            ax.scatter(x, y, marker=marker, label=state.name.lower())
        if isinstance(distribution, CategoricalDistribution):
            ax.set_xticks(range(len(distribution.choices)), [str(c) for c in distribution.choices])
            ax.set_xlim(-0.5, len(distribution.choices) - 0.5)
        elif distribution.log:
            ax.set_xscale("log")
        ax.set(xlabel=name.lower(), ylabel="best validation score", title=name.lower())
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    figure.tight_layout()
    atomic_write(path, lambda f: figure.savefig(f, format="png"))
    plt.close(figure)


def again(command, folder):
    """A trial's command line with its --out-dir replaced by folder: the same run, into a folder of its own."""
    words = shlex.split(command)
    return shlex.join([word for word in words if not word.startswith("--out-dir=")] + [f"--out-dir={folder}"])


def report(study, space, folder):
    """The trials' table, the best trial's command, and scores.png."""
    print("\n" + table(study, space))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = max(complete, key=lambda t: t.value)
        command = again(best.user_attrs["command"], folder / "best")
        print(f"\nbest: trial {best.number}, validation score {best.value:.4f}; run it again with:\n  {command}")
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        plot(study, space, folder / "scores.png")
        print(f"wrote {folder / 'scores.png'}", file=sys.stderr)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    ours, base_argv = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("script", help="train_distilbert.py or train_lstm_baseline.py")
    parser.add_argument("--space", action="append", default=[], help="NAME=LOW:HIGH, NAME=LOW:HIGH:log or NAME=A,B,C")
    parser.add_argument("--trials", type=int, default=20, help="trials in the study, all workers together (default 20)")
    parser.add_argument("--study", help="the study's name (default: the script's, e.g. train_distilbert)")
    parser.add_argument("--storage", help="a database URL (default: sqlite:///SWEEP_DIR/STUDY/study.db)")
    parser.add_argument("--sweep-dir", default="runs/sweep", help="where each study's trials run (default runs/sweep)")
    parser.add_argument("--pruner", default="median", choices=["median", "none"], help="stop hopeless trials early")
    parser.add_argument(
        "--startup-trials", type=int, default=5, help="trials sampled at random and never pruned first (default 5)"
    )
    parser.add_argument("--seed", type=int, help="the sampler's seed (default: none)")
    parser.add_argument("--show", action="store_true", help="print the trials so far and draw scores.png; run none")
    parser.error = lambda message: sys.exit(f"error: {message}")  # one line and exit 1, like every other error
    args = parser.parse_args(ours)
    try:
        script, module = script_of(args.script)
        if args.trials < 1 or args.startup_trials < 0:
            raise RecipeError(f"--trials must be positive and --startup-trials not negative, got {args.trials}")
        name = args.study or Path(script).stem
        if not name.replace("-", "").replace("_", "").isalnum():
            raise RecipeError(f"--study {name!r}: use letters, digits, - and _ (it names a folder)")
        base, given = parse_settings(base_argv, module.DEFAULTS, module.__file__)
        fixed = [flag(setting) for setting in FIXED if setting in given]
        if fixed:
            raise RecipeError(f"{fixed[0]} is the sweep's to set (each trial runs in {args.sweep_dir}/{name}/trial-N)")
        space = {} if args.show and not args.space else parse_space(args.space, module, script, base, given)
        folder = Path(args.sweep_dir) / name
        storage = args.storage or f"sqlite:///{folder.resolve() / 'study.db'}"
        if args.show:
            if not args.storage and not (folder / "study.db").is_file():
                raise RecipeError(f"there is no study {name!r} in {folder}; start it without --show")
            study = open_study(name, storage, script, space, base_argv, args, create=False)
            space = space or {
                setting: optuna.distributions.json_to_distribution(d)
                for setting, d in study.user_attrs["space"].items()
            }
            report(study, space, folder)
            return study
        if args.storage:  # a database of its own: made there first, then the trials' folder here
            study = open_study(name, storage, script, space, base_argv, args, create=True)
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            with folder_lock(folder):  # workers that start together on a new study create it one at a time
                study = open_study(name, storage, script, space, base_argv, args, create=True)
        with folder_lock(folder):  # (this machine's workers: one of them runs an abandoned trial again)
            fail_abandoned(study, folder)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        while True:
            with folder_lock(folder):
                trials = study.get_trials(deepcopy=False)
                again = retried(trials)
                counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
                tried = [
                    t for t in trials if t.state in counted and t.number not in again
                ]  # retried: their rerun counts
                if len(tried) >= args.trials:  # enqueued trials (WAITING) are the next to run, not yet tried
                    break
                trial = study.ask(space)
            run_trial(study, trial, module, script, base_argv, folder / f"trial-{trial.number}")
        report(study, space, folder)
        return study
    except RecipeError as e:
        raise SystemExit(f"error: {e}") from None
    except SQLAlchemyError as e:  # the database went away mid-sweep (its folder deleted, its server stopped)
        raise SystemExit(
            f"error: the study's database {storage} stopped answering ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:160]}); restore it and start the same command again, or start a new study"
        ) from None
    except KeyboardInterrupt:  # Ctrl-C between two trials
        print("sweep stopped (SIGINT); start the same command again to continue", file=sys.stderr)
        raise SystemExit(130) from None
    except SystemExit as e:
        if isinstance(e.code, int) and e.code >= 128:  # a trial stopped by Ctrl-C or SIGTERM
            print(
                f"sweep stopped ({signal.Signals(e.code - 128).name}); its trials so far are in {storage}: start the "
                f"same command again to continue",
                file=sys.stderr,
            )
        raise


if __name__ == "__main__":
    main()
