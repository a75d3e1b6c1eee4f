"""Classify new text with a model trained by train_distilbert.py or train_lstm_baseline.py.

    python predict.py runs/distilbert "A wonderful, moving film." "Two hours I will never get back."
    python predict.py runs/lstm --input new_reviews.csv --text-column review --output predictions.csv
    python predict.py runs/distilbert --input test.parquet --text-column text --output predictions.parquet
    python predict.py exports/distilbert-int8 --input new_reviews.csv --output predictions.csv --threads 4   # ONNX
    cat reviews.txt | python predict.py runs/distilbert -          # one text per line from standard input
    python predict.py runs/pairs --input dev.csv --text-column sentence1,sentence2 --output scored.csv   # pairs
    printf 'A man plays a guitar.\tA person makes music.\n' | python predict.py runs/pairs -   # a tab between

RUN_DIR is the OUT_DIR of a finished run of either script; what it holds tells which (model/ or model.pt). An
export.py folder (model.onnx) is read the same way, its logits computed by ONNX Runtime.
Texts go through that script's own cleaning, tokenizer and truncation, in length-sorted batches as its
evaluation does, so a review scores here exactly as it scored in training. Prints label<TAB>score<TAB>text
per text, or with --output writes the input rows, every column as it was, plus `predicted_label` and
`predicted_score` columns (.csv, .tsv or .jsonl, optionally .gz, or .parquet), atomically. A multi-label run gives
`predicted_labels` (those over its THRESHOLD: a list, as JSON text in .csv and .tsv, which the training scripts read
back as a multi-label column) and a `predicted_score_NAME` column per label instead; on standard output the labels are
joined with commas, a name that holds a comma in double quotes ("a, b",c);
a regression run gives `predicted_score`, the score itself. A sentence-pair run reads two text columns, or two texts
with a tab between them. Large files and standard input stream in chunks of 10,000 rows, and
every text is cut to the run's MAX_LENGTH tokens, so memory stays bounded. DistilBERT runs classify in the precision
they trained in (metrics.json's precision) where this device computes it natively, else in fp32; --precision forces
one. A regression run's score layer computes in fp32 in any case.
"""

import argparse
import contextlib
import gzip
import io
import itertools
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow
import pyarrow.parquet
import torch
from safetensors import SafetensorError
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import train_distilbert as td
import train_lstm_baseline as tl
from textclf import exported
from textclf.batches import make_batches, to_device
from textclf.data import SURROGATE, jsonl_frames
from textclf.parallel import auto_precision, autocast_for, predict_precision, progress, resolve_device
from textclf.regression import in_fp32
from textclf.runfolder import atomic_write, inside, usable_folder
from textclf.settings import RecipeError, text_columns

CHUNK = 10_000  # texts read, sorted, classified and written at a time


class Run:
    """A finished run's model with its script's own preprocessing: logits(texts) in the input order. .labels
    names the outputs; .threshold is the run's THRESHOLD for a multi-label model, None for single-label."""

    def __init__(self, run_dir, device, precision="auto", threads=None):
        run_dir = Path(run_dir)
        inside(run_dir, "predict.py")
        if exported.is_export(run_dir):  # export.py's folder: the run's preprocessing, ONNX Runtime's logits
            self.load_export(run_dir, threads)
            return
        if not (run_dir / "metrics.json").exists():
            raise RecipeError(
                f"{run_dir} holds no finished run (no metrics.json); pass the OUT_DIR of a run of "
                f"train_distilbert.py or train_lstm_baseline.py that ran to the end"
            )
        try:
            record = json.loads((run_dir / "metrics.json").read_text())
            saved, script = record["settings"], record.get("script")  # older runs: known by their model's file
            script = script or ("train_distilbert.py" if (run_dir / "model").is_dir() else "train_lstm_baseline.py")
            defaults = td.DEFAULTS if script == "train_distilbert.py" else tl.DEFAULTS  # for what an older run lacks
            self.settings = {**defaults, "TRUNCATION": "head", "HEAD_TOKENS": 0, **saved}  # older runs: head only
        except (ValueError, KeyError, TypeError) as e:
            raise RecipeError(
                f"{run_dir / 'metrics.json'} is not a training script's metrics.json ({type(e).__name__}: {e})"
            ) from None
        try:
            self.load(run_dir, device, script)
        except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, SafetensorError) as e:
            if not damaged(e):  # out of memory, a CUDA error: the device's, not the model's
                raise
            if "trust_remote_code" in str(e):
                raise RecipeError(td.needs_code(run_dir / "model")) from None
            raise RecipeError(
                f"the model in {run_dir} is damaged ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0][:100]}); train the run again or restore its files"
            ) from None
        self.device = device  # auto: the run's own precision, where this device computes it natively
        self.precision, self.precision_why = (
            predict_precision(precision, record.get("precision"), auto_precision(device)[0])
            if self.kind == "distilbert"
            else ("fp32", "an LSTM run computes in fp32")
        )
        self.autocast = autocast_for(device, self.precision)

    def load(self, run_dir, device, script):
        """The model and preprocessing of the script's run (metrics.json names it: an older run's other model in the
        same OUT_DIR never answers)."""
        if script == "train_distilbert.py" and (run_dir / "model" / "config.json").exists():  # save_pretrained's
            self.kind = "distilbert"
            model = AutoModelForSequenceClassification.from_pretrained(
                run_dir / "model", trust_remote_code=False
            )  # never its code
            tokenizer = AutoTokenizer.from_pretrained(run_dir / "model", trust_remote_code=False)
            td.check_tokenizer(tokenizer, model, run_dir / "model")
            if model.config.problem_type == "regression":  # the score's layer in fp32, as model/ stores it
                in_fp32(model, run_dir / "model")
            self.model, self.pad_id = model.to(device).eval(), tokenizer.pad_token_id
            self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
            multi = model.config.problem_type == "multi_label_classification"
            self.threshold = self.settings["THRESHOLD"] if multi else None
            self.regression = model.config.problem_type == "regression"
            encode = self.tokenizing(tokenizer)
        elif script == "train_lstm_baseline.py" and (run_dir / "model.pt").exists():  # weights and vocabulary
            self.kind = "lstm"
            self.model, vocab = tl.load_model(run_dir, device)
            self.labels, self.threshold = self.model.labels, self.model.threshold
            self.regression = self.model.regression
            encode = lstm_encoding(vocab, self.model.max_length)
        else:
            raise RecipeError(
                f"{run_dir}'s metrics.json is a run of {script}, but its model "
                f"({'model/' if script == 'train_distilbert.py' else 'model.pt'}) is missing"
            )
        self.encode = encode  # (ids, offsets, token types or None) of texts and, for a pair run, their pairs
        self.pairs = len(text_columns(self.settings)) > 1  # a sentence-pair run: two texts each

    def load_export(self, folder, threads):
        """An export.py folder, read as its run is: the run's settings, labels, task and preprocessing (its tokenizer
        files or vocab.json), the logits computed by ONNX Runtime from model.onnx (fp32, or int8 weights)."""
        self.export = exported.Export(folder, threads)
        block = self.export.block
        self.kind = "onnx"
        self.settings = {**(td.DEFAULTS if block["kind"] == "transformer" else tl.DEFAULTS), **block["settings"]}
        self.labels, self.regression = self.export.labels, block["task"] == "regression"
        self.threshold = self.settings["THRESHOLD"] if block["task"] == "multi_label" else None
        self.pairs = len(text_columns(self.settings)) > 1
        self.device, self.autocast = torch.device("cpu"), contextlib.nullcontext()
        self.precision, self.precision_why = block["precision"], "an ONNX export, computed by ONNX Runtime"
        if block["kind"] == "transformer":
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
            self.pad_id = tokenizer.pad_token_id
            encode = self.tokenizing(tokenizer)
        else:
            encode = lstm_encoding(json.loads((folder / "vocab.json").read_text()), self.settings["MAX_LENGTH"])
        self.encode = encode

    def tokenizing(self, tokenizer):
        """encode(texts, pairs) by a transformer's tokenizer, cut as the run cut its texts (MAX_LENGTH, TRUNCATION)."""

        def encode(texts, pairs):
            return td.tokenize(
                texts,
                tokenizer,
                self.settings["MAX_LENGTH"],
                self.settings["TRUNCATION"],
                self.settings["HEAD_TOKENS"],
                pairs=pairs,
            )

        return encode

    @torch.inference_mode()
    def logits(self, texts, batch_size, pairs=None):
        """The model's outputs for texts (and their pairs, for a pair run), in their order."""
        ids, offsets, types = self.encode(texts, pairs)
        lengths = (offsets[1:] - offsets[:-1]).numpy()
        no_labels = torch.zeros(len(texts), dtype=torch.int64)
        out = torch.empty(len(texts), len(self.labels))
        batches = make_batches(lengths, batch_size)  # sorted by length, as evaluation batches them
        for indices in progress(batches, desc="classify", unit="batch"):
            if self.kind == "onnx" and self.export.block["kind"] == "transformer":
                logits = torch.from_numpy(
                    self.export.logits(td.collate(indices, ids, offsets, no_labels, self.pad_id, types=types))
                )
            elif self.kind == "onnx":
                logits = torch.from_numpy(self.export.logits(tl.collate(indices, ids, offsets, no_labels)))
            elif self.kind == "distilbert":
                batch = to_device(td.collate(indices, ids, offsets, no_labels, self.pad_id, types=types), self.device)
                with self.autocast:
                    logits = self.model(**td.model_inputs(batch)).logits
            else:
                logits = self.model(*to_device(tl.collate(indices, ids, offsets, no_labels)[:2], self.device))
            out[torch.as_tensor(indices)] = logits.float().cpu()
        return out


def lstm_encoding(vocab, max_length):
    """encode(texts, pairs) by the LSTM's vocabulary, at most max_length tokens a text (no token types)."""

    def encode(texts, pairs):
        return *tl.encode(texts, vocab, max_length, pairs), None

    return encode


def damaged(error):
    """Whether an error loading a run's model says its files are damaged, not that the device failed (out of memory,
    a CUDA error: both RuntimeErrors, as a damaged torch file's is)."""
    device_error = isinstance(error, (torch.OutOfMemoryError, torch.AcceleratorError)) or any(
        word in str(error) for word in ("CUDA", "cuDNN", "cuBLAS", "NCCL", "out of memory")
    )
    return not device_error


def file_format(path, option):
    """.csv, .tsv, .jsonl or .parquet, from the file's name (data.csv.gz is .csv, gzipped)."""
    kind = path.suffixes[-2] if path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix
    if kind not in (".csv", ".tsv", ".jsonl", ".parquet"):
        raise RecipeError(
            f"{option} {path}: unknown format {kind!r}; use .csv, .tsv or .jsonl (optionally .gz), or .parquet"
        )
    return kind


def read_chunks(texts, input_path, text_columns):
    """The input as frames of at most CHUNK rows, with the texts in text_columns (two for a pair run; given as
    arguments or lines, a pair is two texts with a tab between). Every frame of a file has the file's columns, in one
    order (a JSONL file's keys, as they first appear, read in a first pass), and a file without rows is one frame
    without rows."""
    if input_path is None:
        if not texts:
            raise RecipeError(
                "no input: give texts as arguments, --input FILE, or - to read one text per line from standard input"
            )
        if texts == ["-"]:
            if hasattr(sys.stdin, "reconfigure"):  # bytes that are not UTF-8 reach predict()'s check, not a traceback
                sys.stdin.reconfigure(errors="surrogateescape")
            lines = (line.rstrip("\r\n") for line in sys.stdin if line.strip())  # a blank line holds no text
            done = 0
            while chunk := list(itertools.islice(lines, CHUNK)):
                yield text_frame(chunk, text_columns, done)  # texts not UTF-8 reach predict()
                done += len(chunk)
        else:
            yield text_frame(texts, text_columns, 0)
        return
    path = Path(input_path)
    if not path.is_file():
        raise RecipeError(f"--input {path} {'is a folder; give a file' if path.is_dir() else 'does not exist'}")
    kind = file_format(path, "--input")
    try:
        if kind == ".jsonl":
            columns = jsonl_columns(path)
            frames = (
                frame.reindex(columns=columns)
                for frame in jsonl_frames(path, path.suffix == ".gz", f"--input {path}", CHUNK)
            )
        elif kind == ".parquet":
            parquet = pyarrow.parquet.ParquetFile(path)
            columns = parquet.schema_arrow.names
            frames = (batch.to_pandas() for batch in parquet.iter_batches(CHUNK))
            if parquet.metadata.num_rows == 0:
                frames = iter([parquet.schema_arrow.empty_table().to_pandas()])
        else:
            frames = pd.read_csv(
                path,
                sep="\t" if kind == ".tsv" else ",",
                chunksize=CHUNK,
                dtype=str,  # every column as written, as training reads it: 007 stays 007, 1.50 stays 1.50
                keep_default_na=False,
            )
            columns = None  # the header's, in every chunk
        first = True
        for frame in frames:
            columns = list(frame.columns) if columns is None else columns
            for text_column in text_columns:
                if text_column not in columns:
                    raise RecipeError(
                        f"--input {path} has no column {text_column!r} (it has {list(columns)[:8]}); "
                        f"name the text column{'s' * (len(text_columns) > 1)} with --text-column"
                    )
            yield frame
            first = False
        if first:  # a JSONL file without a line: no columns but the texts'
            yield pd.DataFrame({column: [] for column in text_columns}, dtype=object)
    except pd.errors.EmptyDataError:
        raise RecipeError(f"--input {path} is empty: it needs a header and a text a line") from None
    except (OSError, EOFError, ValueError, pd.errors.ParserError, pyarrow.ArrowException) as e:
        raise RecipeError(f"--input {path} is not a readable {kind[1:]} file ({type(e).__name__}: {e})") from None


def text_frame(lines, text_columns, done):
    """Texts given as arguments or lines as a frame; for a pair run each split at its first tab into its two texts."""
    if len(text_columns) == 1:
        return pd.DataFrame({text_columns[0]: lines}, dtype=object)
    parts = [line.split("\t", 1) for line in lines]
    alone = [i for i, part in enumerate(parts) if len(part) < 2]
    if alone:
        raise RecipeError(
            f"the run classifies sentence pairs, but text {done + alone[0]} (0-based) holds no tab: "
            f"give each pair as its two texts with a tab between them"
        )
    return pd.DataFrame(
        {text_columns[0]: [part[0] for part in parts], text_columns[1]: [part[1] for part in parts]}, dtype=object
    )


def jsonl_columns(path):
    """Every key of a JSONL file, in the order they first appear: its rows' columns, whichever rows hold them."""
    columns = {}
    for frame in jsonl_frames(path, path.suffix == ".gz", f"--input {path}", CHUNK):
        columns.update(dict.fromkeys(frame.columns))
    return list(columns)


def output_columns(run):
    """The columns predict() adds: predicted_label and predicted_score (its probability), for regression the
    predicted_score alone (the score itself), or (multi-label) predicted_labels and a
    predicted_score_NAME per label. The input's own columns (a true `label`, say) stay as they are."""
    if run.regression:
        return ["predicted_score"]
    if run.threshold is None:
        return ["predicted_label", "predicted_score"]
    return ["predicted_labels"] + [f"predicted_score_{name}" for name in run.labels]


def parquet_schema(frame):
    """The Parquet schema of the first chunk, a column without a value in it (all null) typed as text, a column of
    empty lists as lists of text."""
    schema = pyarrow.Schema.from_pandas(frame, preserve_index=False)
    for i, field in enumerate(schema):
        if pyarrow.types.is_null(field.type):
            schema = schema.set(i, field.with_type(pyarrow.string()))
        elif pyarrow.types.is_list(field.type) and pyarrow.types.is_null(field.type.value_type):
            schema = schema.set(i, field.with_type(pyarrow.list_(pyarrow.string())))
    return schema


def as_json_lists(frame):
    """frame with each list (or array) cell as JSON text, as a CSV file holds a list and the scripts read it back;
    pandas would write Python's repr (or numpy's, without commas)."""
    lists = [column for column in frame.columns if frame[column].map(is_sequence).any()]
    return frame.assign(**{column: frame[column].map(json_list) for column in lists})


def is_sequence(value):
    return isinstance(value, (list, tuple, np.ndarray))


def json_list(value):
    return json.dumps(value.tolist() if isinstance(value, np.ndarray) else list(value)) if is_sequence(value) else value


def joined(names):
    """Labels joined with commas for standard output, a name that holds a comma in double quotes ("a, b",c); - for
    none."""
    return ",".join(json.dumps(name) if "," in name else name for name in names) or "-"


def write_frame(frame, f, kind, first):
    if kind == ".parquet":  # f: a ParquetWriter, made for the first chunk's columns
        try:
            f.write_table(pyarrow.Table.from_pandas(frame, schema=f.schema, preserve_index=False))
        except (pyarrow.ArrowInvalid, pyarrow.ArrowTypeError, pyarrow.ArrowNotImplementedError) as e:
            raise RecipeError(
                f"--output: a column changes its type after the first {CHUNK:,} rows, which one Parquet "
                f"file cannot hold ({e}); write .csv or .jsonl instead"
            ) from None
    elif kind == ".jsonl":
        if len(frame) == 0:  # pandas writes an empty line for no rows: an empty JSONL file has none
            return
        f.write(frame.to_json(orient="records", lines=True, force_ascii=False))
    else:
        as_json_lists(frame).to_csv(f, sep="\t" if kind == ".tsv" else ",", header=first, index=False)


def checked_texts(frame, column, done, pair=False):
    """The texts of a chunk's column as Python strings (pandas 3 with pyarrow stores Arrow strings, which hold no
    surrogates), each with a word and UTF-8; done: the rows before this chunk, for the error's row numbers."""
    texts = [None if pd.isna(text) else str(text) for text in frame[column]]
    empty = np.array([text is None or not text.strip() for text in texts], dtype=bool)
    if empty.any():
        rows = [done + int(i) for i in np.flatnonzero(empty)[:5]]
        where = f"column {column!r}, " if pair or column != "text" else ""  # "text": arguments or lines, one a row
        raise RecipeError(
            f"empty text in {where}row{'s' if len(rows) > 1 else ''} {', '.join(map(str, rows))} "
            f"(0-based, header not counted); every text{' of a pair' * pair} needs at least one word"
        )
    surrogate = [SURROGATE.search(text) for text in texts]  # how Python keeps bytes that are not UTF-8
    if any(surrogate):
        row = next(i for i, found in enumerate(surrogate) if found)
        byte = ord(surrogate[row].group()) - 0xDC00
        what = f"the byte {byte:#04x}" if 0x80 <= byte <= 0xFF else "a lone surrogate escape"
        raise RecipeError(
            f"the text in row {done + row} (0-based, header not counted) is not UTF-8: it holds "
            f"{what}; convert the input to UTF-8, e.g. iconv -f latin1 -t utf-8"
        )
    return texts


def predict(run, chunks, text_columns, batch_size, write):
    """Classify each chunk; write(frame, first) receives the rows with the output_columns() added."""
    done = 0
    for chunk_number, frame in enumerate(chunks):
        if chunk_number == 0:
            clash = [column for column in output_columns(run) if column in frame.columns]
            if clash:
                raise RecipeError(
                    f"the input already has a column {clash[0]!r}, which predict.py writes its "
                    f"predictions to; rename or drop that column of the input"
                )
        texts = [checked_texts(frame, column, done, len(text_columns) > 1) for column in text_columns]
        if texts[0]:
            logits = run.logits(texts[0], batch_size, texts[1] if len(texts) > 1 else None)
        else:
            logits = torch.empty(0, len(run.labels))
        if run.regression:
            frame = frame.assign(predicted_score=logits[:, 0].numpy())
        elif run.threshold is None:
            scores, best = logits.softmax(-1).max(-1)
            labels = pd.Series([run.labels[i] for i in best.tolist()], index=frame.index, dtype=object)
            frame = frame.assign(predicted_label=labels, predicted_score=scores.numpy())
        else:
            probabilities = logits.sigmoid().numpy()
            over = [
                [name for name, p in zip(run.labels, row, strict=True) if p > run.threshold] for row in probabilities
            ]
            labels = pd.Series(over, index=frame.index, dtype=object)  # a list of names a row
            frame = frame.assign(
                predicted_labels=labels,
                **{f"predicted_score_{name}": probabilities[:, k] for k, name in enumerate(run.labels)},
            )
        write(frame, chunk_number == 0)
        done += len(frame)
    return done


def show(run, frame, columns):
    """A classified chunk on standard output: label<TAB>score<TAB>text a row (regression: score<TAB>text;
    multi-label: the labels over the threshold, or -, then every label's score), flushed."""
    if run.regression:
        shown = [f"{score:.4f}" for score in frame["predicted_score"]]
    elif run.threshold is None:
        labels_and_scores = zip(frame["predicted_label"], frame["predicted_score"], strict=True)
        shown = [f"{label}\t{score:.4f}" for label, score in labels_and_scores]
    else:
        scores = frame[[f"predicted_score_{name}" for name in run.labels]].to_numpy()
        shown = []
        for labels, row in zip(frame["predicted_labels"], scores, strict=True):
            every = " ".join(f"{name}={p:.4f}" for name, p in zip(run.labels, row, strict=True))
            shown.append(f"{joined(labels)}\t{every}")
    rows = zip(*(frame[column] for column in columns), strict=True)
    texts = ["\t".join(" ".join(str(text).split()) for text in row) for row in rows]  # a pair: its two texts
    for line, text in zip(shown, texts, strict=True):
        print(f"{line}\t{text}")
    sys.stdout.flush()


def text_stream(binary, gzipped):
    """A UTF-8 text stream over the binary file, gzip-compressed or plain; rows end as the writer writes them."""
    if gzipped:
        return gzip.open(binary, "wt", newline="", encoding="utf-8")
    return io.TextIOWrapper(binary, newline="", encoding="utf-8")


def write_output(run, chunks, columns, batch_size, output):
    """The classified chunks written to output (its format from its name), atomically: a failure leaves no file."""
    usable_folder(output.parent, "--output's folder")
    kind = file_format(output, "--output")

    def write_all(binary):
        if kind == ".parquet":
            writer = None

            def write(frame, first):  # the ParquetWriter takes the first chunk's columns
                nonlocal writer
                if writer is None:
                    writer = pyarrow.parquet.ParquetWriter(binary, parquet_schema(frame))
                write_frame(frame, writer, kind, first)

            try:
                count = predict(run, chunks, columns, batch_size, write)
            finally:  # also on an error: the temporary file it writes into is removed, closed
                if writer:
                    writer.close()
        else:
            with text_stream(binary, gzipped=output.suffix == ".gz") as f:
                count = predict(
                    run, chunks, columns, batch_size, lambda frame, first: write_frame(frame, f, kind, first)
                )
        print(f"wrote {count:,} predictions to {output}", file=sys.stderr)

    atomic_write(output, write_all)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="OUT_DIR of a finished run of either training script, or export.py's folder")
    parser.add_argument("texts", nargs="*", help="texts to classify, or - for one text per line on standard input")
    parser.add_argument("--input", help="a .csv, .tsv or .jsonl file (optionally .gz), or .parquet, with a text column")
    parser.add_argument(
        "--text-column", help="the column of --input that holds the texts (default: the run's TEXT_COLUMN)"
    )
    parser.add_argument(
        "--output",
        help="write the input rows plus predicted_label and predicted_score here (.csv, .tsv, .jsonl, .parquet)",
    )
    parser.add_argument("--batch-size", type=int, help="texts per forward pass (default: the run's EVAL_BATCH_SIZE)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="CPU threads (PyTorch's, or ONNX Runtime's for an export)")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "bf16", "fp16", "fp32"],
        help="auto: the precision the run trained in, where this device computes it natively, else fp32 "
        "(DistilBERT runs only)",
    )
    parser.error = lambda message: sys.exit(f"error: {message}")  # one line and exit 1, like every other error
    args = parser.parse_intermixed_args(argv)  # options before, between or after the texts
    batch_size = None
    try:
        if args.texts and args.input:
            raise RecipeError("give texts as arguments or --input FILE, not both")
        if args.batch_size is not None and args.batch_size < 1:
            raise RecipeError(f"--batch-size must be a positive number of texts, got {args.batch_size}")
        if args.threads is not None and args.threads < 1:
            raise RecipeError(f"--threads must be a positive number of threads, got {args.threads}")
        if args.threads:
            torch.set_num_threads(args.threads)
        run = Run(args.run_dir, resolve_device(args.device), args.precision, args.threads)
        print(f"precision: {run.precision} ({run.precision_why})", file=sys.stderr)
        batch_size = run.settings["EVAL_BATCH_SIZE"] if args.batch_size is None else args.batch_size
        if args.input:
            columns = text_columns({"TEXT_COLUMN": args.text_column or run.settings["TEXT_COLUMN"]})
        else:
            columns = ["text", "text_pair"][: 1 + run.pairs]
        if len(columns) != 1 + run.pairs:
            raise RecipeError(
                f"--text-column names {len(columns)} column{'s' * (len(columns) > 1)}, but the run "
                f"reads {'a pair of texts: name two (a,b)' if run.pairs else 'one text: name one'}"
            )
        chunks = read_chunks(args.texts, args.input, columns)
        if args.output is None:
            predict(run, chunks, columns, batch_size, lambda frame, first: show(run, frame, columns))
        else:
            write_output(run, chunks, columns, batch_size, Path(args.output))
    except RecipeError as e:
        raise SystemExit(f"error: {e}") from None
    except torch.OutOfMemoryError:  # loading the model (no batch yet), or classifying a batch
        advice = (
            f"lower --batch-size (now {batch_size}, e.g. {max(1, batch_size // 2)})"
            if batch_size
            else "free the GPU or use --device cpu"
        )
        raise SystemExit(f"error: out of GPU memory (--device {args.device}): {advice}") from None
    except BrokenPipeError:  # the reader stopped early (| head): not an error; quiet the flush at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
