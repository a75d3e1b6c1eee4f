"""predict.py against transformers.pipeline on the same texts: texts per second and the share of identical
predictions, in one process, on the same device and threads.

    python benchmarks/vs_pipeline.py runs/distilbert ../shared/data/imdb/movie_data.csv.gz --limit 2000

RUN_DIR is a finished run of train_distilbert.py; TEXTS a .csv, .tsv or .jsonl file (optionally .gz) with a
`--text-column` (default: the run's TEXT_COLUMN), of which the first `--limit` rows are classified. Two rows: each
tool with its own default precision (predict.py: PRECISION=auto's rule; pipeline: the model's fp32), then both in
fp32. pipeline is called as users call it: pipeline("text-classification", model=RUN/model, batch_size=64,
truncation=True); it truncates each text's head to the tokenizer's model_max_length, which train_distilbert.py
saves as the run's MAX_LENGTH, so a run trained with --truncation head should agree with it in fp32.
Each tool classifies the texts once untimed (warm-up), then --repeats times; the best time counts. A third row
gives pipeline the texts as training cleaned them (HTML line breaks removed, as predict.py does before it
tokenizes), which separates what the cleaning changes from what the numerics change.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import predict
from textclf.data import clean
from textclf.parallel import resolve_device


def best_of(repeats, work):
    """(the best wall time of work() over repeats, its last result), after one untimed call."""
    result, times = work(), []
    for _ in range(repeats):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return min(times), result


def ours(run_dir, texts, device, precision, repeats):
    """predict.py's own path: read the run, then classify a frame of texts (encode, sort by length, batch)."""
    run = predict.Run(run_dir, device, precision)
    frame = pd.DataFrame({"text": texts})

    def classify():
        out = []
        predict.predict(run, [frame], ["text"], run.settings["EVAL_BATCH_SIZE"], lambda f, first: out.append(f))
        return out[0]["predicted_label"].tolist()

    seconds, labels = best_of(repeats, classify)
    return seconds, labels, run.precision


def theirs(run_dir, texts, device, fp32, repeats, cleaned=False):
    """pipeline as users call it; fp32 is the model's own dtype, which pipeline keeps by default."""
    classifier = transformers.pipeline(
        "text-classification",
        model=str(Path(run_dir) / "model"),
        batch_size=64,
        truncation=True,
        device=device,
        dtype=torch.float32 if fp32 else "auto",
        trust_remote_code=False,
    )
    texts = [clean(text) for text in texts] if cleaned else texts
    seconds, out = best_of(repeats, lambda: classifier(texts))
    return seconds, [o["label"] for o in out], str(classifier.model.dtype).replace("torch.", "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("texts")
    parser.add_argument("--text-column")
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    settings = json.loads((Path(args.run_dir) / "metrics.json").read_text())["settings"]  # ours() checks the run
    column = args.text_column or settings.get("TEXT_COLUMN", "review")
    frame = next(predict.read_chunks([], args.texts, [column]))  # the first CHUNK rows, as predict.py reads them
    texts = frame[column].astype(str).tolist()[: args.limit]
    device = resolve_device(args.device)
    print(
        f"device: {device} ({platform.machine()}, {torch.get_num_threads()} threads) | torch {torch.__version__} | "
        f"transformers {transformers.__version__} | {len(texts):,} texts | run: MAX_LENGTH {settings['MAX_LENGTH']}, "
        f"TRUNCATION {settings.get('TRUNCATION', 'head')} | {time.strftime('%Y-%m-%d')}"
    )
    print("| precisions | predict.py texts/s | pipeline texts/s | predict.py vs pipeline | identical predictions |")
    print("|---|---|---|---|---|")
    for fp32, cleaned in ((False, False), (True, False), (True, True)):
        ours_s, ours_labels, ours_precision = ours(
            args.run_dir, texts, device, "fp32" if fp32 else "auto", args.repeats
        )
        theirs_s, theirs_labels, theirs_precision = theirs(args.run_dir, texts, device, fp32, args.repeats, cleaned)
        same = sum(a == b for a, b in zip(ours_labels, theirs_labels, strict=True)) / len(texts)
        name = ("both fp32" if fp32 else "defaults") + (", pipeline given cleaned texts" if cleaned else "")
        print(
            f"| {name}: predict.py {ours_precision}, pipeline {theirs_precision} | "
            f"{len(texts) / ours_s:,.1f} | {len(texts) / theirs_s:,.1f} | {theirs_s / ours_s:.2f}x | {same:.2%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
