"""Distillation on IMDb, side by side in one command: the LSTM trained alone on few labels, the LSTM distilled from a
fine-tuned transformer on the same labels (without, and with, unlabelled transfer texts), and the teacher itself: test
accuracy, parameters, and predict.py's throughput (texts a second, the model loaded, on the same test texts).

    python benchmarks/distill.py --data ../shared/data/imdb/movie_data.csv.gz --model-name PATH/TO/MiniLM

The CSV's rows in file order: TRAIN_SIZE labelled training reviews, VALID_SIZE, TEST_SIZE, then --transfer reviews
that follow the split, their labels dropped (the stand-in for aclImdb's unlabelled reviews). Each run is a script
started from the shell; throughput is predict.Run's, timed here. Prints a markdown table, and writes it with the
command into --results.
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

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import predict
from textclf.data import read_reviews
from textclf.parallel import cpu_name


def train(script, flags, out):
    """script with flags into out, from the shell: its metrics.json."""
    done = subprocess.run(
        [sys.executable, str(ROOT / script), *flags, f"--out-dir={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"error: {script} {shlex.join(flags)} failed: {done.stderr[-800:]}")
    return json.loads((out / "metrics.json").read_text())


def throughput(out, texts, batch_size):
    """predict.py's texts a second on texts with the run in out, on this CPU in fp32 (its model already loaded)."""
    run = predict.Run(out, torch.device("cpu"), "fp32")
    start = time.perf_counter()
    run.logits(texts, batch_size)
    return len(texts) / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the IMDb CSV")
    parser.add_argument("--model-name", required=True, help="the teacher's checkpoint (all-MiniLM-L6-v2 here)")
    parser.add_argument("--train-size", type=int, default=2_000)
    parser.add_argument("--valid-size", type=int, default=2_000)
    parser.add_argument("--test-size", type=int, default=5_000)
    parser.add_argument("--transfer", type=int, default=6_000, help="unlabelled reviews after the split")
    parser.add_argument("--max-length", type=int, default=128, help="the teacher's tokens per review")
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--teacher-rate", type=float, default=5e-5)
    parser.add_argument("--lstm-epochs", type=int, default=15)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    data = Path(args.data).resolve()
    split = [f"--train-size={args.train_size}", f"--valid-size={args.valid_size}", f"--test-size={args.test_size}"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frame, _ = read_reviews(
            data, None, {"TEXT_COLUMN": "review", "LABEL_COLUMNS": "sentiment", "LABEL_NAMES": "negative,positive"}
        )
        first = args.train_size + args.valid_size
        test_texts = frame["text"].iloc[first : first + args.test_size].tolist()
        rest = pd.read_csv(data, dtype=str, keep_default_na=False).iloc[first + args.test_size :]
        unlabelled = tmp / "unlabelled.csv"
        rest[["review"]].iloc[: args.transfer].to_csv(unlabelled, index=False)
        common = [f"--data-url={data}", *split, f"--data-dir={tmp / 'data'}", "--tensorboard=false"]
        teacher = tmp / "teacher"
        runs = {
            "teacher": train(
                "train_distilbert.py",
                [
                    *common,
                    f"--model-name={Path(args.model_name).resolve()}",
                    f"--max-length={args.max_length}",
                    f"--epochs={args.teacher_epochs}",
                    f"--learning-rate={args.teacher_rate}",
                ],
                teacher,
            )
        }
        lstm = [*common, f"--epochs={args.lstm_epochs}"]
        runs["LSTM alone"] = train("train_lstm_baseline.py", lstm, tmp / "alone")
        runs["LSTM + teacher"] = train("train_lstm_baseline.py", [*lstm, f"--teacher={teacher}"], tmp / "taught")
        runs[f"LSTM + teacher + {args.transfer:,} unlabelled"] = train(
            "train_lstm_baseline.py", [*lstm, f"--teacher={teacher}", f"--unlabeled-url={unlabelled}"], tmp / "transfer"
        )
        folders = dict(zip(runs, [teacher, tmp / "alone", tmp / "taught", tmp / "transfer"], strict=True))
        rows = []
        for name, metrics in runs.items():
            rate = throughput(folders[name], test_texts, metrics["settings"]["EVAL_BATCH_SIZE"])
            agreement = (metrics.get("teacher") or {}).get("agreement")
            rows.append(
                [
                    name,
                    f"{metrics['examples']['train']:,}"
                    + f" + {metrics.get('transfer_texts', 0):,}" * bool(metrics.get("transfer_texts")),
                    f"{metrics['test_accuracy']:.4f}",
                    "–" if agreement is None else f"{agreement:.4f}",
                    f"{metrics['parameters'] / 1e6:.2f}M",
                    f"{rate:,.0f}",
                    f"{metrics['train_seconds']:.0f}",
                ]
            )
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    header = [
        "run",
        "training texts",
        "test accuracy",
        "agrees with teacher",
        "parameters",
        "predict texts/s",
        "training s",
    ]
    table = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(row) + " |" for row in rows]
    )
    text = (
        f"# Distillation: the LSTM taught by a fine-tuned MiniLM ({datetime.date.today()}, CPU: "
        f"{cpu_name() or 'model unknown'}, torch {torch.__version__}, {torch.get_num_threads()} threads)\n\n"
        f"    python benchmarks/distill.py {shlex.join(argv if argv is not None else sys.argv[1:])}\n\n{table}\n"
    )
    print(text)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"cpu-1core_lstm-distilled-from-minilm-l6_{datetime.date.today()}.md"
    path.write_text(text)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
