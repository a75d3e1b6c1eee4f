"""LoRA adapters against full fine-tuning of the same checkpoint on the same split, side by side in one command: test
accuracy, seconds an optimizer step, peak memory (the training process's maximum resident set on a CPU; peak GPU
memory on CUDA), the size of checkpoint.pt (its largest while the run lasts) and of what the run saves.

    python benchmarks/lora.py --data movie_data.csv.gz --model-name PATH/TO/MiniLM --lora-rates 5e-4 1e-3 2e-3

Each run is train_distilbert.py started from the shell with the same settings but LORA_RANK and LEARNING_RATE; the
full fine-tune uses the recipe's 5e-5. Prints a markdown table, and writes it with the command into --results.
"""

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from textclf.parallel import cpu_name


def folder_size(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def run(flags, out):
    """train_distilbert.py with flags into out: (metrics, peak resident bytes, largest checkpoint.pt bytes)."""
    largest = [0]
    done = threading.Event()

    def watch():  # the checkpoint is removed at the end of a run: its size is read while it lasts
        while not done.is_set():
            try:
                largest[0] = max(largest[0], (out / "checkpoint.pt").stat().st_size)
            except OSError:
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train_distilbert.py"), *flags, f"--out-dir={out}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(process.pid, 0)  # this child's own peak memory (ru_maxrss: kilobytes on Linux)
    done.set()
    watcher.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: {shlex.join(flags)} failed: {process.stderr.read()[-500:]}")
    return json.loads((out / "metrics.json").read_text()), usage.ru_maxrss * 1024, largest[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the IMDb CSV (or any data file train_distilbert.py reads)")
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--train-size", type=int, default=5_000)
    parser.add_argument("--valid-size", type=int, default=1_000)
    parser.add_argument("--test-size", type=int, default=2_000)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lora-rates", type=float, nargs="+", default=[5e-4, 1e-3, 2e-3])
    parser.add_argument("--full-rate", type=float, default=5e-5)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    common = [
        f"--data-url={Path(args.data).resolve()}",
        f"--model-name={Path(args.model_name).resolve()}",
        f"--train-size={args.train_size}",
        f"--valid-size={args.valid_size}",
        f"--test-size={args.test_size}",
        f"--max-length={args.max_length}",
        f"--epochs={args.epochs}",
        "--tensorboard=false",
    ]
    configs = [("full fine-tuning", 0, args.full_rate)] + [
        (f"LoRA rank {args.lora_rank}", args.lora_rank, rate) for rate in args.lora_rates
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        common.append(f"--data-dir={Path(tmp) / 'data'}")
        for i, (name, rank, rate) in enumerate(configs):
            out = Path(tmp) / f"run{i}"
            metrics, peak, checkpoint = run([*common, f"--lora-rank={rank}", f"--learning-rate={rate}"], out)
            steps = -(-metrics["examples"]["train"] // metrics["settings"]["BATCH_SIZE"]) * len(metrics["epochs"])
            memory = metrics["peak_gpu_memory"] or peak
            rows.append(
                [
                    name,
                    f"{rate:g}",
                    f"{metrics['test_accuracy']:.4f}",
                    f"{metrics['train_seconds'] / steps:.3f}",
                    f"{memory / 2**20:,.0f} MiB",
                    f"{checkpoint / 2**20:,.1f} MiB",
                    f"{folder_size(out / 'model') / 2**20:,.1f} MiB",
                    f"{folder_size(out / 'adapter') / 2**20:,.2f} MiB" if rank else "–",
                    metrics.get("precision", "?"),
                ]
            )
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
            device = metrics["device"] if metrics["device"] != "cpu" else f"CPU: {cpu_name() or 'model unknown'}"
    header = [
        "run",
        "learning rate",
        "test accuracy",
        "s a step",
        "peak memory",
        "checkpoint.pt",
        "model/",
        "adapter/",
        "precision",
    ]
    table = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(row) + " |" for row in rows]
    )
    text = (
        f"# LoRA against full fine-tuning ({datetime.date.today()}, {device})\n\n"
        f"    python benchmarks/lora.py {shlex.join(argv if argv is not None else sys.argv[1:])}\n\n{table}\n"
    )
    print(text)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"lora-vs-full_{datetime.date.today()}.md"
    path.write_text(text)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
