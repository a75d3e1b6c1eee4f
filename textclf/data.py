"""The data: any text-label file or the aclImdb archive, downloaded once, validated, split, and its labels as targets."""

import ast
import gzip
import hashlib
import http.client
import json
import re
import shutil
import tarfile
import time
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

from .parallel import progress
from .runfolder import atomic_write
from .settings import DATA_FILES, SPLIT_SIZES, RecipeError, flag, is_url, label_columns, text_columns

STALL = (60, 16_384)  # a download that brings fewer bytes (16 kB) in this many seconds has stalled


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def load_reviews(url, data_dir, settings, setting="DATA_URL", names=None, named_by="LABEL_NAMES", texts_only=False):
    """(path, frame, label names) of setting's url: a path, a URL, hf://datasets/ (from_hub()), an aclImdb archive.
    names (named_by says whose they are) name integer labels where the file's own metadata does not. texts_only: the
    text column(s) alone, any labels ignored (unlabelled transfer texts; an aclImdb archive's unsup reviews)."""
    if url.lower().startswith("hf://") and not HUB.fullmatch(url):
        raise RecipeError(
            f"{setting} ({flag(setting)}) {url} is not a hub dataset file: write it as "
            f"hf://datasets/OWNER/NAME/PATH (or hf://datasets/OWNER/NAME@REVISION/PATH), e.g. "
            f"hf://datasets/stanfordnlp/imdb/plain_text/train-00000-of-00001.parquet"
        )
    if HUB.match(url):
        path = from_hub(url, data_dir, setting)
    elif is_url(url):
        path = download(url, data_dir, settings, setting, names, named_by, texts_only)
    else:
        path = Path(url).expanduser()
        if not path.is_file():
            raise RecipeError(
                f"{setting} ({flag(setting)}) {url} is not a file here; give the path of an existing "
                f"file, or a URL (https://, file://, hf://datasets/)"
            )
    try:
        csv = from_archive(path, data_dir, texts_only) if is_archive(path) else path
        if is_archive(path) and texts_only:  # the archive's reviews, whatever the data's text column is called
            settings = {**settings, "TEXT_COLUMN": "review"}
        return csv, *read_reviews(csv, None, settings, names, named_by, texts_only)
    except RecipeError as e:
        if not is_url(url):
            raise
        raise RecipeError(f"{e}; delete {path} to download it again") from None


HUB = re.compile(r"hf://datasets/(?P<repo>[^/@]+/[^/@]+)(?:@(?P<revision>[^/]+))?/(?P<file>.+)")


def from_hub(url, data_dir, setting):
    """hf://datasets/OWNER/NAME[@REVISION]/PATH fetched once into data_dir/hf/ by huggingface_hub (resumes; HF_TOKEN)."""
    repo, revision, file = HUB.fullmatch(url).groups()
    folder = Path(data_dir) / "hf" / url[len("hf://") :].removesuffix(f"/{file}")
    if not (folder / file).is_file():
        made = next((p for p in [*reversed(folder.parents), folder] if not p.exists()), None)  # what a failure removes
        before = set(folder.rglob("*")) if made is None else set()  # an earlier file's folder: what it held stays
        print(f"downloading {url} -> {folder / file}")
        try:
            hf_hub_download(
                repo, file, repo_type="dataset", revision=revision and urllib.parse.unquote(revision), local_dir=folder
            )  # refs%2Fconvert%2Fparquet: refs/convert/parquet
        except (OSError, ValueError, HfHubHTTPError) as e:  # not found, gated, offline: OSError or ValueError
            if not any(folder.rglob("*.incomplete")):  # a partial download stays: the next try resumes it
                if made:
                    shutil.rmtree(made, ignore_errors=True)
                else:  # its lock file and metadata, and the folders made for them, deepest first
                    for new in sorted(set(folder.rglob("*")) - before, key=lambda p: len(p.parts), reverse=True):
                        if new.is_dir():
                            shutil.rmtree(new, ignore_errors=True)
                        else:
                            new.unlink(missing_ok=True)
            raise RecipeError(
                f"could not download {url} ({type(e).__name__}: {' '.join(str(e).split())[:300]}); "
                f"check the name, set HF_TOKEN for a private or gated dataset, or download it by hand "
                f"and pass {flag(setting)} /path/to/{Path(file).name}"
            ) from None
    return folder / file


def download(url, data_dir, settings, setting="DATA_URL", names=None, named_by="LABEL_NAMES", texts_only=False):
    """url saved once, whole and valid, as data_dir/NAME (.NAME.source.json: URL, checksum; a hand-saved file stays)."""
    path = Path(data_dir) / (Path(urllib.parse.urlparse(url).path).name or "data.csv")
    source = path.with_name(f".{path.name}.source.json")
    record = json.loads(source.read_text()) if source.exists() else {}
    if path.exists() and (record.get("url", url) == url or record.get("sha256") != file_sha256(path)):
        return path
    if path.exists():
        print(f"{path} was downloaded from {record['url']}, not from {url}: replacing it")
    print(f"downloading {url} -> {path}")

    def fetch(f):
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                size = int(response.headers.get("Content-Length") or 0) or None
                window = (time.monotonic(), 0)  # a server that trickles: too few bytes in STALL seconds
                with progress(total=size, unit="B", unit_scale=True, desc="download") as bar:
                    while chunk := response.read1(1 << 20):  # what has arrived, up to 1 MB
                        try:
                            bar.update(f.write(chunk))
                        except OSError as e:  # a full disk: atomic_write() reports it, not as the network's fault
                            e.needed = size
                            raise
                        if time.monotonic() - window[0] > STALL[0]:
                            if f.tell() - window[1] < STALL[1]:
                                raise ConnectionError(
                                    f"the server sent {f.tell() - window[1]:,} bytes in the last {STALL[0]} s"
                                )
                            window = (time.monotonic(), f.tell())
            if size and f.tell() < size:
                raise ConnectionError(f"the connection closed after {f.tell():,} of {size:,} bytes")
        except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts: OSError
            if hasattr(e, "needed"):
                raise
            raise RecipeError(
                f"could not download {url} ({' '.join(str(e).split())}); fetch it by hand and save it as "
                f"{path}, or pass {flag(setting)} /path/to/{path.name}"
            ) from e
        f.flush()
        try:
            if is_archive(url):
                read_aclimdb(f.name, url)
            else:
                read_reviews(f.name, url, settings, names, named_by, texts_only)
        except RecipeError as e:
            raise RecipeError(f"{e}; nothing was saved") from None

    atomic_write(path, fetch)
    atomic_write(source, lambda f: f.write(json.dumps({"url": url, "sha256": file_sha256(path)}).encode()))
    return path


def is_archive(name):
    return str(name).lower().endswith((".tar.gz", ".tgz", ".tar"))


def from_archive(archive, data_dir, unsup=False):
    """The archive's reviews written once (again for a newer archive) as data_dir/NAME.csv.gz (unsup: its unlabelled
    reviews, as data_dir/NAME-unsup.csv.gz): its path."""
    path = Path(data_dir) / (Path(archive).name.split(".")[0] + "-unsup" * unsup + ".csv.gz")
    if not path.exists() or path.stat().st_mtime < Path(archive).stat().st_mtime:
        print(f"writing {path} from {archive}")
        frame = read_aclimdb(archive, unsup=unsup)
        atomic_write(path, lambda f: frame.to_csv(f, index=False, compression={"method": "gzip", "mtime": 0}))
    return path


ACLIMDB = re.compile(r"(?:^|/)aclImdb/(train|test)/(pos|neg|unsup)/(\d+)_\d+\.txt$")


def read_aclimdb(path, name=None, unsup=False):
    """The Stanford archive as review, sentiment: the train half, then the test half, each shuffled with seed 0; unsup:
    its 50,000 unlabelled reviews (train/unsup/) as review alone, in the order of their numbers."""
    name = name or path
    parts = {(half, folder): [] for half in ("train", "test") for folder in ("pos", "neg", "unsup")}
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                match = ACLIMDB.search(member.name)  # aclImdb/{train,test}/{pos,neg}/ID_RATING.txt
                if member.isfile() and match:
                    text = archive.extractfile(member).read().decode("utf-8")
                    parts[match[1], match[2]].append((int(match[3]), text))
    except (tarfile.TarError, OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise RecipeError(f"{name} is not a readable tar archive ({type(e).__name__}: {e})") from None
    if unsup:
        if not parts["train", "unsup"]:
            raise RecipeError(
                f"{name} has no unlabelled reviews (aclImdb/train/unsup/ID_0.txt); it is not the Stanford archive"
            )
        return pd.DataFrame({"review": [text for _, text in sorted(parts["train", "unsup"])]})
    empty = [f"aclImdb/{half}/{folder}/" for (half, folder), rows in parts.items() if not rows and folder != "unsup"]
    if empty:
        raise RecipeError(
            f"{name} is not the Stanford aclImdb archive: no reviews in {', '.join(empty)} (it needs "
            f"aclImdb/train/pos/ID_RATING.txt and the like, for train and test, pos and neg)"
        )
    rows = []
    for half in ("train", "test"):
        part = [(text, label) for label, folder in ((1, "pos"), (0, "neg")) for _, text in sorted(parts[half, folder])]
        rows += [part[i] for i in np.random.default_rng(0).permutation(len(part))]
    return pd.DataFrame(rows, columns=["review", "sentiment"])


def read_reviews(path, name, settings, names=None, named_by="LABEL_NAMES", texts_only=False):
    """(frame, label names) of a .tsv, .jsonl, .parquet or other CSV file, plain or gzip, checked (errors call it name):
    a non-empty `text` and a `label` (an integer indexes the file's own names: a Parquet file's ClassLabel names, else
    names, else LABEL_NAMES; a word label the sorted word labels) or, multi-label, a 0/1 column per label, 0..K-1.
    named_by says in an error message whose the names are. texts_only: the text column(s) alone (labels ignored)."""
    name = name or path
    texts, columns = text_columns(settings), [] if texts_only else label_columns(settings)
    with open(path, "rb") as f:
        head = f.read(512)
    gzipped = head[:2] == b"\x1f\x8b"
    kind = next(
        (kind for kind in ("tsv", "jsonl", "parquet") if re.search(rf"\.{kind}(\.gz)?$", str(name), re.IGNORECASE)),
        "csv",
    )
    if kind == "csv" and re.search(r"\.txt$", str(name), re.IGNORECASE) and b"\t" in head.split(b"\n")[0]:
        kind = "tsv"  # a .txt file whose header is tab-separated (SICK.txt, many corpora)
    if not gzipped and head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        raise RecipeError(f"{name} is an HTML page (an error or login page?), not the data file")
    try:
        compression = "gzip" if gzipped else None
        df = (
            next(jsonl_frames(path, gzipped, name))
            if kind == "jsonl"
            else pd.read_parquet(path)
            if kind == "parquet"
            else pd.read_csv(
                path, sep="\t" if kind == "tsv" else ",", compression=compression, dtype=str, keep_default_na=False
            )
        )  # every value as written: "007" stays 007, "N/A" a text
    except UnicodeDecodeError:  # where, and how to convert: pandas names only a position in its buffer
        line, byte = first_invalid_utf8(path, gzipped)
        raise RecipeError(
            f"{name} is not UTF-8 text: line {line} (the header is line 1) holds the byte {byte!r}; "
            f"save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8"
        ) from None
    except (OSError, EOFError, zlib.error, ValueError) as e:  # ParserError is a ValueError
        raise RecipeError(
            f"{name} is not a readable {kind.upper()} {'gzip file' if gzipped else 'file'} "
            f"({type(e).__name__}: {str(e)[:200]})"
        ) from None

    missing = [column for column in texts + columns if column not in df.columns]
    if missing:
        fix = (
            "name yours with --text-column and --label-columns"
            if named_by == "LABEL_NAMES"
            else "every file needs the training file's columns: rename the column in this file"
        )
        raise RecipeError(
            f"{name} has no {' or '.join(missing)} column; found columns {[str(c)[:40] for c in df.columns[:8]]}; {fix}"
        )
    if len(df) == 0:
        raise RecipeError(f"{name} holds no rows, only {'a header' if kind in ('csv', 'tsv') else 'its columns'}")
    for text_column in texts:
        nested = df[text_column].map(lambda value: isinstance(value, (list, tuple, dict, np.ndarray)))
        if nested.any():
            raise RecipeError(
                f"{name}: {text_column} holds a list or a record, not a text, in {rows(nested)}; name "
                f"a column of plain text with --text-column (or join the parts into one text column first)"
            )
        empty = df[text_column].isna() | df[text_column].astype(str).str.strip().eq("")
        if empty.any():
            raise RecipeError(
                f"{name}: empty or missing {text_column} in {rows(empty)}"
                + f" ({empty.sum():,} of {len(df):,} rows); every pair needs both texts" * (len(texts) > 1)
            )
        if kind in ("csv", "tsv") and columns:  # a merged row shows by the label values inside a text
            merged(df, text_column, columns, "\t" if kind == "tsv" else ",", name)
    frame = pd.DataFrame({"text": df[texts[0]].astype(str)})
    if len(texts) > 1:
        frame["text_pair"] = df[texts[1]].astype(str)
    if texts_only:
        return frame, []
    own = parquet_label_names(path, columns[0]) if kind == "parquet" else None
    if own is not None:
        names, named_by = own, "the file's Hugging Face metadata"
    return labelled(
        frame,
        df,
        columns,
        names or [n.strip() for n in settings["LABEL_NAMES"].split(",")],
        name,
        named_by,
        settings.get("TASK", "auto"),
    )


def parquet_label_names(path, column):
    """The ClassLabel names of column that a Hugging Face dataset's Parquet file keeps in its schema's metadata, or
    None; also of a list of them (Sequence(ClassLabel), or List in newer datasets: multi-label in one column)."""
    meta = json.loads((pyarrow.parquet.read_schema(path).metadata or {}).get(b"huggingface", b"{}"))
    feature = meta.get("info", {}).get("features", {}).get(column, {})
    while isinstance(feature, list) and len(feature) == 1 or isinstance(feature, dict) and "feature" in feature:
        feature = feature[0] if isinstance(feature, list) else feature["feature"]  # the list's elements
    return feature.get("names") if isinstance(feature, dict) else None


def metadata_names(path, settings):
    """The label names a Parquet file's own metadata gives its integer labels (parquet_label_names()), or None."""
    if not re.search(r"\.parquet$", str(path), re.IGNORECASE) or len(label_columns(settings)) > 1:
        return None
    return parquet_label_names(path, label_columns(settings)[0])


def given_label_names(settings, given, names, metadata, path):
    """(the run's label names, {metadata name: name}): the training file's names, or LABEL_NAMES where it is given
    and the file's metadata names its classes (the same classes, renamed; other files' metadata names map alike)."""
    if "LABEL_NAMES" not in given or metadata is None:
        return names, {}
    label_names = [name.strip() for name in settings["LABEL_NAMES"].split(",")]
    if len(label_names) != len(metadata):
        raise RecipeError(
            f"LABEL_NAMES (--label-names) names {len(label_names)} classes, but {path}'s metadata names "
            f"{len(metadata)} ({','.join(metadata)}); give one name for each of them, in that order"
        )
    return label_names, dict(zip(metadata, label_names, strict=True))


def is_list(value):
    return isinstance(value, (list, tuple, np.ndarray)) or isinstance(value, str) and as_list(value) is not None


def as_list(value):
    """A label cell's list of classes: a list (JSONL), an array (Parquet) or a text written as a list, in JSON
    ("[0, 3]", '["joy", "anger"]', as a CSV file holds one) or in Python's repr ("['joy', 'anger']", as pandas'
    to_csv writes a list); None for anything else. What the list holds is listed()'s to check."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    if not isinstance(value, str) or not (value.strip().startswith("[") and value.strip().endswith("]")):
        return None
    for parse in (json.loads, ast.literal_eval):  # literal_eval reads literals only: it runs no code
        try:
            parsed = parse(value.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
        return parsed if isinstance(parsed, list) else None
    return None


def odd_lists(classes):
    """(what, row) of the first list of classes that holds something besides class numbers and names (nested lists,
    numbers that are not whole, true/false), or None."""
    kinds = (
        ((list, tuple, dict, np.ndarray), "lists inside a list"),
        (bool, "true/false values"),
        (float, "numbers with a decimal point"),
    )
    for i, row in enumerate(classes):
        for value in row:
            if not isinstance(value, (int, str)) or isinstance(value, bool):
                what = next((what for kind, what in kinds if isinstance(value, kind)), type(value).__name__)
                return what, i
    return None


def labelled(frame, df, columns, names, name, named_by="LABEL_NAMES", task="auto"):
    """read_reviews()'s (frame, label names): frame (the texts) with df's label columns, checked. A regression task's
    label is a float and its one name the column's."""
    if len(columns) > 1:  # multi-label: 0/1 in each column
        for k, column in enumerate(columns):
            values = pd.to_numeric(df[column], errors="coerce")
            bad = ~values.isin([0, 1])
            if bad.any():
                raise RecipeError(
                    f"{name}: with several LABEL_COLUMNS each is a 0/1 column, but {column} holds "
                    f"{str(df[column][bad].iloc[0])!r} in {rows(bad)}"
                )
            frame[k] = values.astype(int)
        return frame, columns
    lists = df[columns[0]].map(is_list)
    if lists.any():  # the hub's Sequence(ClassLabel): several classes a row, in one column
        return listed(frame, df[columns[0]], lists, names, name, named_by, task)
    raw = df[columns[0]].astype(str).str.strip().where(df[columns[0]].notna(), "")
    numbers = pd.to_numeric(raw, errors="coerce")
    integers = numbers.notna() & (numbers % 1 == 0)
    scores = numbers.notna().all() and not integers.all()  # 4.25, 3.8: not classes
    if task == "regression" or (task == "auto" and scores):
        return frame.assign(label=scores_of(raw, numbers, columns[0], name)), [columns[0]]
    if raw.eq("").any():
        raise RecipeError(f"{name}: missing {columns[0]} label in {rows(raw.eq(''))}")
    if integers.all():  # 0..K-1, named by names
        bad = ~numbers.between(0, len(names) - 1)
        if bad.any():
            fix = (
                f"integer labels index LABEL_NAMES from 0, so name every class from 0 to "
                f"{int(numbers.max())} with --label-names a,b,c (a class no row has keeps its place), or, for "
                f"ratings to predict as a number, pass --task regression"
                if named_by == "LABEL_NAMES"
                else "every file needs the same classes, numbered alike"
            )
            raise RecipeError(
                f"{name}: {columns[0]} holds integer labels, named by {named_by} ({','.join(names)}) "
                f"as 0..{len(names) - 1}, but {rows(bad)} hold{'s' if bad.sum() == 1 else ''} "
                f"{raw[bad].iloc[0]!r}; {fix}"
            )
        frame["label"] = numbers.astype(int)
        return frame, names
    if scores:  # with TASK classification
        fraction = numbers.notna() & ~integers
        raise RecipeError(
            f"{name}: {columns[0]} holds numbers that are not whole ({raw[fraction].iloc[0]!r} in "
            f"{rows(fraction)}): scores, not classes; a classifier needs one class a row (an integer "
            f"or a word), or pass --task regression to predict the score"
        )
    if numbers.notna().any():
        raise RecipeError(
            f"{name}: {columns[0]} mixes numbers and words: {rows(numbers.notna())} "
            f"hold{'s' if numbers.notna().sum() == 1 else ''} {raw[numbers.notna()].iloc[0]!r} while "
            f"others hold {raw[numbers.isna()].iloc[0]!r}; use one kind of label"
        )
    names = sorted(raw.unique())
    folded = {}
    for label in names:  # "positive" and "Positive" are one class written two ways, far more often than two
        twin = folded.setdefault(label.casefold(), label)  # the first label written this way
        if twin != label:
            raise RecipeError(
                f"{name}: {columns[0]} holds labels that differ only in case, {twin!r} in "
                f"{rows(raw.eq(twin))} and {label!r} in {rows(raw.eq(label))}; write each class one way"
            )
    frame["label"] = raw.map({label: i for i, label in enumerate(names)}).astype(int)
    return frame, names


def listed(frame, column, lists, names, name, named_by, task):
    """labelled() of a label column of lists (a multi-label task in one column): frame with a 0/1 column per class,
    and the class names. Class numbers index names from 0 (a Parquet file's ClassLabel names, else names); class
    names name themselves, in sorted order."""
    if task == "regression":
        raise RecipeError(
            f"{name}: {column.name} holds lists of classes (a multi-label task), not scores; drop --task regression"
        )
    if not lists.all():
        raise RecipeError(
            f"{name}: {column.name} holds lists of classes in some rows ({rows(lists)}) and single values in "
            f"others ({rows(~lists)}, e.g. {str(column[~lists].iloc[0])!r}); write every row's classes as a list "
            f"([0, 3], or [] for none)"
        )
    classes = [[v.item() if isinstance(v, np.generic) else v for v in as_list(value)] for value in column]
    odd = odd_lists(classes)
    if odd:
        what, i = odd
        raise RecipeError(
            f"{name}: {column.name} holds lists of classes with {what} in it, e.g. {column.iloc[i]!s:.80} in "
            f"{rows(np.arange(len(classes)) == i)}; a list of labels holds class numbers ([0, 3]) or class names "
            f'(["joy", "anger"]), one level deep'
        )
    kinds = {type(v) for row in classes for v in row}
    if kinds == {str}:  # names name themselves, sorted; each row's then as their positions
        names = sorted({v for row in classes for v in row})
        position = {label: k for k, label in enumerate(names)}
        classes = [[position[label] for label in row] for row in classes]
    elif kinds - {int}:
        raise RecipeError(
            f"{name}: {column.name} holds lists that mix class numbers and class names; use one kind in every list"
        )
    else:
        bad = pd.Series([any(not 0 <= v < len(names) for v in row) for row in classes], index=column.index)
        if bad.any():
            fix = (
                "class numbers index LABEL_NAMES from 0: name every class with --label-names a,b,c"
                if named_by == "LABEL_NAMES"
                else "every file needs the same classes, numbered alike"
            )
            raise RecipeError(
                f"{name}: {column.name} holds lists of class numbers, named by {named_by} ({','.join(names)}) as "
                f"0..{len(names) - 1}, but {rows(bad)} hold{'s' if bad.sum() == 1 else ''} "
                f"{classes[int(np.flatnonzero(bad)[0])]}; {fix}"
            )
    on = np.zeros((len(classes), len(names)), dtype=int)
    for i, row in enumerate(classes):
        on[i, row] = 1
    return frame.join(pd.DataFrame(on, index=frame.index)), list(names)


def scores_of(raw, numbers, column, name):
    """A regression column's values as float32-ready floats: every one a finite number."""
    words = numbers.isna()
    if words.any():
        raise RecipeError(
            f"{name}: {column} is a regression target (TASK) but holds "
            f"{'nothing' if raw[words].iloc[0] == '' else repr(raw[words].iloc[0])} in {rows(words)}; "
            f"every row needs a number (a class name makes it a classification task: --task "
            f"classification)"
        )
    infinite = ~np.isfinite(numbers)
    if infinite.any():
        raise RecipeError(
            f"{name}: {column} holds {raw[infinite].iloc[0]!r} in {rows(infinite)}; a regression "
            f"target needs finite numbers"
        )
    beyond = numbers.abs() > np.finfo(np.float32).max  # training computes in float32
    if beyond.any():
        raise RecipeError(
            f"{name}: {column} holds {raw[beyond].iloc[0]!r} in {rows(beyond)}, beyond float32's range (about "
            f"3.4e38) that training computes in; rescale the scores (divide them by a power of ten) first"
        )
    return numbers.astype(float)


def jsonl_frames(path, gzipped, name, rows=None):
    """The objects of a JSONL file, one a line, as frames of up to rows (one without rows); a line that is no JSON
    object, or holds a lone surrogate escape, is a RecipeError naming it (pandas drops some, names others by byte)."""
    records = []
    with (gzip.open if gzipped else open)(path, "rt", encoding="utf-8") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise RecipeError(f"{name}: line {line} is not JSON ({e.msg} at column {e.pos + 1})") from None
            if not isinstance(record, dict):
                what = "null" if record is None else f"a {type(record).__name__}"
                raise RecipeError(f"{name}: line {line} is {what}, not a JSON object (one object a line)")
            bad = next((k for k, v in record.items() if isinstance(v, str) and SURROGATE.search(v)), None)
            if bad:
                raise RecipeError(
                    f"{name}: line {line} holds a lone surrogate escape (\\ud800 to \\udfff) in "
                    f"{bad}, which is no character; write the text itself"
                )
            records.append(record)
            if len(records) == rows:
                yield pd.DataFrame(records)
                records = []
    if records or not rows:
        yield pd.DataFrame(records)


SURROGATE = re.compile("[\ud800-\udfff]")  # half of a character: text that is not UTF-8, or a bare JSON escape


def first_invalid_utf8(path, gzipped):
    """(line number, byte) of the file's first byte that is not UTF-8, read line by line: it may not fit in memory."""
    with (gzip.open if gzipped else open)(path, "rb") as f:
        for line, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return line, raw[e.start : e.start + 1]
    return "?", b"?"


def rows(mask):
    """Where mask holds, for an error message: the first five row numbers and how many more."""
    where = np.flatnonzero(mask)
    more = f" and {len(where) - 5} more" if len(where) > 5 else ""
    return f"row{'s' if len(where) > 1 else ''} {', '.join(map(str, where[:5]))}{more} (0-based, header not counted)"


def merged(df, text_column, columns, sep, name):
    """A stray double quote makes one text swallow the rows after it: a line inside a text that ends with the
    separator and label values (or, labels first, starts with them) is reported; other multi-line texts load."""
    values = "|".join(map(re.escape, sorted({str(v).strip() for c in columns for v in df[c].dropna().unique()})))
    label = rf'"?\s*(?:{values})\s*"?'
    row_end = re.compile(
        rf"(?:{re.escape(sep)}{label}){{{len(columns)}}}\r?\n|\n(?:{label}{re.escape(sep)}){{{len(columns)}}}"
    )
    texts = df[text_column].astype(str)
    for row, text in texts[texts.str.contains("\n", regex=False)].items():
        if match := row_end.search(text):
            at = max(0, match.start() - 30)
            raise RecipeError(
                f"{name}: the {text_column} of row {df.index.get_loc(row)} (0-based, header not counted) "
                f"holds what looks like the end of another row ({text[at : match.end()]!r}): a stray "
                f"double quote has merged the rows after it into this one; fix the quoting (a quote "
                f'inside a quoted text is written twice: "")'
            )


def split(df, sizes, shuffle=False, seed=0, setting="DATA_URL", given=None):
    """df's rows (file order, or permuted with seed) cut into parts of sizes: {setting: count, fraction, None: rest}.
    A split that does not fit advises to lower the sizes in given (None: any size that is set)."""
    if shuffle:
        df = df.iloc[np.random.default_rng(seed).permutation(len(df))]
    counts = {name: int(size * len(df)) if isinstance(size, float) else size for name, size in sizes.items()}
    fixed, rest = sum(count for count in counts.values() if count is not None), None in counts.values()
    if fixed + rest > len(df):  # the rest needs a row too
        lowered = [flag(name) for name, n in counts.items() if n and (given is None or name in given)]
        wanted = " + ".join(f"{name} {'(the rest)' if n is None else f'{n:,}'}" for name, n in counts.items())
        raise RecipeError(
            f"the split needs {fixed + rest:,} rows ({wanted}) of {setting} but the file has {len(df):,}"
            + ("; lower " + " or ".join(lowered)) * bool(lowered)
        )
    counts = [len(df) - fixed if count is None else count for count in counts.values()]
    if 0 in counts:
        raise RecipeError(
            f"the split fractions ({', '.join(str(v or 'the rest') for v in sizes.values())}) of "
            f"{len(df):,} rows leave a split empty; give larger fractions or row counts"
        )
    return [df.iloc[end - n : end] for n, end in zip(counts, np.cumsum(counts), strict=True)]


def file_splits(s, given):
    """{file's setting: {size setting: size}}, DATA_URL first: VALID_URL and TEST_URL, where given, hold those splits. A
    size not given beside them: a file of its own whole, training the rest of DATA_URL (None), the others a tenth."""
    source = {size: url if s.get(url) else "DATA_URL" for url, size in zip(DATA_FILES, SPLIT_SIZES, strict=True)}
    alone = len(set(source.values())) == 1
    return {
        url: {
            size: s[size] if alone or size in given else None if size == "TRAIN_SIZE" or url != "DATA_URL" else 0.1
            for size in SPLIT_SIZES
            if source[size] == url
        }
        for url in dict.fromkeys(source.values())
    }


def relabel(frame, own, names, name):
    """frame's labels, indices into own (its file's names), as indices into names (the training file's), matched by
    name: a label of the file that the training file lacks is a RecipeError."""
    if own == names or is_regression(frame):
        return frame
    if "label" not in frame:  # multi-label: a 0/1 column per class of own, placed as names orders them
        unseen = [label for k, label in enumerate(own) if label not in names and frame[k].any()]
        if unseen:
            raise RecipeError(
                f"{name} holds the label {unseen[0]!r}, which the training file (DATA_URL) never has "
                f"(it has {', '.join(map(repr, names[:10]))}); every file needs the same labels, alike"
            )
        texts = frame.drop(columns=range(len(own)))
        on = {k: frame[own.index(label)] if label in own else 0 for k, label in enumerate(names)}
        return texts.join(pd.DataFrame(on, index=frame.index))
    used = sorted(set(frame["label"]))
    unseen = [own[i] for i in used if own[i] not in names]
    if unseen:
        raise RecipeError(
            f"{name} holds the label {unseen[0]!r}, which the training file (DATA_URL) never has "
            f"(it has {', '.join(map(repr, names[:10]))}); every file needs the same labels, alike"
        )
    return frame.assign(label=frame["label"].map({i: names.index(own[i]) for i in used}))


def check_labels(train, valid, test, names, shuffled, lists=False):
    """Something to learn and to choose by: two classes or more in training and validation, training has every class
    of the others; multi-label, each label on and off in training (lists: the labels are one column of lists, not a
    column each). Advice to shuffle only where the rows were not."""
    shuffle = "" if shuffled else "if the file is sorted by label, pass --shuffle true; "
    if is_regression(train):  # a correlation needs scores that vary
        for part, frame in (("training", train), ("validation", valid)):
            if frame["label"].nunique() < 2:
                raise RecipeError(
                    f"the {part} split has the score {frame['label'].iloc[0]} in every row: nothing to "
                    f"{'learn' if part == 'training' else 'choose the best epoch by'}; {shuffle}give "
                    f"more rows"
                )
        return
    if "label" not in train:
        for k, label in enumerate(names):
            if train[k].nunique() < 2 and lists:
                where = "every" if train[k].iloc[0] else "no"
                raise RecipeError(
                    f"the training split has the class {label!r} in {where} row's list of labels: nothing to learn "
                    f"for that class; {shuffle}give rows with it and rows without it"
                    + (", or leave it out of --label-names" if where == "no" else "")
                )
            if train[k].nunique() < 2:
                raise RecipeError(
                    f"the training split has {label} = {train[k].iloc[0]} in every row: nothing to "
                    f"learn for that label; {shuffle}drop {label} from --label-columns, or give more rows"
                )
        return
    seen = set(train["label"])
    if len(seen) < 2:
        raise RecipeError(
            f"the training split holds only the class {names[seen.pop()]!r}; {shuffle}give more rows "
            f"of the other classes"
        )
    classes = set(valid["label"])
    if len(classes) < 2:  # every epoch would score alike: the best one is chosen blind
        raise RecipeError(
            f"the validation split holds only the class {names[classes.pop()]!r}, so it cannot choose the "
            f"best epoch; {shuffle}give a larger --valid-size"
        )
    for part, frame in (("validation", valid), ("test", test)):
        unseen = sorted(set(frame["label"]) - seen)
        if unseen:
            raise RecipeError(
                f"the {part} split holds the class {names[unseen[0]]!r}, which the training split never "
                f"has; {'' if shuffled else 'pass --shuffle true or '}a larger --train-size"
            )


def is_regression(frame):
    """Whether a frame of read_reviews() holds scores (float labels) rather than classes."""
    return "label" in frame and pd.api.types.is_float_dtype(frame["label"])


def targets(frame, names):
    """Training targets: class indices (single-label), scores (regression, float32) or a 0/1 float matrix
    (multi-label)."""
    if is_regression(frame):
        return torch.tensor(frame["label"].to_numpy(), dtype=torch.float32)
    if "label" in frame:
        return torch.tensor(frame["label"].to_numpy())
    return torch.tensor(frame[list(range(len(names)))].to_numpy(), dtype=torch.float32)


BR_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)


def clean(text):
    """The reviews hold HTML line breaks (<br />): they are layout, not words."""
    return BR_TAG.sub(" ", text)
