"""Fine-tune DistilBERT on the 50,000 IMDb movie reviews (or your own texts) with a plain PyTorch training loop.

    python train_distilbert.py                                   # the full recipe: 3 epochs, 512 tokens
    python train_distilbert.py --epochs 1 --max-length 128 --train-size 2000   # a quick run
    python train_distilbert.py --model-name /path/to/model --data-url /path/to/movie_data.csv.gz
    python train_distilbert.py --data-url tickets.csv --text-column body --label-columns queue --shuffle true
                               --train-size 0.8 --valid-size 0.1 --test-size 0.1   # your own data, e.g. 12 classes
    python train_distilbert.py --out-dir runs/distilbert --resume          # continue an interrupted run
    torchrun --standalone --nproc_per_node=8 train_distilbert.py         # data-parallel on 8 GPUs, same result

Every UPPER_CASE setting below can be overridden from the shell as --lower-case-name VALUE (or =VALUE);
--help lists them with their defaults. Writes OUT_DIR/metrics.json and OUT_DIR/model/ (the best epoch,
loadable with AutoModelForSequenceClassification.from_pretrained or pipeline("text-classification")).
"""
import argparse
import contextlib
import errno
import fcntl
import hashlib
import http.client
import io
import itertools
import json
import math
import os
import re
import shutil
import signal
import sys
import tarfile
import time
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import SafetensorError
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score
from tqdm import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

# ----------------------------------------------------------------------------------------------- settings
# data
DATA_URL = "https://github.com/rasbt/python-machine-learning-book-3rd-edition/raw/master/ch08/movie_data.csv.gz"  # URL or local path: .csv .tsv .jsonl (.gz), aclImdb .tar.gz
DATA_DIR = "data"  # download cache and token-id cache
TEXT_COLUMN = "review"  # the column that holds the texts
LABEL_COLUMNS = "sentiment"  # one column: single-label, 2 or more classes; several, comma-separated: multi-label, 0/1 each
LABEL_NAMES = "negative,positive"  # names of integer labels 0, 1, ...; word labels name themselves
THRESHOLD = 0.5  # multi-label: a label is predicted where its sigmoid probability is over this
SHUFFLE = False  # False = split in file order (the recipe); True = permute the rows with SEED first
TRAIN_SIZE = 35_000  # the first rows of the file (or a fraction of them, e.g. 0.8)
VALID_SIZE = 5_000  # the next rows: choose the best epoch
TEST_SIZE = 10_000  # the next rows: reported once, for the best epoch
# model
MODEL_NAME = "distilbert-base-uncased"  # hub name or local folder with config, weights and tokenizer
MAX_LENGTH = 512  # tokens per review, longer ones are truncated
TRUNCATION = "head+tail"  # what a review over MAX_LENGTH keeps: head+tail = first HEAD_TOKENS + last ones; head = first
HEAD_TOKENS = 128  # with head+tail: tokens kept from the start, the rest from the end; MAX_LENGTH // 4 if it leaves no room
# optimisation
BATCH_SIZE = 16  # reviews per forward pass
GRAD_ACCUM_STEPS = 1  # forward passes per optimizer step: effective batch = BATCH_SIZE * GRAD_ACCUM_STEPS
EPOCHS = 3  # passes over the training split
LEARNING_RATE = 5e-5  # AdamW peak learning rate
WEIGHT_DECAY = 0.01  # AdamW decoupled weight decay, on weight matrices only
LR_DECAY = 1.0  # layer-wise: head and top layer at LEARNING_RATE, each layer below x LR_DECAY, embeddings last; 1 = off
WARMUP_RATIO = 0.1  # fraction of optimizer steps with linear warm-up, then linear decay to zero
GRAD_CLIP = 1.0  # clip the gradient norm to this, 0 = off
SEED = 123  # model head initialisation, shuffling and dropout
# system
DEVICE = "auto"  # auto = cuda if available, else cpu
PRECISION = "auto"  # auto = bf16 autocast on CUDA (fp16 + grad scaler without bf16), fp32 on CPU; or bf16, fp16, fp32
COMPILE = False  # torch.compile the model; pays off only on long runs
FUSED_ADAMW = True  # AdamW as one fused kernel (CUDA, CPU, MPS, XPU): the same update, rounded apart; 10x on a CPU
LENGTH_GROUPING = True  # train on batches of similar-length reviews (less padding); False = plain shuffle
EVAL_BATCH_SIZE = 64  # reviews per forward pass in evaluation
LOG_EVERY = 20  # batches between progress-bar loss updates (each one waits for the GPU)
OUT_DIR = "runs/distilbert"  # metrics.json, model/ and the resumable checkpoint.pt
RESUME = False  # continue the interrupted run in OUT_DIR from its checkpoint.pt
DEFAULTS = {name: value for name, value in globals().items() if name.isupper() and isinstance(value, (int, float, str))}
POSITIVE_SETTINGS = ["TRAIN_SIZE", "VALID_SIZE", "TEST_SIZE", "MAX_LENGTH", "BATCH_SIZE", "GRAD_ACCUM_STEPS",
                     "EPOCHS", "LEARNING_RATE", "EVAL_BATCH_SIZE", "LOG_EVERY"]
LAYER = re.compile(r"\.(?:transformer|encoder)\.layers?\.(\d+)\.")  # a parameter of layer N, for LR_DECAY


# ------------------------------------------- shared with train_lstm_baseline.py, kept identical (tests check)
class RecipeError(Exception):
    """A problem the user can fix (data, settings): main() prints it as one line and exits 1."""


def parse_settings(argv, defaults):
    """Shell overrides of the settings block: --epochs 3, --max-length=128, --compile true.

    Values are typed from the defaults (ints widen to floats, booleans parsed explicitly); --help shows each
    setting's comment from the settings block. Returns all settings and the ones given explicitly."""
    def typed(name, default):
        def convert(text):
            if isinstance(default, bool):
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if name in SPLIT_SIZES and not text.strip().isdigit():
                return float(text)  # a fraction of the rows
            return type(default)(text)
        convert.__name__ = type(default).__name__  # argparse names the type in its error message
        return convert

    script = sys.modules[__name__]
    comments = dict(re.findall(r"^([A-Z][A-Z0-9_]*) = .*?  # (.*)$", Path(script.__file__).read_text(), re.MULTILINE))
    parser = argparse.ArgumentParser(description=script.__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = lambda message: sys.exit(f"error: {message}")  # one line and exit 1, like every other error
    for name, default in defaults.items():
        flag = "--" + name.lower().replace("_", "-")
        extra = {"nargs": "?", "const": True} if isinstance(default, bool) else {}
        parser.add_argument(flag, dest=name, type=typed(name, default), default=argparse.SUPPRESS,
                            metavar=type(default).__name__.upper(),
                            help=f"{comments.get(name, '')} (default: {default})", **extra)
    given, unknown = parser.parse_known_args(argv)
    if unknown:
        valid = " ".join("--" + name.lower().replace("_", "-") for name in defaults)
        parser.error(f"unknown setting {unknown[0]!r}; the settings are: {valid}")
    return {**defaults, **vars(given)}, vars(given)


SPLIT_SIZES = ("TRAIN_SIZE", "VALID_SIZE", "TEST_SIZE")


def check_data_settings(s):
    """Split sizes are row counts or fractions of the rows (at most 1 together); THRESHOLD is a probability."""
    for name in SPLIT_SIZES:
        if isinstance(s[name], float) and not 0 < s[name] <= 1:
            raise RecipeError(f"{name} (--{name.lower().replace('_', '-')}) is {s[name]}: a split size is a row "
                              f"count (a whole number) or a fraction of the rows in (0, 1]")
    if sum(s[name] for name in SPLIT_SIZES if isinstance(s[name], float)) > 1 + 1e-9:
        raise RecipeError(f"the split fractions add up to more than 1 (TRAIN_SIZE {s['TRAIN_SIZE']}, VALID_SIZE "
                          f"{s['VALID_SIZE']}, TEST_SIZE {s['TEST_SIZE']}); e.g. --train-size 0.8 --valid-size 0.1 "
                          f"--test-size 0.1")
    if not 0 < s["THRESHOLD"] < 1:
        raise RecipeError(f"THRESHOLD (--threshold) must be between 0 and 1, got {s['THRESHOLD']}")
    if not s["TEXT_COLUMN"].strip() or not label_columns(s):
        raise RecipeError("TEXT_COLUMN (--text-column) and LABEL_COLUMNS (--label-columns) must name columns")


def label_columns(s):
    """LABEL_COLUMNS as a list: one name is single-label, several are multi-label."""
    return [name.strip() for name in s["LABEL_COLUMNS"].split(",") if name.strip()]


def check_positive(settings, names):
    for name in names:
        if not settings[name] > 0:
            flag = "--" + name.lower().replace("_", "-")
            raise RecipeError(f"{name} ({flag}) must be positive, got {settings[name]}")


def resolve_device(name):
    """DEVICE: auto picks cuda when available, else cpu; anything else must exist on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RecipeError(f"DEVICE (--device) must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"DEVICE (--device) is {name!r} but torch sees no CUDA GPU here; use --device cpu")
    return device


def temporary(path, kind="tmp"):
    """A hidden name beside path for this process alone: .NAME.PID.tmp (remove_stale() finds it after a kill)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{kind}")


def write_error(path, e, needed=None):
    """A failed write (full disk, read-only, no permission) as one line that names the path and the cause."""
    space = ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(next(p for p in [path, *path.parents] if p.exists())).free
        space = (f" (the file needs {needed:,} bytes; " if needed else " (") + f"{free:,} bytes are free there); " \
                "free some space or write elsewhere"
    return RecipeError(f"could not write {path}: {e.strerror or e}{space}; an earlier {path.name}, if any, is intact")


def atomic_write(path, write, stale=None):
    """Call write(f) on a temporary binary file beside path, then rename it to path: readers never see half a
    file, and a failed write (RecipeError) or an interruption leaves the earlier file as it was. The file stale,
    if given (results that describe the file being replaced), is deleted just before the rename."""
    path = Path(path)
    tmp = temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
        if stale:
            Path(stale).unlink(missing_ok=True)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        cause = e if isinstance(e, OSError) else e.__context__  # torch.save wraps a failed write in a RuntimeError
        if not isinstance(cause, OSError):
            raise
        tmp.unlink(missing_ok=True)  # before write_error() measures the free space
        raise write_error(path, cause, getattr(cause, "needed", None)) from None
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale(folder):
    """Temporary files and folders left by a killed process (.NAME.PID.tmp/.old): removed, except that an .old
    folder is renamed back to NAME if NAME is missing (a kill between the two renames of save_model)."""
    for stale in sorted(Path(folder).glob(".*.*.*")):
        name, pid, kind = (stale.name[1:].rsplit(".", 2) + ["", ""])[:3]
        if kind not in ("tmp", "old") or not pid.isdigit() or int(pid) == os.getpid() or alive(int(pid)):
            continue
        if kind == "old" and not (stale.parent / name).exists():
            os.replace(stale, stale.parent / name)
            print(f"restored {stale.parent / name} from {stale.name}, left by a process that was killed")
        elif stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


@contextlib.contextmanager
def locked(folder):
    """Hold folder for one run: a second run into it is refused. The operating system also releases the lock
    when the process ends, however it ends, so a killed run never blocks the next one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RecipeError(f"another run is writing to {folder} right now; wait for it to finish, or choose "
                              f"another --out-dir") from None
        yield
    finally:
        os.close(handle)


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def load_reviews(url, data_dir, settings=None):
    """The data at url, validated: (local path, frame, label names), as read_reviews() returns them. A local path
    is read where it is; a URL is downloaded into data_dir once, and the local file appears only when the download
    finished and passed the checks (a failed one leaves nothing behind). .NAME.source.json records the URL and
    checksum: another URL with the same file name is downloaded anew, while a file saved there by hand (no record,
    or not the recorded checksum) is used as it is. The Stanford archive (.tar.gz) becomes data_dir/NAME.csv.gz
    once (read_aclimdb) and is read from there."""
    settings = settings or DEFAULTS
    read = read_aclimdb if is_archive(url) else lambda path, name=None: read_reviews(path, name, settings)

    def finish(path, checked=None):  # checked: what read() gave for the download just made
        data = (lambda: read(path)) if checked is None else (lambda: checked)
        return (path, *data()) if not is_archive(url) else from_archive(path, data, data_dir, settings)

    if not re.match(r"[a-z][a-z0-9+.-]+://", url, re.IGNORECASE):  # a local path, read in place
        path = Path(url).expanduser()
        if not path.is_file():
            raise RecipeError(f"DATA_URL (--data-url) {url} is not a file here; give the path of an existing file, "
                              f"or a URL (https://, file://)")
        return finish(path)
    path = Path(data_dir) / (Path(urllib.parse.urlparse(url).path).name or "data.csv")
    source = path.with_name(f".{path.name}.source.json")
    record = json.loads(source.read_text()) if source.exists() else {}
    if path.exists() and (record.get("url", url) == url or record.get("sha256") != file_sha256(path)):
        try:
            return finish(path)
        except RecipeError as e:
            raise RecipeError(f"{e}; delete {path} to download it again") from None
    if path.exists():
        print(f"{path} was downloaded from {record['url']}, not from {url}: replacing it")
    print(f"downloading {url} -> {path}")
    data = None

    def fetch(f):
        nonlocal data
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                size = int(response.headers.get("Content-Length") or 0) or None
                received = 0
                with progress(total=size, unit="B", unit_scale=True, desc="download") as bar:
                    while chunk := response.read(1 << 20):
                        try:
                            received += f.write(chunk)
                        except OSError as e:  # a full disk: atomic_write() reports it, not as the network's fault
                            e.needed = size
                            raise
                        bar.update(len(chunk))
                if size and received < size:
                    raise ConnectionError(f"the connection closed after {received:,} of {size:,} bytes")
        except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts: OSError
            if hasattr(e, "needed"):
                raise
            raise RecipeError(f"could not download {url} ({e}); fetch it by hand and save it as {path}, "
                              f"or pass --data-url /path/to/{path.name}") from e
        f.flush()
        try:
            data = read(Path(f.name), name=url)
        except RecipeError as e:
            raise RecipeError(f"{e}; nothing was saved") from None

    atomic_write(path, fetch)
    atomic_write(source, lambda f: f.write(json.dumps({"url": url, "sha256": file_sha256(path)}).encode()))
    return finish(path, data)


def is_archive(name):
    return str(name).lower().endswith((".tar.gz", ".tgz", ".tar"))


def from_archive(archive, reviews, data_dir, settings):
    """The archive's reviews (the frame reviews() returns) written once as data_dir/NAME.csv.gz, with columns
    review and sentiment, and read back as any data file: a newer archive is converted again."""
    path = Path(data_dir) / (Path(archive).name.split(".")[0] + ".csv.gz")
    if not path.exists() or path.stat().st_mtime < Path(archive).stat().st_mtime:
        print(f"writing {path} from {archive}")
        frame = reviews()
        atomic_write(path, lambda f: frame.to_csv(f, index=False, compression={"method": "gzip", "mtime": 0}))
    return path, *read_reviews(path, None, settings)


ACLIMDB = re.compile(r"(?:^|/)aclImdb/(train|test)/(pos|neg)/(\d+)_\d+\.txt$")


def read_aclimdb(path, name=None):
    """The Stanford archive (aclImdb/{train,test}/{pos,neg}/ID_RATING.txt) as one frame of review and sentiment:
    the rows of train/pos and train/neg, then test/pos and test/neg, each half shuffled with seed 0."""
    name = name or path
    parts = {(half, folder): [] for half in ("train", "test") for folder in ("pos", "neg")}
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                if member.isfile() and (match := ACLIMDB.search(member.name)):
                    text = archive.extractfile(member).read().decode("utf-8")
                    parts[match[1], match[2]].append((int(match[3]), text))
    except (tarfile.TarError, OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise RecipeError(f"{name} is not a readable tar archive ({type(e).__name__}: {e})") from None
    empty = [f"aclImdb/{half}/{folder}/" for (half, folder), rows in parts.items() if not rows]
    if empty:
        raise RecipeError(f"{name} is not the Stanford aclImdb archive: no reviews in {', '.join(empty)} (it needs "
                          f"aclImdb/train/pos/ID_RATING.txt and the like, for train and test, pos and neg)")
    rows = []
    for half in ("train", "test"):
        part = [(text, label) for label, folder in ((1, "pos"), (0, "neg")) for _, text in sorted(parts[half, folder])]
        rows += [part[i] for i in np.random.default_rng(0).permutation(len(part))]
    return pd.DataFrame(rows, columns=["review", "sentiment"])


def read_reviews(path, name=None, settings=None):
    """Read and check a data file: .tsv or .jsonl (one JSON object a line) by its name, anything else as CSV,
    each plain or gzip. Returns (frame, label names): the frame has a `text` column with no empty entries, and
    a `label` column (single-label: an index into the names) or one 0/1 column per label, numbered 0..K-1 in the
    order of the names (multi-label: a label column may be called `label` or `text` too). Integer
    labels are named by LABEL_NAMES, word labels name themselves (sorted). Errors call the file `name`."""
    settings, name = settings or DEFAULTS, name or path
    text_column, columns = settings["TEXT_COLUMN"], label_columns(settings)
    with open(path, "rb") as f:
        head = f.read(512)
    gzipped = head[:2] == b"\x1f\x8b"
    kind = next((kind for kind in ("tsv", "jsonl") if re.search(rf"\.{kind}(\.gz)?$", str(name), re.I)), "csv")
    if not gzipped and head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        raise RecipeError(f"{name} is an HTML page (an error or login page?), not the data file")
    try:
        compression = "gzip" if gzipped else None
        df = (pd.read_json(path, lines=True, dtype=False, compression=compression) if kind == "jsonl" else
              pd.read_csv(path, sep="\t" if kind == "tsv" else ",", compression=compression))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as e:  # ParserError is a ValueError
        raise RecipeError(f"{name} is not a readable {kind.upper()} {'gzip file' if gzipped else 'file'} "
                          f"({type(e).__name__}: {str(e)[:200]})") from None

    def rows(mask):
        where = np.flatnonzero(mask)
        more = f" and {len(where) - 5} more" if len(where) > 5 else ""
        return f"row{'s' if len(where) > 1 else ''} {', '.join(map(str, where[:5]))}{more} (0-based, header not counted)"

    missing = [column for column in [text_column] + columns if column not in df.columns]
    if missing:
        raise RecipeError(f"{name} has no {' or '.join(missing)} column; found columns "
                          f"{[str(c)[:40] for c in df.columns[:8]]}; name yours with --text-column and --label-columns")
    empty = df[text_column].isna() | df[text_column].astype(str).str.strip().eq("")
    if empty.any():
        raise RecipeError(f"{name}: empty or missing {text_column} in {rows(empty)}")
    frame = pd.DataFrame({"text": df[text_column].astype(str)})
    if len(columns) > 1:  # multi-label: 0/1 in each column
        for k, column in enumerate(columns):
            values = pd.to_numeric(df[column], errors="coerce")
            bad = ~values.isin([0, 1])
            if bad.any():
                raise RecipeError(f"{name}: with several LABEL_COLUMNS each is a 0/1 column, but {column} holds "
                                  f"{str(df[column][bad].iloc[0])!r} in {rows(bad)}")
            frame[k] = values.astype(int)
        return frame, columns
    raw = df[columns[0]].astype(str).str.strip().where(df[columns[0]].notna(), "")
    if raw.eq("").any():
        raise RecipeError(f"{name}: missing {columns[0]} label in {rows(raw.eq(''))}")
    numbers = pd.to_numeric(raw, errors="coerce")
    integers = numbers.notna() & (numbers % 1 == 0)
    if integers.all():  # 0..K-1, named by LABEL_NAMES
        names = [label.strip() for label in settings["LABEL_NAMES"].split(",")]
        bad = ~numbers.between(0, len(names) - 1)
        if bad.any():
            raise RecipeError(f"{name}: {columns[0]} holds integer labels, named by LABEL_NAMES ({','.join(names)}) "
                              f"as 0..{len(names) - 1}, but {rows(bad)} hold{'s' if bad.sum() == 1 else ''} "
                              f"{raw[bad].iloc[0]!r}; give one name per class with --label-names a,b,c")
        frame["label"] = numbers.astype(int)
        return frame, names
    if numbers.notna().any():
        raise RecipeError(f"{name}: {columns[0]} mixes numbers and words: {rows(numbers.notna())} "
                          f"hold{'s' if numbers.notna().sum() == 1 else ''} {raw[numbers.notna()].iloc[0]!r} while "
                          f"others hold {raw[numbers.isna()].iloc[0]!r}; "
                          f"use one kind of label")
    names = sorted(raw.unique())
    frame["label"] = raw.map({label: i for i, label in enumerate(names)}).astype(int)
    return frame, names


def split(df, train_size, valid_size, test_size, shuffle=False, seed=0):
    """Split in file order (with shuffle: in an order permuted with seed): the first train_size rows, the next
    valid_size, the next test_size. A size is a row count, or (a float) a fraction of the rows."""
    if shuffle:
        df = df.iloc[np.random.default_rng(seed).permutation(len(df))]
    sizes = [int(size * len(df)) if isinstance(size, float) else size for size in (train_size, valid_size, test_size)]
    if 0 in sizes:
        raise RecipeError(f"the split fractions ({train_size}, {valid_size}, {test_size}) of {len(df):,} rows leave a "
                          f"split empty; give larger fractions or row counts")
    needed = sum(sizes)
    if needed > len(df):
        raise RecipeError(f"the split needs {needed:,} rows (TRAIN_SIZE {sizes[0]:,} + VALID_SIZE "
                          f"{sizes[1]:,} + TEST_SIZE {sizes[2]:,}) but the file has {len(df):,}; "
                          f"lower --train-size, --valid-size or --test-size")
    a, b = sizes[0], sizes[0] + sizes[1]
    return df.iloc[:a], df.iloc[a:b], df.iloc[b:needed]


def check_labels(train, valid, test, names):
    """Single-label: the training split has two classes or more, and every class of the others."""
    if "label" not in train:
        return
    seen = set(train["label"])
    if len(seen) < 2:
        raise RecipeError(f"the training split holds only the class {names[seen.pop()]!r}; if the file is sorted "
                          f"by label, pass --shuffle true")
    for part, frame in (("validation", valid), ("test", test)):
        unseen = sorted(set(frame["label"]) - seen)
        if unseen:
            raise RecipeError(f"the {part} split holds the class {names[unseen[0]]!r}, which the training split never "
                              f"has; pass --shuffle true or a larger --train-size")


def targets(frame, names):
    """Training targets: class indices (single-label) or a 0/1 float matrix (multi-label)."""
    if "label" in frame:
        return torch.tensor(frame["label"].to_numpy())
    return torch.tensor(frame[list(range(len(names)))].to_numpy(), dtype=torch.float32)


def batch_loss(logits, targets, threshold):
    """Summed loss and correct count of a batch: cross-entropy and accuracy (single-label), or binary cross-entropy
    averaged over labels and exact match at threshold (multi-label)."""
    logits = logits.float()
    if targets.ndim == 1:
        return F.cross_entropy(logits, targets, reduction="sum"), (logits.argmax(-1) == targets).sum()
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / targets.shape[1]
    return loss, ((logits.sigmoid() > threshold) == (targets > 0.5)).all(-1).sum()


def scores(logits, targets, names, threshold):
    """What a practitioner reads about a split, from all its logits: accuracy (multi-label: exact match) and mean
    loss; single-label macro-F1 and the confusion matrix (rows: true class, columns: predicted, in the order of
    names); multi-label ROC AUC per label (None where the split holds one value of it), their macro mean, and
    micro- and macro-F1 at threshold."""
    loss, correct = batch_loss(logits, targets, threshold)
    result = {"accuracy": correct.item() / len(targets), "loss": loss.item() / len(targets)}
    y = targets.numpy()
    if targets.ndim == 1:
        predicted = logits.argmax(-1).numpy()
        return {**result, "macro_f1": float(f1_score(y, predicted, labels=range(len(names)), average="macro",
                                                     zero_division=0)),
                "confusion_matrix": confusion_matrix(y, predicted, labels=range(len(names))).tolist()}
    probabilities, decided = logits.sigmoid().numpy(), (logits.sigmoid() > threshold).numpy()
    auc = {name: float(roc_auc_score(y[:, k], probabilities[:, k])) if 0 < y[:, k].sum() < len(y) else None
           for k, name in enumerate(names)}
    defined = [value for value in auc.values() if value is not None]
    return {**result, "roc_auc": auc, "macro_roc_auc": float(np.mean(defined)) if defined else None,
            **{f"{kind}_f1": float(f1_score(y, decided, average=kind, zero_division=0)) for kind in ("micro", "macro")}}


BR_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)


def clean(text):
    """The reviews hold HTML line breaks (<br />): they are layout, not words."""
    return BR_TAG.sub(" ", text)


def make_batches(lengths, batch_size, generator=None, grouped=True):
    """Lists of example indices, one per batch; every example exactly once.

    Without a generator (evaluation): sorted by length, longest first, so each batch pads little.
    With one (training): a fresh shuffle; if grouped, each chunk of 64 batches is sorted by length before
    it is cut into batches, and the batches are shuffled, so each batch holds similar lengths."""
    lengths = np.asarray(lengths)
    if generator is None:
        order = np.argsort(-lengths, kind="stable")
    else:
        order = torch.randperm(len(lengths), generator=generator).numpy()
        if grouped:
            chunks = np.split(order, range(64 * batch_size, len(order), 64 * batch_size))
            order = np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")] for chunk in chunks])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if generator is not None and grouped:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
    return batches


class progress(tqdm):
    """A tqdm bar on a terminal; where stderr is not one (nohup, SLURM, CI) a plain line every 10% instead."""

    def __init__(self, *args, **kwargs):
        self.plain, self.shown = not sys.stderr.isatty(), None
        kwargs.setdefault("disable", not leader())
        if self.plain:  # tqdm draws into a sink; display() prints the lines
            kwargs.update(file=io.StringIO(), mininterval=0, miniters=1,
                          bar_format="{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, "
                                     "{rate_fmt}{postfix}]")
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        if not self.plain:
            return super().display(msg, pos)
        step = math.ceil(self.total / 10) if self.total else math.inf
        closing = self.disable  # close() disables the bar, then draws (or clears) it a last time
        if self.n != self.shown and (
                self.shown is None or closing or self.n // step > self.shown // step or self.n == self.total):
            print(self.__str__(), file=sys.stderr, flush=True)
            self.shown = self.n
        return True


class StopRequest:
    """While active, Ctrl-C (SIGINT) and SIGTERM (a preempted machine) only raise a flag, so training
    stops at the end of an optimizer step and saves a checkpoint. A second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False

    def _handle(self, signum, frame):
        if self.requested:
            raise Interrupted(signum)
        self.requested = signum
        if leader():
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step (Ctrl-C again to quit now)",
                  file=sys.stderr)

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM: main() stops with one line and exit status 128 + the signal's number."""

    def __init__(self, signum=signal.SIGINT):
        super().__init__(signum)
        self.signum = signal.Signals(signum)


def main(argv=None):
    settings, given = parse_settings(sys.argv[1:] if argv is None else argv, DEFAULTS)
    checkpoint_path = Path(settings["OUT_DIR"]) / "checkpoint.pt"
    previous = {s: signal.signal(s, stop_now) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.ExitStack() as held:  # run() holds the lock on OUT_DIR in it
            return run(settings, given, held)
    except RecipeError as e:
        raise SystemExit(f"error: {e}" if leader() else 1) from None
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        launcher = "python" if os.environ.get("WORLD_SIZE", "1") == "1" else "torchrun <its options>"
        where = (f"the run is saved in {checkpoint_path}; continue it with: {launcher} {Path(__file__).name} "
                 f"--out-dir {checkpoint_path.parent} --resume") if checkpoint_path.exists() else "nothing to resume"
        if leader():
            print(f"{chr(10) * sys.stderr.isatty()}interrupted ({signal.Signals(signum).name}): {where}",
                  file=sys.stderr)
        raise SystemExit(128 + signum) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if dist.is_initialized():
            dist.destroy_process_group()


def stop_now(signum, frame):
    """Ctrl-C or SIGTERM outside the training loop (which saves a checkpoint first) stops the run at once, also
    where the shell started it with SIGINT ignored (a background job)."""
    raise Interrupted(signum)


def resolve_run(settings, given, checkpoint_path):
    """Settings for this run. With RESUME they come from the checkpoint (the same run continues), and any
    setting given on the command line must agree with it. Without, an unfinished run is never overwritten."""
    if not settings["RESUME"]:
        if checkpoint_path.exists():
            raise RecipeError(f"{checkpoint_path} holds an unfinished run; continue it with --resume, or choose "
                              f"another --out-dir (or delete the file to start over)")
        return settings, None
    if not checkpoint_path.exists():
        raise RecipeError(f"nothing to resume: {checkpoint_path} does not exist")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    saved = {**checkpoint["settings"], "RESUME": True, "OUT_DIR": settings["OUT_DIR"]}
    differ = [f"{name} ({value!r}, the run has {saved[name]!r})" for name, value in given.items()
              if name in saved and saved[name] != value]
    if differ:
        raise RecipeError(f"--resume continues the run with its own settings, but these differ: {', '.join(differ)}")
    return saved, checkpoint


def restore_rng(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_state():
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def flat_token_ids(pieces):
    """Lists of token ids as one flat int32 tensor and offsets: review i is ids[offsets[i]:offsets[i + 1]]."""
    offsets = torch.tensor(np.cumsum([0] + [len(ids) for ids in pieces]))
    ids = torch.from_numpy(np.fromiter(itertools.chain.from_iterable(pieces), np.int32, count=int(offsets[-1])))
    return ids, offsets


def pad_batch(indices, ids, offsets, pad_id, width=None):
    """The reviews at indices, right-padded with pad_id to the longest one (or to width): ids and lengths."""
    indices = torch.as_tensor(np.asarray(indices))
    lengths = offsets[indices + 1] - offsets[indices]
    padded = torch.full((len(indices), int(lengths.max()) if width is None else width), pad_id, dtype=torch.int64)
    for row, (i, n) in enumerate(zip(offsets[indices].tolist(), lengths.tolist())):
        padded[row, :n] = ids[i:i + n]
    return padded, lengths


def start_processes(device_setting):
    """Under torchrun (WORLD_SIZE > 1) join the other processes: NCCL on CUDA, gloo on CPU, and DEVICE=auto takes
    this process's own GPU (cuda:LOCAL_RANK). Returns the device, this process's rank and the number of processes.
    Processes other than rank 0 print nothing to stdout and show no progress bars."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return resolve_device(device_setting), 0, 1
    local = int(os.environ["LOCAL_RANK"])
    device = resolve_device(f"cuda:{local}" if device_setting == "auto" and torch.cuda.is_available() else device_setting)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_rank() > 0:
        sys.stdout = open(os.devnull, "w")
    return device, dist.get_rank(), world


def leader():
    """True in the process that prints and writes: the only one, or rank 0 under torchrun."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def leader_first(world):
    """Rank 0 runs the block first (a download, a cache it writes), then the others, which find its result."""
    if world > 1 and not leader():
        dist.barrier()
    yield
    if world > 1 and leader():
        dist.barrier()


def share(batch, rank, world):
    """This process's part of a batch, every world-th review from its rank on, and its weight: 1, or 0 for a
    stand-in (the batch's first review) where the batch has fewer reviews than processes, so that every process
    still takes part in the gradient all-reduce."""
    part = batch[rank::world]
    return (part, 1) if len(part) else (batch[:1], 0)


def all_sum(tensor, world):
    """The elementwise sum of tensor over all processes (itself when there is one)."""
    if world > 1:
        dist.all_reduce(tensor)
    return tensor


def all_logits(forward, batches, batch_loader, width, device, rank, world):
    """forward(batch)'s logits for all examples in batches (a contiguous range of the data), in order, as float32
    on the CPU; batch_loader(part) collates a list of batches. Under torchrun each process takes every world-th
    batch and the logits are summed over processes, each example coming from one."""
    first = min(int(b.min()) for b in batches)
    logits = torch.zeros(sum(map(len, batches)), width, device=device)
    mine = batches[rank::world]
    bar = progress(batch_loader(mine), desc="evaluate", leave=False)
    for batch, indices in zip(bar, mine):  # the bar first: zip() exhausts it, so it ends at 100%
        logits[torch.as_tensor(indices - first, device=device)] = forward(to_device(batch, device)).float()
    return all_sum(logits, world).cpu()


def better(result, best):
    """Whether an epoch's validation scores beat the best so far (None at first): by accuracy, or for multi-label
    by macro ROC AUC (where it is undefined, it counts lowest)."""
    key = "macro_roc_auc" if "roc_auc" in result else "accuracy"
    value = lambda r: -1.0 if r[key] is None else r[key]  # noqa: E731
    return best is None or value(result) > value(best)


def shown(result):
    """A split's headline numbers for the log: accuracy, and for multi-label the macro ROC AUC."""
    if "roc_auc" not in result:
        return f"accuracy {result['accuracy']:.4f}"
    auc = "undefined" if result["macro_roc_auc"] is None else f"{result['macro_roc_auc']:.4f}"
    return f"exact-match accuracy {result['accuracy']:.4f} | macro ROC AUC {auc}"


def agreed(flag, device, world):
    """True in every process if flag is true in any: a signal can reach the processes at different steps."""
    if world == 1:
        return bool(flag)
    return bool(all_sum(torch.tensor([float(bool(flag))], device=device), world).item())


def device_names(device, world):
    """What each process trained on: the GPU's name, or cpu."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    if world == 1:
        return [name]
    names = [None] * world
    dist.all_gather_object(names, name)
    return names


def to_device(batch, device):
    return [tensor.to(device, non_blocking=True) for tensor in batch]
# ---------------------------------------------------------------------------------- end of the shared part


def tokenize(texts, tokenizer, max_length, truncation="head", head_tokens=0, chunk=2_000):
    """Token ids of all texts, as one flat int32 tensor and offsets (review i is ids[offsets[i]:offsets[i+1]]).
    A review over max_length keeps its first tokens (head) or, with head+tail (Sun et al. 2019), [CLS], its first
    head_tokens and its last tokens, [SEP] included, up to max_length."""
    pieces = []
    for start in progress(range(0, len(texts), chunk), desc="tokenize", unit_scale=chunk):
        batch = [clean(text) for text in texts[start:start + chunk]]
        if truncation == "head":
            pieces += tokenizer(batch, truncation=True, max_length=max_length)["input_ids"]
        else:  # verbose=False: the untruncated lengths are expected here, not a mistake to warn about
            tail = max_length - 1 - head_tokens
            pieces += [p if len(p) <= max_length else p[:1 + head_tokens] + p[-tail:]
                       for p in tokenizer(batch, verbose=False)["input_ids"]]
    return flat_token_ids(pieces)


def cached_token_ids(texts, tokenizer, max_length, data_dir, data_sha256, truncation="head", head_tokens=0):
    """tokenize() once: the result is cached in data_dir under a key of everything it depends on (data file,
    the texts in their order, tokenizer, max length, truncation, cleaning) and rebuilt when any of them changes or
    the file is unreadable."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("truncation"), spec.pop("padding")  # per-call state, set by the last call; max_length is in the key
    key = {"data_sha256": data_sha256, "max_length": max_length, "rows": len(texts), "clean": BR_TAG.pattern,
           "texts_sha256": hashlib.sha256("\0".join(texts).encode()).hexdigest(),  # columns, order (SHUFFLE)
           "tokenizer_sha256": hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()}
    if truncation != "head":  # head-only keys stay as they were, so existing caches stay valid
        key["truncation"] = f"{truncation} {head_tokens}"
    path = Path(data_dir) / f"tokens-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}.pt"
    if path.exists():
        try:
            cache = torch.load(path, weights_only=True)
            if cache["key"] == key:
                return cache["ids"], cache["offsets"]
        except Exception as e:  # a damaged cache is rebuilt, never trusted
            print(f"token cache {path} is unreadable ({type(e).__name__}); rebuilding it")
    ids, offsets = tokenize(texts, tokenizer, max_length, truncation, head_tokens)
    atomic_write(path, lambda f: torch.save({"key": key, "ids": ids, "offsets": offsets}, f))
    return ids, offsets


def collate(indices, ids, offsets, labels, pad_id, pad_to=None):
    """Batch of reviews, right-padded to the longest one (or to pad_to): input_ids, attention_mask, labels."""
    input_ids, lengths = pad_batch(indices, ids, offsets, pad_id, pad_to)
    attention_mask = torch.arange(input_ids.shape[1]) < lengths[:, None]
    return input_ids, attention_mask.long(), labels[np.asarray(indices)]


def loader(batches, data, pad_id, device):
    """Collated batches in pinned memory (on CUDA), ready for non_blocking copies."""
    collate_batch = lambda indices: collate(indices, *data, pad_id)  # noqa: E731
    return torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=collate_batch,
                                       pin_memory=device.type == "cuda",
                                       generator=torch.Generator())  # keep the global RNG for dropout alone


def train_step(model, batch, step_examples, autocast, scaler, threshold=0.5):
    """Forward and backward of one batch. The loss is summed over the batch and divided by step_examples (the
    examples of the whole optimizer step, over the number of processes under torchrun, whose all-reduce averages):
    gradient accumulation and data-parallel training give exactly the gradient of the full batch."""
    input_ids, attention_mask, labels = batch
    with autocast:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    loss_sum, correct = batch_loss(logits, labels, threshold)
    scaler.scale(loss_sum / step_examples).backward()
    return loss_sum.detach(), correct


@torch.inference_mode()
def evaluate(model, batches, data, pad_id, device, autocast, rank=0, world=1):
    """all_logits() of the model over batches, without gradients; leaves the model in training mode."""
    model.eval()
    with autocast:
        logits = all_logits(lambda batch: model(input_ids=batch[0], attention_mask=batch[1]).logits, batches,
                            lambda part: loader(part, data, pad_id, device), model.config.num_labels, device, rank,
                            world)
    model.train()
    return logits


def save_model(model, tokenizer, path, stale):
    """save_pretrained into a fresh folder, then swap it in: the old folder stays until the new one is whole.
    A failed write (full disk) leaves the old model; a kill between the renames is undone by remove_stale().
    The file stale (an earlier run's results) is deleted once the new model is whole."""
    path = Path(path)
    tmp, old = temporary(path), temporary(path, "old")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, OSError):  # safetensors reports a full disk as its own error
            e = OSError(errno.ENOSPC if "No space" in str(e) else errno.EIO, str(e))
        raise write_error(path, e) from None
    Path(stale).unlink(missing_ok=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def parameter_groups(model, learning_rate, weight_decay, lr_decay):
    """AdamW parameter groups: weight decay on matrices only and, with lr_decay < 1, layer-wise learning rates (Sun
    et al. 2019): the head and the top layer at learning_rate, each layer below x lr_decay, the embeddings last.
    Layers are found by name: ...transformer.layer.N (DistilBERT) or ...encoder.layer.N (BERT, RoBERTa, MiniLM)."""
    names = dict(model.named_parameters())
    layer_of = {name: int(m.group(1)) for name in names if (m := LAYER.search(name))} if lr_decay != 1 else {}
    if lr_decay != 1 and not layer_of:
        raise RecipeError(f"LR_DECAY (--lr-decay) needs a model whose layers are named like encoder.layer.N or "
                          f"transformer.layer.N (BERT, DistilBERT, RoBERTa); {type(model).__name__} has none; "
                          f"use --lr-decay 1")
    top = max(layer_of.values(), default=0)
    groups = {}
    for name, p in names.items():
        depth = top + 1 if ".embeddings." in name else top - layer_of[name] if name in layer_of else 0
        groups.setdefault((lr_decay ** depth if layer_of else 1.0, p.ndim >= 2), []).append(p)
    return [{"params": params, "lr": learning_rate * scale, "weight_decay": weight_decay if matrix else 0.0}
            for (scale, matrix), params in sorted(groups.items(), key=lambda g: (-g[0][0], not g[0][1]))]


def from_pretrained(load, name, **kwargs):
    """load(name) from a local folder or the hub; a mistyped name, no hub access or a folder that holds no
    model is one line that says so."""
    try:
        return load(name, **kwargs)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0][:160]
        if Path(name).is_dir():
            raise RecipeError(f"MODEL_NAME (--model-name) {name} is a folder but holds no model that transformers "
                              f"can load ({reason}); it needs config.json, the weights and the tokenizer files, "
                              f"as save_pretrained writes them") from None
        raise RecipeError(f"MODEL_NAME (--model-name) {name!r} is neither a local folder nor a model the Hugging "
                          f"Face hub could provide ({reason}); check the name, or pass a local folder with "
                          f"--model-name /path/to/model") from None


def run(settings, given, held):
    out_dir = Path(settings["OUT_DIR"])
    checkpoint_path = out_dir / "checkpoint.pt"
    s, checkpoint = resolve_run(settings, given, checkpoint_path)
    check_positive(s, POSITIVE_SETTINGS)
    check_data_settings(s)
    if not 0 <= s["WARMUP_RATIO"] < 1 or s["WEIGHT_DECAY"] < 0 or s["GRAD_CLIP"] < 0:
        raise RecipeError("WARMUP_RATIO must be in [0, 1), WEIGHT_DECAY and GRAD_CLIP must not be negative")
    if not 0 < s["LR_DECAY"] <= 1:
        raise RecipeError(f"LR_DECAY (--lr-decay) must be in (0, 1], got {s['LR_DECAY']}; 1 turns it off")
    if s["TRUNCATION"] not in ("head", "head+tail"):
        raise RecipeError(f"TRUNCATION (--truncation) must be head or head+tail, got {s['TRUNCATION']!r}")
    if s["TRUNCATION"] == "head+tail" and s["HEAD_TOKENS"] > s["MAX_LENGTH"] - 2 and "HEAD_TOKENS" not in given:
        s = {**s, "HEAD_TOKENS": s["MAX_LENGTH"] // 4}  # no room for a tail: Sun et al.'s share (128 of 512)
    if s["TRUNCATION"] == "head+tail" and not 0 <= s["HEAD_TOKENS"] <= s["MAX_LENGTH"] - 2:
        raise RecipeError(f"HEAD_TOKENS (--head-tokens) must be between 0 and MAX_LENGTH - 2 = {s['MAX_LENGTH'] - 2} "
                          f"(room for [CLS] and [SEP]), got {s['HEAD_TOKENS']}")
    device, rank, world = start_processes(s["DEVICE"])
    precision = s["PRECISION"]
    if precision == "auto":
        precision = "fp32" if device.type != "cuda" else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision not in ("bf16", "fp16", "fp32"):
        raise RecipeError(f"PRECISION (--precision) must be auto, bf16, fp16 or fp32, got {precision!r}")
    if leader():
        held.enter_context(locked(out_dir))  # a second run into OUT_DIR is refused while this one lasts
        remove_stale(out_dir), remove_stale(s["DATA_DIR"])  # what killed runs left behind
    print("settings: " + json.dumps(s))

    # data: download once, validate, split in file order; model; tokenize once (cached)
    with leader_first(world):
        data_path, reviews, names = load_reviews(s["DATA_URL"], s["DATA_DIR"], s)
    data_sha256 = file_sha256(data_path)
    if checkpoint is not None and checkpoint["data_sha256"] != data_sha256:
        raise RecipeError(f"{data_path} is not the file the checkpoint was trained on (its checksum differs)")
    train_df, valid_df, test_df = split(reviews, s["TRAIN_SIZE"], s["VALID_SIZE"], s["TEST_SIZE"], s["SHUFFLE"], s["SEED"])
    check_labels(train_df, valid_df, test_df, names)
    multi = len(label_columns(s)) > 1
    tokenizer = from_pretrained(AutoTokenizer.from_pretrained, s["MODEL_NAME"])
    torch.manual_seed(s["SEED"])
    model = from_pretrained(AutoModelForSequenceClassification.from_pretrained, s["MODEL_NAME"], num_labels=len(names),
                            id2label=dict(enumerate(names)), label2id={name: i for i, name in enumerate(names)},
                            problem_type="multi_label_classification" if multi else "single_label_classification",
                            ignore_mismatched_sizes=True,  # a head for other labels is replaced, as it is new
                            attn_implementation="sdpa").to(device)
    if s["MAX_LENGTH"] > model.config.max_position_embeddings:
        raise RecipeError(f"MAX_LENGTH (--max-length) is {s['MAX_LENGTH']} but {s['MODEL_NAME']} reads at most "
                          f"{model.config.max_position_embeddings} tokens")
    frame = pd.concat([train_df, valid_df, test_df])
    with leader_first(world):
        ids, offsets = cached_token_ids(frame["text"].tolist(), tokenizer, s["MAX_LENGTH"], s["DATA_DIR"],
                                        data_sha256, s["TRUNCATION"], s["HEAD_TOKENS"])
    labels = targets(frame, names)
    lengths = (offsets[1:] - offsets[:-1]).numpy()
    data = (ids, offsets, labels)
    n_train, n_valid = len(train_df), len(valid_df)
    valid_batches = [n_train + b for b in make_batches(lengths[n_train:n_train + n_valid], s["EVAL_BATCH_SIZE"])]
    test_batches = [n_train + n_valid + b for b in make_batches(lengths[n_train + n_valid:], s["EVAL_BATCH_SIZE"])]

    # optimizer, schedule, precision
    fused = s["FUSED_ADAMW"] and device.type in ("cuda", "cpu", "mps", "xpu")  # the devices torch has it for
    optimizer = torch.optim.AdamW(parameter_groups(model, s["LEARNING_RATE"], s["WEIGHT_DECAY"], s["LR_DECAY"]),
                                  lr=s["LEARNING_RATE"], fused=fused)
    batches_per_epoch = math.ceil(n_train / s["BATCH_SIZE"])
    steps_per_epoch = math.ceil(batches_per_epoch / s["GRAD_ACCUM_STEPS"])
    total_steps = steps_per_epoch * s["EPOCHS"]
    scheduler = get_linear_schedule_with_warmup(optimizer, round(s["WARMUP_RATIO"] * total_steps), total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
                              enabled=precision != "fp32")
    forward_model = torch.compile(model, dynamic=True) if s["COMPILE"] else model
    train_model = forward_model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        forward_model, device_ids=[device] if device.type == "cuda" else None)
    state = {"epoch": 1, "batch": 0, "history": [], "best_valid": None, "best_epoch": None,
             "batch_losses": [], "correct": 0, "seconds": 0.0}
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = checkpoint["state"]
        if rank > 0:  # the checkpoint holds the sums over all processes: rank 0 carries them on
            state.update(batch_losses=[0.0] * state["batch"], correct=0)
        restore_rng(checkpoint["rng"])
        print(f"resuming {checkpoint_path}: epoch {state['epoch']}, batch {state['batch']}/{batches_per_epoch}")

    def save_checkpoint():
        checkpoint = {"settings": s, "data_sha256": data_sha256, "state": state, "rng": rng_state(),
                      "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()}
        if leader():
            atomic_write(checkpoint_path, lambda f: torch.save(checkpoint, f))

    print(f"train {n_train:,} / valid {n_valid:,} / test {len(test_df):,} reviews | batch {s['BATCH_SIZE']} x "
          f"{s['GRAD_ACCUM_STEPS']} | {total_steps:,} optimizer steps | {device} x {world} | {precision}")
    try:
        with StopRequest() as stop:
            for epoch in range(state["epoch"], s["EPOCHS"] + 1):
                model.train()  # from_pretrained returns a model in eval mode (dropout off)
                epoch_start = time.perf_counter() - state["seconds"]
                generator = torch.Generator().manual_seed(s["SEED"] + epoch)  # the same batches when resumed
                batches = make_batches(lengths[:n_train], s["BATCH_SIZE"], generator, s["LENGTH_GROUPING"])
                batch_losses = torch.zeros(len(batches), device=device)
                batch_losses[:state["batch"]] = torch.tensor(state["batch_losses"])
                correct = torch.tensor(state["correct"], device=device)
                shares = [share(b, rank, world) for b in batches]  # under torchrun: this process's part
                bar = progress(loader([part for part, _ in shares[state["batch"]:]], data, tokenizer.pad_token_id,
                                      device), desc=f"epoch {epoch}/{s['EPOCHS']}", initial=state["batch"],
                               total=len(batches))
                for i, batch in enumerate(bar, start=state["batch"]):
                    first = i - i % s["GRAD_ACCUM_STEPS"]
                    step_examples = sum(len(b) for b in batches[first:first + s["GRAD_ACCUM_STEPS"]])
                    step_done = (i + 1) % s["GRAD_ACCUM_STEPS"] == 0 or i + 1 == len(batches)
                    weight = shares[i][1]  # DDP averages the gradients over processes: divide by step_examples / world
                    with train_model.no_sync() if world > 1 and not step_done else contextlib.nullcontext():
                        loss_sum, batch_correct = train_step(train_model, to_device(batch, device),
                                                             step_examples / world if weight else math.inf,
                                                             autocast, scaler, s["THRESHOLD"])
                    batch_losses[i], correct = loss_sum * weight, correct + batch_correct * weight
                    if step_done:
                        scaler.unscale_(optimizer)
                        if s["GRAD_CLIP"] > 0:
                            torch.nn.utils.clip_grad_norm_(model.parameters(), s["GRAD_CLIP"])
                        scaler.step(optimizer)
                        scaler.update()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                    if (i + 1) % s["LOG_EVERY"] == 0 or i + 1 == len(batches):
                        seen = batch_losses[:i + 1]
                        loss = seen.sum().item() / sum(len(part) * weight for part, weight in shares[:i + 1])
                        if not math.isfinite(loss):
                            bad = int(torch.nonzero(~torch.isfinite(seen))[0])
                            raise RecipeError(f"the loss became {seen[bad].item()} at epoch {epoch}, batch {bad + 1}; "
                                              f"lower --learning-rate (now {s['LEARNING_RATE']}) or try --precision fp32")
                        bar.set_postfix(loss=f"{loss:.4f}")
                    if step_done and agreed(stop.requested, device, world):  # all processes stop at this step
                        batch_losses, correct = all_sum(batch_losses, world), all_sum(correct, world)
                        state.update(epoch=epoch, batch=i + 1, batch_losses=batch_losses[:i + 1].tolist(),
                                     correct=correct.item(), seconds=time.perf_counter() - epoch_start)
                        save_checkpoint()
                        raise Interrupted(stop.requested)
                bar.close()
                train_seconds = time.perf_counter() - epoch_start
                valid = scores(evaluate(forward_model, valid_batches, data, tokenizer.pad_token_id, device, autocast,
                                        rank, world), labels[n_train:n_train + n_valid], names, s["THRESHOLD"])
                batch_losses, correct = all_sum(batch_losses, world), all_sum(correct, world)  # over all processes
                record = {"epoch": epoch, "train_loss": batch_losses.sum().item() / n_train,
                          "train_accuracy": correct.item() / n_train, "valid_loss": valid["loss"],
                          "valid_accuracy": valid["accuracy"], "seconds": train_seconds,
                          **({"valid_macro_roc_auc": valid["macro_roc_auc"]} if multi else {})}
                print(f"epoch {epoch}: train loss {record['train_loss']:.4f} | train accuracy "
                      f"{record['train_accuracy']:.4f} | valid {shown(valid)} | {train_seconds:.1f} s")
                state["history"].append(record)
                if better(valid, state["best_valid"]):
                    state.update(best_valid=valid, best_epoch=epoch)
                    if leader():
                        save_model(model, tokenizer, out_dir / "model", stale=out_dir / "metrics.json")
                state.update(epoch=epoch + 1, batch=0, batch_losses=[], correct=0, seconds=0.0)
                save_checkpoint()
                if agreed(stop.requested, device, world) and epoch < s["EPOCHS"]:
                    raise Interrupted(stop.requested or signal.SIGTERM)
    except torch.OutOfMemoryError as e:
        raise RecipeError(f"out of GPU memory with --batch-size {s['BATCH_SIZE']} at --max-length {s['MAX_LENGTH']}: "
                          f"lower --batch-size (e.g. {max(1, s['BATCH_SIZE'] // 2)}) and raise --grad-accum-steps "
                          f"(e.g. {s['GRAD_ACCUM_STEPS'] * 2}) for the same effective batch, or lower --max-length"
                          ) from e
    train_seconds = sum(record["seconds"] for record in state["history"])

    # test the best epoch's model, reloaded from disk exactly as a user would
    if world > 1:
        dist.barrier()  # rank 0 has written it
    best = AutoModelForSequenceClassification.from_pretrained(out_dir / "model", attn_implementation="sdpa").to(device)
    test = scores(evaluate(best, test_batches, data, tokenizer.pad_token_id, device, autocast, rank, world),
                  labels[n_train + n_valid:], names, s["THRESHOLD"])
    devices = device_names(device, world)
    print(f"best epoch {state['best_epoch']}: valid {shown(state['best_valid'])} | test {shown(test)} | "
          f"trained {train_seconds:.1f} s")
    metrics = {"settings": s, "labels": names, "multi_label": multi, "epochs": state["history"],
               "best_epoch": state["best_epoch"], "valid_accuracy": state["best_valid"]["accuracy"],
               "test_accuracy": test["accuracy"], "valid": state["best_valid"], "test": test,
               "train_seconds": train_seconds, "device": devices[0], "devices": devices,
               "world_size": world, "precision": precision,
               "parameters": best.num_parameters()}
    if leader():
        atomic_write(out_dir / "metrics.json", lambda f: f.write((json.dumps(metrics, indent=2) + "\n").encode()))
        checkpoint_path.unlink()  # the run is complete: model/ and metrics.json are what it leaves
    print(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'model'}/")
    if world > 1:
        dist.barrier()  # no process tears down its connections while another still uses them
    return metrics


if __name__ == "__main__":
    main()
