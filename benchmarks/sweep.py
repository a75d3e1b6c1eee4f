"""A learning-rate search by sweep.py (TPE, median pruning) against the grid a user runs by hand with the same number of
trials, side by side in one command, for the LSTM and for MiniLM with LoRA on the IMDb CSV: the wall-clock time each
took, the learning rate it found, that run's best validation accuracy and its test accuracy.

    python benchmarks/sweep.py --data ../shared/data/imdb/movie_data.csv.gz --model-name PATH/TO/MiniLM

The grid: --trials learning rates spaced evenly in log scale over the same range, each run to the end from the shell.
The search: sweep.py over that range with the same budget, pruning on after --startup trials. Prints a markdown table,
and writes it with the command into --results.
"""

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from textclf.parallel import cpu_name


def shell(args, cwd=ROOT):
    done = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: {shlex.join(map(str, args))} failed: {done.stderr[-800:]}")
    return done.stdout


def grid(script, base, rates, folder):
    """Each learning rate run to the end: (seconds, best rate, its metrics)."""
    start = time.perf_counter()
    runs = []
    for i, rate in enumerate(rates):
        out = folder / f"grid-{i}"
        shell([ROOT / script, *base, f"--learning-rate={rate!r}", f"--out-dir={out}"])
        runs.append((rate, json.loads((out / "metrics.json").read_text())))
    seconds = time.perf_counter() - start
    rate, metrics = max(runs, key=lambda run: run[1]["valid_accuracy"])
    return seconds, rate, metrics, len(runs)


def search(script, base, low, high, trials, startup, folder):
    """sweep.py over [low, high] (log) with the same budget: (seconds, best rate, its metrics, trials pruned)."""
    start = time.perf_counter()
    shell(
        [
            ROOT / "sweep.py",
            script,
            f"--trials={trials}",
            f"--startup-trials={startup}",
            "--seed=0",
            f"--sweep-dir={folder}",
            f"--space=learning_rate={low}:{high}:log",
            "--",
            *base,
        ]
    )
    seconds = time.perf_counter() - start
    study = optuna.load_study(
        study_name=Path(script).stem, storage=f"sqlite:///{folder / Path(script).stem / 'study.db'}"
    )
    best = study.best_trial
    metrics = json.loads((folder / Path(script).stem / f"trial-{best.number}" / "metrics.json").read_text())
    pruned = sum(trial.state.name == "PRUNED" for trial in study.trials)
    return seconds, best.params["LEARNING_RATE"], metrics, pruned


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the IMDb CSV")
    parser.add_argument("--model-name", required=True, help="MiniLM (all-MiniLM-L6-v2), trained with LoRA")
    parser.add_argument("--train-size", type=int, default=1_000)
    parser.add_argument("--valid-size", type=int, default=500)
    parser.add_argument("--test-size", type=int, default=1_000)
    parser.add_argument("--trials", type=int, default=5, help="the budget of each: grid points, or sweep trials")
    parser.add_argument("--startup", type=int, default=2, help="sweep trials sampled at random and never pruned first")
    parser.add_argument("--models", nargs="+", default=["lstm", "minilm"], choices=["lstm", "minilm"])
    parser.add_argument("--minilm-epochs", type=int, default=3)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    split = [f"--train-size={args.train_size}", f"--valid-size={args.valid_size}", f"--test-size={args.test_size}"]
    data = Path(args.data).resolve()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        common = [f"--data-url={data}", *split, f"--data-dir={tmp / 'data'}", "--tensorboard=false"]
        setups = [
            ("LSTM", "train_lstm_baseline.py", [*common, "--epochs=5", "--max-length=400"], 1e-3, 5e-2),
            (
                "MiniLM, LoRA rank 16",
                "train_distilbert.py",
                [
                    *common,
                    f"--model-name={Path(args.model_name).resolve()}",
                    "--lora-rank=16",
                    "--max-length=128",
                    f"--epochs={args.minilm_epochs}",
                ],
                1e-4,
                1e-2,
            ),
        ]
        setups = [setup for setup, model in zip(setups, ["lstm", "minilm"], strict=True) if model in args.models]
        for name, script, base, low, high in setups:
            rates = np.geomspace(low, high, args.trials).tolist()
            for kind, result in (
                ("grid", grid(script, base, rates, tmp / f"{script}-grid")),
                ("sweep.py", search(script, base, low, high, args.trials, args.startup, tmp / f"{script}-sweep")),
            ):
                seconds, rate, metrics, extra = result
                note = f"{extra} runs" if kind == "grid" else f"{args.trials} trials, {extra} pruned"
                rows.append(
                    [
                        name,
                        f"{kind} ({note})",
                        f"{seconds:.0f}",
                        f"{rate:.2e}",
                        f"{metrics['valid_accuracy']:.4f}",
                        f"{metrics['test_accuracy']:.4f}",
                    ]
                )
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    header = ["model", "search", "seconds", "learning rate found", "its valid accuracy", "its test accuracy"]
    table = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(row) + " |" for row in rows]
    )
    text = (
        f"# A learning-rate search against the grid of the same budget ({datetime.date.today()}, CPU: "
        f"{cpu_name() or 'model unknown'}, torch {torch.__version__}, {torch.get_num_threads()} threads)\n\n"
        f"    python benchmarks/sweep.py {shlex.join(argv if argv is not None else sys.argv[1:])}\n\n{table}\n"
    )
    print(text)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"cpu-1core_sweep-vs-grid_{datetime.date.today()}.md"
    path.write_text(text)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
