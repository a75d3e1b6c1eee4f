"""ONNX exports against PyTorch, side by side in one command: a fine-tuned MiniLM, the LSTM distilled from it with
unlabelled texts (the distillation benchmark's runs) and a student of 3 of its 6 layers distilled from it on the
labelled texts (STUDENT_LAYERS), each classified by PyTorch in fp32, PyTorch in bf16 (where the CPU computes it
natively), ONNX Runtime in fp32 and ONNX Runtime with int8 weights: test accuracy, agreement with PyTorch fp32, texts a
second on one core, and the size of the model file.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/export.py --data ../shared/data/imdb/movie_data.csv.gz \\
        --model-name PATH/TO/MiniLM

The runs train first unless --work-dir holds them already (teacher/, lstm-taught/, student/; training is the slow part):
the CSV's rows in file order, 2,000 labelled training reviews, 1,000 validation, 5,000 test, and the 6,000 after them,
their labels dropped, as the LSTM's transfer texts. export.py then writes each run in fp32 and int8 into --work-dir,
and every variant classifies the first --texts test reviews, loaded first and timed alone, with one thread (PyTorch's
and ONNX Runtime's). Prints a markdown table, and writes it with the command and the CPU into --results.
"""

import argparse
import datetime
import json
import shlex
import shutil
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


def measured(run, texts, pairs, targets, batch_size, truth):
    """(accuracy, agreement with truth's labels, texts a second, logits) of run (a predict.Run) on texts."""
    start = time.perf_counter()
    logits = run.logits(texts, batch_size, pairs)
    rate = len(texts) / (time.perf_counter() - start)
    labels = logits.argmax(-1)
    accuracy = float((labels == targets).float().mean())
    agreement = float((labels == truth).float().mean()) if truth is not None else 1.0
    return accuracy, agreement, rate, labels


def size_of(folder):
    """The model file's size in MB: model.onnx, model/'s weights or model.pt."""
    files = [folder / "model.onnx", folder / "model.pt", *sorted((folder / "model").glob("*.safetensors"))]
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the IMDb CSV")
    parser.add_argument("--model-name", required=True, help="the teacher's checkpoint (all-MiniLM-L6-v2 here)")
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "bench-export"), help="the runs and their exports")
    parser.add_argument("--texts", type=int, default=1_000, help="test reviews each variant classifies")
    parser.add_argument("--lstm-epochs", type=int, default=8)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    data, work = Path(args.data).resolve(), Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    split = ["--train-size=2000", "--valid-size=1000", "--test-size=5000"]
    common = [f"--data-url={data}", *split, f"--data-dir={work / 'data'}", "--tensorboard=false"]
    unlabelled = work / "unlabelled.csv"
    if not unlabelled.is_file():
        rows = pd.read_csv(data, dtype=str, keep_default_na=False).iloc[8_000:14_000]
        rows[["review"]].to_csv(unlabelled, index=False)
    minilm = [f"--model-name={Path(args.model_name).resolve()}", "--max-length=128", "--epochs=3"]
    runs = {"MiniLM (teacher)": train("train_distilbert.py", [*common, *minilm], work / "teacher")}
    taught = [*common, f"--epochs={args.lstm_epochs}", f"--teacher={work / 'teacher'}", f"--unlabeled-url={unlabelled}"]
    runs["LSTM distilled"] = train("train_lstm_baseline.py", taught, work / "lstm-taught")
    half = [*common, f"--model-name={work / 'teacher' / 'model'}", "--student-layers=3", "--max-length=128"]
    half += ["--epochs=3", f"--teacher={work / 'teacher'}"]
    runs["MiniLM, 3 of its 6 layers, distilled"] = train("train_distilbert.py", half, work / "student")
    folders = {
        "MiniLM (teacher)": work / "teacher",
        "LSTM distilled": work / "lstm-taught",
        "MiniLM, 3 of its 6 layers, distilled": work / "student",
    }

    torch.set_num_threads(1)
    rows = []
    for name, folder in folders.items():
        for precision in ("fp32", "int8"):
            target = work / f"{folder.name}-onnx-{precision}"
            if not (target / "model.onnx").is_file():
                shutil.rmtree(target, ignore_errors=True)
                export.main([str(folder), str(target), *(["--int8"] * (precision == "int8")), "--threads=1"])
        record = runs[name]
        texts, pairs, targets, _ = export.test_split(record, args.texts)
        batch = record["settings"]["EVAL_BATCH_SIZE"]
        variants = {"PyTorch fp32": predict.Run(folder, torch.device("cpu"), "fp32")}
        if cpu_bf16() and name.startswith("MiniLM"):  # the LSTM computes in fp32 only
            variants["PyTorch bf16"] = predict.Run(folder, torch.device("cpu"), "bf16")
        for precision in ("fp32", "int8"):
            variants[f"ONNX Runtime {precision}"] = predict.Run(
                work / f"{folder.name}-onnx-{precision}", torch.device("cpu"), threads=1
            )
        truth = None
        for variant, run in variants.items():
            accuracy, agreement, rate, labels = measured(run, texts, pairs, targets, batch, truth)
            truth = labels if truth is None else truth
            where = folder if variant.startswith("PyTorch") else work / f"{folder.name}-onnx-{variant.split()[-1]}"
            row = [name, variant, f"{accuracy:.4f}", f"{agreement:.4f}", f"{rate:,.1f}", f"{size_of(where):.1f}"]
            rows.append(row)
            print(" | ".join(row), file=sys.stderr, flush=True)
    header = ["model", "classified by", "test accuracy", "agrees with PyTorch fp32", "texts/s (1 core)", "file MB"]
    table = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(row) + " |" for row in rows]
    )
    flags = cpu_bf16() or "no native bf16"
    text = (
        f"# ONNX exports against PyTorch ({datetime.date.today()}, CPU: {cpu_name() or 'model unknown'} with {flags}, "
        f"torch {torch.__version__}, one thread; the first {args.texts:,} of the 5,000 test reviews, 128 tokens for "
        f"MiniLM, whole reviews for the LSTM)\n\n"
        f"    python benchmarks/export.py {shlex.join(argv if argv is not None else sys.argv[1:])}\n\n{table}\n"
    )
    print(text)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"cpu-1core_onnx-export_{datetime.date.today()}.md"
    path.write_text(text)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
