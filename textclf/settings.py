"""The UPPER_CASE settings block as --lower-case-name flags, the checks every run makes, and --resume's settings."""

import argparse
import ast
import pickle
import re
import sys
from pathlib import Path

import torch

SPLIT_SIZES = ("TRAIN_SIZE", "VALID_SIZE", "TEST_SIZE")
DATA_FILES = ("DATA_URL", "VALID_URL", "TEST_URL")  # the data of each split: VALID_URL's and TEST_URL's where given


class RecipeError(Exception):
    """A problem the user can fix (data, settings): main() prints it as one line and exits 1."""


def flag(name):
    return "--" + name.lower().replace("_", "-")


def parse_settings(argv, defaults, script=None):
    """(all settings, those given) from argv (--epochs 3, --max-length=128), typed from defaults; --help: comments."""

    def typed(name, default):
        def convert(text):
            if isinstance(default, bool):
                if text.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                    raise ValueError(text)
                return text.lower() in ("1", "true", "yes", "on")
            if name in SPLIT_SIZES and not text.strip().isdigit():
                return float(text)  # a fraction of the rows
            return type(default)(text)

        convert.__name__ = type(default).__name__  # argparse names the type in its error message
        return convert

    source = Path(script).read_text() if script else ""
    comments = dict(re.findall(r"^([A-Z][A-Z0-9_]*) = .*?  # (.*)$", source, re.MULTILINE))
    parser = argparse.ArgumentParser(
        description=ast.get_docstring(ast.parse(source)),
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.error = lambda message: sys.exit(f"error: {message}")  # one line and exit 1, like every other error
    for name, default in defaults.items():
        parser.add_argument(
            flag(name),
            dest=name,
            type=typed(name, default),
            default=argparse.SUPPRESS,
            metavar=type(default).__name__.upper(),
            help=f"{comments.get(name, '')} (default: {default})",
            **({"nargs": "?", "const": True} if isinstance(default, bool) else {}),
        )
    given, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unknown setting {unknown[0]!r}; the settings are: {' '.join(map(flag, defaults))}")
    return {**defaults, **vars(given)}, vars(given)


def check_settings(s, positive):
    """The settings in positive are > 0, split sizes are counts or fractions, THRESHOLD a probability, columns named."""
    for name in positive:
        if not s[name] > 0:
            raise RecipeError(f"{name} ({flag(name)}) must be positive, got {s[name]}")
    for name in SPLIT_SIZES:
        if isinstance(s[name], float) and not 0 < s[name] <= 1:
            raise RecipeError(
                f"{name} ({flag(name)}) is {s[name]}: a split size is a row count (a whole number) "
                f"or a fraction of the rows in (0, 1]"
            )
    if s["PATIENCE"] < 0:
        raise RecipeError(f"PATIENCE (--patience) must be 0 (off) or a number of epochs, got {s['PATIENCE']}")
    if not 0 < s["THRESHOLD"] < 1:
        raise RecipeError(f"THRESHOLD (--threshold) must be between 0 and 1, got {s['THRESHOLD']}")
    if not text_columns(s) or not label_columns(s):
        raise RecipeError("TEXT_COLUMN (--text-column) and LABEL_COLUMNS (--label-columns) must name columns")
    if len(text_columns(s)) > 2:
        raise RecipeError(
            f"TEXT_COLUMN (--text-column) names {len(text_columns(s))} columns; give one (a text) or "
            f"two (a sentence pair, e.g. --text-column sentence1,sentence2)"
        )
    if len(set(text_columns(s))) < len(text_columns(s)):
        raise RecipeError(f"TEXT_COLUMN (--text-column) names {text_columns(s)[0]} twice; a pair needs two columns")
    if s.get("TASK", "auto") not in ("auto", "classification", "regression"):
        raise RecipeError(f"TASK (--task) must be auto, classification or regression, got {s['TASK']!r}")
    if s.get("TASK") == "regression" and len(label_columns(s)) > 1:
        raise RecipeError("TASK (--task) regression predicts one score: give one column with --label-columns")
    if s.get("CLASS_WEIGHTS", "none") not in ("none", "balanced"):
        raise RecipeError(f"CLASS_WEIGHTS (--class-weights) must be none or balanced, got {s['CLASS_WEIGHTS']!r}")


def text_columns(s):
    """TEXT_COLUMN as a list: one name is a text a row, two (comma-separated) a sentence pair."""
    return [name.strip() for name in s["TEXT_COLUMN"].split(",") if name.strip()]


def label_columns(s):
    """LABEL_COLUMNS as a list: one name is single-label, several are multi-label."""
    return [name.strip() for name in s["LABEL_COLUMNS"].split(",") if name.strip()]


def is_url(name):
    return re.match(r"[a-z][a-z0-9+.-]+://", name, re.IGNORECASE) is not None


def resolve_run(settings, given, checkpoint_path, script=None):
    """(settings, checkpoint): with RESUME the checkpoint's (a run of script), which those given must agree with; else an
    unfinished run is never overwritten. Local data files and MODEL_NAME are made absolute (a moved one is named again)."""

    def absolute(url):
        return url if is_url(url) else str(Path(url).expanduser().absolute())

    local = [  # data files, and model folders (a hub name stays one)
        name
        for name in (*DATA_FILES, "UNLABELED_URL", "MODEL_NAME", "TEACHER")
        if settings.get(name) and (name in (*DATA_FILES, "UNLABELED_URL") or Path(settings[name]).expanduser().is_dir())
    ]
    settings = {**settings, **{name: absolute(settings[name]) for name in local}}
    given = {**given, **{name: settings[name] for name in local if name in given}}
    if not settings["RESUME"]:
        if checkpoint_path.exists():
            raise RecipeError(
                f"{checkpoint_path} holds an unfinished run; continue it with --resume, or choose "
                f"another --out-dir (or delete the file to start over)"
            )
        return settings, None
    if not checkpoint_path.exists():
        raise RecipeError(f"nothing to resume: {checkpoint_path} does not exist")
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        checkpoint["settings"]
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError) as e:
        raise RecipeError(
            f"{checkpoint_path} is damaged ({type(e).__name__}) and cannot be resumed; restore it, or "
            f"delete it to start the run over"
        ) from None
    if checkpoint.get("script", script) != script:
        raise RecipeError(
            f"{checkpoint_path} is a run of {checkpoint['script']}, not of {script}; continue it with "
            f"python {checkpoint['script']} --out-dir {checkpoint_path.parent} --resume"
        )
    saved = {**settings, **checkpoint["settings"], "RESUME": True, "OUT_DIR": settings["OUT_DIR"]}  # newer settings
    for name in local:
        if name in given and not is_url(given[name]) and not is_url(saved[name]) and Path(saved[name]).is_absolute():
            saved[name] = given[name]  # the file's or folder's new place: a data file's checksum must match
    differ = [
        f"{name} ({value!r}, the run has {saved[name]!r})"
        for name, value in given.items()
        if name in saved and saved[name] != value
    ]
    if differ:
        raise RecipeError(f"--resume continues the run with its own settings, but these differ: {', '.join(differ)}")
    for name in (n for n in DATA_FILES if saved.get(n) and not is_url(saved[n]) and not Path(saved[n]).is_file()):
        raise RecipeError(
            f"the run's data file {saved[name]} is not there; if it moved, continue with --resume "
            f"{flag(name)} NEW_PATH (the run checks that it is the same file by its checksum)"
        )
    return saved, checkpoint
