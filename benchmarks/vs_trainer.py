"""Whole training runs side by side: train_distilbert.py against the HF Trainer (the tool users would pick
instead) and the reference-style loop, on the same model, reviews, split, hyperparameters and device.

    python benchmarks/vs_trainer.py --model-name PATH --max-length 128 --train-size 1000 --seeds 123 1 2
    python benchmarks/vs_trainer.py --model-name PATH --max-length 512 --train-size 400 --seeds 123 1

Each seed trains one epoch with each tool: batch 16, AdamW at 5e-5 with weight decay 0.01 on weight matrices,
10% linear warm-up then linear decay, gradient clipping at 1.0; length-grouped batches for ours and the Trainer
(`train_sampling_strategy="group_by_length"`); `--precision` (on CUDA PRECISION=auto's choice: bf16 autocast, or
fp16 with the scaler on a GPU without native bf16; fp32 on the CPU unless `--precision bf16`). The reference (as in
the lecture notebook) pads every review to MAX_LENGTH, keeps one tensor
per review, draws plain shuffled batches, uses eager attention, fp32 and the default AdamW; it runs once, for
speed. The bare step runs once too: our batches, collated beforehand, through nothing but forward, backward,
clipping, the fused AdamW step and the schedule, the floor that any tool's loop adds its own time to. All but the
bare step test on the same held-out reviews.
Training seconds leave out model loading, tokenization and evaluation for every tool. Needs `accelerate`
(requirements-dev.txt) for the Trainer. A benchmark, not a test: the numbers depend on the machine.
"""

import argparse
import contextlib
import io
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_distilbert as td
from textclf.batches import make_batches, to_device
from textclf.data import clean, read_reviews, split
from textclf.parallel import auto_precision, autocast_for

HYPER = {"batch_size": 16, "learning_rate": 5e-5, "weight_decay": 0.01, "warmup_ratio": 0.1, "grad_clip": 1.0}


def ours(args, seed, work):
    """train_distilbert.py itself, through its main(): (training seconds, test accuracy)."""
    settings = {
        "data_url": Path(args.data).resolve().as_uri(),
        "data_dir": work / "data",
        "model_name": args.model_name,
        "train_size": args.train_size,
        "valid_size": args.valid_size,
        "test_size": args.test_size,
        "max_length": args.max_length,
        "truncation": "head",  # as the Trainer and the reference truncate
        "epochs": 1,
        "seed": seed,
        "device": args.device,
        "precision": args.precision,
        "out_dir": work / f"ours-{seed}",
        **{k: v for k, v in HYPER.items() if k != "batch_size"},
    }
    with contextlib.redirect_stdout(io.StringIO()):
        metrics = td.main([f"--{k.replace('_', '-')}={v}" for k, v in settings.items()])
    return metrics["train_seconds"], metrics["test_accuracy"]


def encoded(frame, tokenizer, max_length):
    """The reviews as the Trainer takes them: token ids (cleaned and truncated as ours) and labels."""
    ids = tokenizer([clean(text) for text in frame["text"]], truncation=True, max_length=max_length)["input_ids"]
    return [{"input_ids": i, "labels": int(label)} for i, label in zip(ids, frame["label"], strict=True)]


def trainer(args, seed, work, train, test):
    """transformers.Trainer with the same model, data and hyperparameters: (training seconds, test accuracy)."""
    tokenizer = AutoTokenizer.from_pretrained(args.model_name, trust_remote_code=False)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model_name, num_labels=2, trust_remote_code=False, attn_implementation="sdpa"
    )
    cuda = args.device.startswith("cuda")
    training = transformers.TrainingArguments(
        output_dir=str(work / f"trainer-{seed}"),
        per_device_train_batch_size=HYPER["batch_size"],
        per_device_eval_batch_size=64,
        learning_rate=HYPER["learning_rate"],
        weight_decay=HYPER["weight_decay"],
        warmup_steps=HYPER["warmup_ratio"],
        lr_scheduler_type="linear",
        max_grad_norm=HYPER["grad_clip"],
        num_train_epochs=1,
        train_sampling_strategy="group_by_length",
        seed=seed,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=not cuda,
        bf16=args.precision == "bf16",
        fp16=args.precision == "fp16",
        disable_tqdm=True,
    )
    run = transformers.Trainer(
        model=model,
        args=training,
        train_dataset=encoded(train, tokenizer, args.max_length),
        data_collator=transformers.DataCollatorWithPadding(tokenizer),
    )
    seconds = run.train().metrics["train_runtime"]
    # with group_by_length the Trainer also reorders evaluation data: compare with the labels it returns
    predicted = run.predict(encoded(test, tokenizer, args.max_length))
    return seconds, float((predicted.predictions.argmax(-1) == predicted.label_ids).mean())


def reference(args, seed, train, test):
    """The lecture-style loop: every review padded to MAX_LENGTH as its own tensor, shuffled batches, fp32,
    eager attention, default AdamW, the same schedule and clipping: (training seconds, test accuracy)."""
    device = torch.device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name, trust_remote_code=False)

    def tensors(frame):
        encoding = tokenizer(
            [clean(text) for text in frame["text"]],
            truncation=True,
            padding="max_length",
            max_length=args.max_length,
            return_tensors="pt",
        )
        return list(
            zip(encoding["input_ids"], encoding["attention_mask"], torch.tensor(frame["label"].to_numpy()), strict=True)
        )

    train_items, test_items = tensors(train), tensors(test)
    torch.manual_seed(seed)
    model = (
        AutoModelForSequenceClassification.from_pretrained(
            args.model_name, num_labels=2, trust_remote_code=False, attn_implementation="eager"
        )
        .to(device)
        .train()
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=HYPER["learning_rate"], weight_decay=HYPER["weight_decay"])
    loader = torch.utils.data.DataLoader(train_items, batch_size=HYPER["batch_size"], shuffle=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(HYPER["warmup_ratio"] * len(loader)), len(loader))
    start = time.perf_counter()
    for input_ids, mask, labels in loader:
        loss = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), HYPER["grad_clip"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.inference_mode():
        correct = sum(
            int((model(input_ids=i.to(device), attention_mask=m.to(device)).logits.argmax(-1).cpu() == y).sum())
            for i, m, y in torch.utils.data.DataLoader(test_items, batch_size=64)
        )
    return seconds, correct / len(test_items)


def bare(args, seed, train, tokens, pad_id):
    """The floor: our batches of the training reviews (tokens: their ids and offsets), collated beforehand, through
    the model step alone (forward under autocast, loss, backward, clipping, fused AdamW, schedule):
    (training seconds, None)."""
    device = torch.device(args.device)
    ids, offsets = tokens
    labels = torch.tensor(train["label"].to_numpy())
    batches = make_batches(
        (offsets[1:] - offsets[:-1]).numpy(), HYPER["batch_size"], torch.Generator().manual_seed(seed)
    )
    batches = [to_device(td.collate(b, ids, offsets, labels, pad_id), device) for b in batches]
    torch.manual_seed(seed)
    model = (
        AutoModelForSequenceClassification.from_pretrained(
            args.model_name, num_labels=2, trust_remote_code=False, attn_implementation="sdpa"
        )
        .to(device)
        .train()
    )
    optimizer = torch.optim.AdamW(
        td.parameter_groups(model, HYPER["learning_rate"], HYPER["weight_decay"], 1.0),
        lr=HYPER["learning_rate"],
        fused=True,
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, round(HYPER["warmup_ratio"] * len(batches)), len(batches))
    autocast = autocast_for(device, args.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    start = time.perf_counter()
    for input_ids, mask, y in batches:
        with autocast:
            logits = model(input_ids=input_ids, attention_mask=mask).logits
        scaler.scale(torch.nn.functional.cross_entropy(logits.float(), y)).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), HYPER["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, None


def padding(lengths, seeds=range(5)):
    """The share of padding in batches of 16 from ours (make_batches) and from the Trainer's group_by_length
    (transformers' LengthGroupedSampler), each the mean over seeds."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    size = HYPER["batch_size"]

    def share(batches):
        return 1 - lengths.sum() / sum(len(b) * lengths[b].max() for b in batches)

    ours = [share(make_batches(lengths, size, torch.Generator().manual_seed(seed))) for seed in seeds]
    theirs = []
    for seed in seeds:
        order = list(
            LengthGroupedSampler(size, lengths=lengths.tolist(), generator=torch.Generator().manual_seed(seed))
        )
        theirs.append(share([np.array(order[i : i + size]) for i in range(0, len(order), size)]))
    return statistics.mean(ours), statistics.mean(theirs)


def summary(values, digits):
    mean = statistics.mean(values)
    return (
        f"{mean:.{digits}f}"
        if len(values) == 1
        else f"{mean:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-name", required=True, help="a local model folder (e.g. all-MiniLM-L6-v2's)")
    parser.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/imdb/movie_data.csv.gz")
    )
    parser.add_argument("--train-size", type=int, default=1_000)
    parser.add_argument("--valid-size", type=int, default=100, help="ours validates once; not timed")
    parser.add_argument("--test-size", type=int, default=1_000)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[123, 1, 2])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precision",
        choices=["bf16", "fp16", "fp32"],
        help="ours, the Trainer and the bare step "
        "(the reference stays fp32); default: PRECISION=auto's choice on CUDA, fp32 on the CPU",
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the reference loop")
    parser.add_argument(
        "--padding", action="store_true", help="only print the padding of ours and the Trainer's batches"
    )
    args = parser.parse_args()
    args.precision = args.precision or (
        auto_precision(torch.device(args.device))[0] if args.device.startswith("cuda") else "fp32"
    )
    reviews, _ = read_reviews(args.data, None, td.DEFAULTS)
    train, _, test = split(
        reviews, {"TRAIN_SIZE": args.train_size, "VALID_SIZE": args.valid_size, "TEST_SIZE": args.test_size}
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model_name, trust_remote_code=False)
    tokens = td.tokenize(train["text"].tolist(), tokenizer, args.max_length)[:2]  # ids and offsets, head-truncated
    lengths = (tokens[1][1:] - tokens[1][:-1]).numpy()
    real_tokens = int(lengths.sum())
    if args.padding:
        our_share, their_share = padding(lengths)
        print(
            f"{args.train_size:,} reviews at max length {args.max_length}, batches of {HYPER['batch_size']}, mean "
            f"of 5 seeds: padding {our_share:.1%} ours (make_batches), {their_share:.1%} the Trainer (LengthGroupedSampler)"
        )
        return
    hardware = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(
        f"device: {args.device} ({hardware}) | torch {torch.__version__} | transformers {transformers.__version__} | "
        f"{args.train_size:,} training reviews ({real_tokens:,} real tokens), {args.test_size:,} test reviews, "
        f"max length {args.max_length}, 1 epoch, {args.precision} | seeds {args.seeds} | {time.strftime('%Y-%m-%d')}"
    )
    results = {"ours: train_distilbert.py": [], "HF Trainer": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.no_reference:
            results["reference-style loop"] = [reference(args, args.seeds[0], train, test)]
            print(f"reference: {results['reference-style loop'][0]}", file=sys.stderr)
        results["bare step (the floor)"] = [bare(args, args.seeds[0], train, tokens, tokenizer.pad_token_id)]
        print(f"bare step: {results['bare step (the floor)'][0]}", file=sys.stderr)
        for seed in args.seeds:  # alternate the tools, so that drifts of the machine hit both alike
            results["ours: train_distilbert.py"].append(ours(args, seed, work))
            results["HF Trainer"].append(trainer(args, seed, work, train, test))
            print(
                f"seed {seed}: ours {results['ours: train_distilbert.py'][-1]}, Trainer {results['HF Trainer'][-1]}",
                file=sys.stderr,
            )
    trainer_seconds = statistics.mean(s for s, _ in results["HF Trainer"])
    print("| tool | runs | training s | real tokens/s | speed vs Trainer | test accuracy |")
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        seconds = [s for s, _ in runs]
        print(
            f"| {name} | {len(runs)} | {summary(seconds, 1)} | {real_tokens / statistics.mean(seconds):,.0f} | "
            f"{trainer_seconds / statistics.mean(seconds):.2f}x | "
            f"{'–' if runs[0][1] is None else summary([a for _, a in runs], 3)} |"
        )


if __name__ == "__main__":
    main()
