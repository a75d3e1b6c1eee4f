"""Closer to the teacher, side by side in one command: a fine-tuned MiniLM, a student of 3 of its 6 layers (alone,
distilled with unlabelled texts, and with the hidden-state loss too), and the LSTM (alone, distilled with augmented
copies of the labelled texts only, and with the unlabelled texts): test accuracy, agreement with the teacher,
parameters and predict.py's texts a second on one core.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/student.py --data ../shared/data/imdb/movie_data.csv.gz \\
        --model-name PATH/TO/MiniLM

The CSV's rows in file order: 2,000 labelled training reviews, 1,000 validation, 5,000 test, then 6,000 reviews with
their labels dropped as the unlabelled texts (the distillation benchmark's split). Each run is a script started from
the shell, skipped where --work-dir holds it finished already (a run of benchmarks/export.py leaves the teacher and
the LSTM with unlabelled texts there); --only NAME,NAME trains those alone (two cores: two commands). Throughput is
predict.Run's on the first --texts test reviews, the model loaded first, one thread. Prints a markdown table and
writes it with the command and the CPU into --results.
"""

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import export
import predict
from textclf.parallel import cpu_bf16, cpu_name


def train(script, flags, out):
    """script with flags into out, from the shell, unless out holds a finished run: its metrics.json."""
    if not (out / "metrics.json").is_file():
        done = subprocess.run([sys.executable, str(ROOT / script), *flags, f"--out-dir={out}"], cwd=ROOT, check=False)
        if done.returncode != 0:
            raise SystemExit(f"error: {script} {shlex.join(flags)} failed")
    return json.loads((out / "metrics.json").read_text())


def throughput(out, texts):
    """predict.py's texts a second on texts with the run in out, on this CPU in fp32, its model loaded first."""
    run = predict.Run(out, torch.device("cpu"), "fp32")
    start = time.perf_counter()
    run.logits(texts, run.settings["EVAL_BATCH_SIZE"])
    return len(texts) / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the IMDb CSV")
    parser.add_argument("--model-name", required=True, help="the teacher's checkpoint (all-MiniLM-L6-v2 here)")
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "bench-export"), help="the runs")
    parser.add_argument("--texts", type=int, default=1_000, help="test reviews for the throughput")
    parser.add_argument("--lstm-epochs", type=int, default=8)
    parser.add_argument("--augment", type=int, default=4, help="augmented copies of each labelled review")
    parser.add_argument("--hidden", type=float, default=1.0, help="DISTILL_HIDDEN of the third student")
    parser.add_argument("--only", help="train these runs (comma-separated names) and stop")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    data, work = Path(args.data).resolve(), Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    common = [f"--data-url={data}", "--train-size=2000", "--valid-size=1000", "--test-size=5000"]
    common += [f"--data-dir={work / 'data'}", "--tensorboard=false"]
    unlabelled = work / "unlabelled.csv"
    if not unlabelled.is_file():
        rows = pd.read_csv(data, dtype=str, keep_default_na=False).iloc[8_000:14_000]
        rows[["review"]].to_csv(unlabelled, index=False)
    teacher = work / "teacher"
    minilm = [f"--model-name={Path(args.model_name).resolve()}", "--max-length=128", "--epochs=3"]
    student = [f"--model-name={teacher / 'model'}", "--student-layers=3", "--max-length=128", "--epochs=3"]
    taught = [f"--teacher={teacher}", f"--unlabeled-url={unlabelled}"]
    lstm = [f"--epochs={args.lstm_epochs}"]
    plan = {  # name: (script, flags, folder)
        "teacher (MiniLM, 6 layers)": ("train_distilbert.py", minilm, "teacher"),
        "student, 3 layers, alone": ("train_distilbert.py", student, "student-alone"),
        "student + teacher + unlabelled": ("train_distilbert.py", [*student, *taught], "student-taught"),
        "student + teacher + unlabelled + hidden": (
            "train_distilbert.py",
            [*student, *taught, f"--distill-hidden={args.hidden}"],
            "student-hidden",
        ),
        "LSTM alone": ("train_lstm_baseline.py", lstm, "lstm-alone"),
        f"LSTM + teacher + {args.augment} augmented copies": (
            "train_lstm_baseline.py",
            [*lstm, f"--teacher={teacher}", f"--distill-augment={args.augment}"],
            "lstm-augmented",
        ),
        "LSTM + teacher + unlabelled": ("train_lstm_baseline.py", [*lstm, *taught], "lstm-taught"),
    }
    only = set(args.only.split(",")) if args.only else None
    runs = {}
    for name, (script, flags, folder) in plan.items():
        if only is None or folder in only or folder == "teacher":
            runs[name] = train(script, [*common, *flags], work / folder)
    if only is not None:
        return
    torch.set_num_threads(1)
    texts = export.test_split(runs["teacher (MiniLM, 6 layers)"], args.texts)[0]
    rows = []
    for name, metrics in runs.items():
        rate = throughput(work / plan[name][2], texts)
        agreement = (metrics.get("teacher") or {}).get("agreement")
        transfer = metrics.get("transfer_texts", 0)
        rows.append(
            [
                name,
                f"{metrics['examples']['train']:,}" + f" + {transfer:,}" * bool(transfer),
                f"{metrics['test_accuracy']:.4f}",
                "–" if agreement is None else f"{agreement:.4f}",
                f"{metrics['parameters'] / 1e6:.2f}M",
                f"{rate:,.1f}",
            ]
        )
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    header = ["run", "training texts", "test accuracy", "agrees with teacher", "parameters", "predict texts/s"]
    table = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(row) + " |" for row in rows]
    )
    text = (
        f"# Closer to the teacher: a student of its own layers, augmented copies ({datetime.date.today()}, CPU: "
        f"{cpu_name() or 'model unknown'} with {cpu_bf16() or 'no native bf16'}, torch {torch.__version__}, one "
        f"thread; PRECISION auto; the 5,000 test reviews, throughput on the first {args.texts:,})\n\n"
        f"    python benchmarks/student.py {shlex.join(argv if argv is not None else sys.argv[1:])}\n\n{table}\n"
    )
    print(text)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"cpu-1core_minilm-student-and-augmented-lstm_{datetime.date.today()}.md"
    path.write_text(text)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
