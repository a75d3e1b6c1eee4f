"""The same numbers after a change: the two quick runs (the LSTM and MiniLM on the real IMDb CSV) made with the code of
two checkouts, compared value by value (metrics.json but the seconds, the paths and the keys only one side has) and
tensor by tensor (torch.equal on model.pt and on model/model.safetensors).

    git worktree add /tmp/before COMMIT
    python benchmarks/same_numbers.py --before /tmp/before --after . --data movie_data.csv.gz --model-name "$MINILM"

Each run gets one thread (OMP_NUM_THREADS=1); both sides run on this machine, one after the other.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

RUNS = {
    "LSTM, 600 reviews, 2 epochs": [
        "train_lstm_baseline.py",
        "--train-size",
        "600",
        "--valid-size",
        "200",
        "--test-size",
        "200",
        "--epochs",
        "2",
    ],
    "MiniLM, 300 reviews, 2 epochs, 128 tokens": [
        "train_distilbert.py",
        "--train-size",
        "300",
        "--valid-size",
        "100",
        "--test-size",
        "100",
        "--epochs",
        "2",
        "--max-length",
        "128",
    ],
}
VARYING = ("seconds", "train_seconds", "OUT_DIR", "DATA_DIR", "tensorboard")  # what differs between any two runs


def flat(value, prefix=""):
    """{dotted key: value} of a metrics.json, without what differs between any two runs."""
    if isinstance(value, dict):
        items = {}
        for key, inner in value.items():
            if key not in VARYING:
                items.update(flat(inner, f"{prefix}{key}."))
        return items
    if isinstance(value, list) and value and isinstance(value[0], dict):
        items = {}
        for i, inner in enumerate(value):
            items.update(flat(inner, f"{prefix}{i}."))
        return items
    return {prefix.rstrip("."): value}


def weights(out):
    if (out / "model.pt").exists():
        return torch.load(out / "model.pt", weights_only=True)["model"]
    return load_file(out / "model" / "model.safetensors")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="a checkout of the code before the change")
    parser.add_argument("--after", required=True, help="a checkout of the code after it")
    parser.add_argument("--data", required=True, help="the IMDb CSV (movie_data.csv.gz)")
    parser.add_argument("--model-name", required=True, help="all-MiniLM-L6-v2's folder")
    args = parser.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print("| run | validation / test accuracy, before and after | metrics.json values | weights |\n|---|---|---|---|")
    identical = True
    with tempfile.TemporaryDirectory() as tmp:
        for name, (script, *flags) in RUNS.items():
            outs, metrics = [], []
            for side in ("before", "after"):
                out = Path(tmp) / f"{script}-{side}"
                extra = ["--model-name", str(Path(args.model_name).resolve())] if "distilbert" in script else []
                subprocess.run(
                    [
                        sys.executable,
                        script,
                        "--data-url",
                        str(Path(args.data).resolve()),
                        *flags,
                        *extra,
                        "--out-dir",
                        str(out),
                        "--data-dir",
                        str(Path(tmp) / f"data-{side}"),
                    ],
                    cwd=getattr(args, side),
                    env=env,
                    check=True,
                    capture_output=True,
                )
                outs.append(out)
                metrics.append(json.loads((out / "metrics.json").read_text()))
            before, after = (flat(m) for m in metrics)
            shared = sorted(set(before) & set(after))
            differ = [key for key in shared if before[key] != after[key]]
            new = sorted(set(after) - set(before))
            tensors = [weights(out) for out in outs]
            same = tensors[0].keys() == tensors[1].keys() and all(
                torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0]
            )
            identical = identical and not differ and same
            scores = [f"{m['valid_accuracy']:.4f} / {m['test_accuracy']:.4f}" for m in metrics]
            values = "identical" if not differ else f"differ: {', '.join(differ[:5])}"
            values += f" (new keys: {', '.join(new)})" if new else ""
            print(
                f"| {name} | {scores[0]}, {scores[1]} | {values} | "
                f"{'bit-identical' if same else 'DIFFER'} ({len(tensors[1])} tensors) |"
            )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
