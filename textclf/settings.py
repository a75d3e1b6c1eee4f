"""The UPPER_CASE settings block as --lower-case-name flags, the checks every run makes, and --resume's settings."""
import argparse
import ast
import pickle
import re
import sys
from pathlib import Path

import torch

SPLIT_SIZES = ("TRAIN_SIZE", "VALID_SIZE", "TEST_SIZE")


class RecipeError(Exception):
    """A problem the user can fix (data, settings): main() prints it as one line and exits 1."""


def flag(name):
    return "--" + name.lower().replace("_", "-")


def parse_settings(argv, defaults, script=None):
    """(all settings, those given) from argv: --epochs 3, --max-length=128, --compile true. Values are typed from the
    defaults; --help shows the script's docstring and each setting's comment from its settings block."""
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
    parser = argparse.ArgumentParser(description=ast.get_docstring(ast.parse(source)), allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = lambda message: sys.exit(f"error: {message}")  # one line and exit 1, like every other error
    for name, default in defaults.items():
        parser.add_argument(flag(name), dest=name, type=typed(name, default), default=argparse.SUPPRESS,
                            metavar=type(default).__name__.upper(), help=f"{comments.get(name, '')} (default: {default})",
                            **({"nargs": "?", "const": True} if isinstance(default, bool) else {}))
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
            raise RecipeError(f"{name} ({flag(name)}) is {s[name]}: a split size is a row count (a whole number) "
                              f"or a fraction of the rows in (0, 1]")
    if sum(s[name] for name in SPLIT_SIZES if isinstance(s[name], float)) > 1 + 1e-9:
        raise RecipeError(f"the split fractions add up to more than 1 (TRAIN_SIZE {s['TRAIN_SIZE']}, VALID_SIZE "
                          f"{s['VALID_SIZE']}, TEST_SIZE {s['TEST_SIZE']}); e.g. --train-size 0.8 --valid-size 0.1 "
                          f"--test-size 0.1")
    if s["PATIENCE"] < 0:
        raise RecipeError(f"PATIENCE (--patience) must be 0 (off) or a number of epochs, got {s['PATIENCE']}")
    if not 0 < s["THRESHOLD"] < 1:
        raise RecipeError(f"THRESHOLD (--threshold) must be between 0 and 1, got {s['THRESHOLD']}")
    if not s["TEXT_COLUMN"].strip() or not label_columns(s):
        raise RecipeError("TEXT_COLUMN (--text-column) and LABEL_COLUMNS (--label-columns) must name columns")


def label_columns(s):
    """LABEL_COLUMNS as a list: one name is single-label, several are multi-label."""
    return [name.strip() for name in s["LABEL_COLUMNS"].split(",") if name.strip()]


def is_url(name):
    return re.match(r"[a-z][a-z0-9+.-]+://", name, re.IGNORECASE) is not None


def resolve_run(settings, given, checkpoint_path, script=None):
    """(settings, checkpoint): with RESUME the checkpoint's (a run of script), which those given must agree with; else an
    unfinished run is never overwritten. Local DATA_URL and MODEL_NAME are made absolute (a moved one is named again)."""
    absolute = lambda url: url if is_url(url) else str(Path(url).expanduser().absolute())
    local = [name for name in ("DATA_URL", "MODEL_NAME") if name in settings and (
        name == "DATA_URL" or Path(settings[name]).expanduser().is_dir())]
    settings = {**settings, **{name: absolute(settings[name]) for name in local}}
    given = {**given, **{name: settings[name] for name in local if name in given}}
    if not settings["RESUME"]:
        if checkpoint_path.exists():
            raise RecipeError(f"{checkpoint_path} holds an unfinished run; continue it with --resume, or choose "
                              f"another --out-dir (or delete the file to start over)")
        return settings, None
    if not checkpoint_path.exists():
        raise RecipeError(f"nothing to resume: {checkpoint_path} does not exist")
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        checkpoint["settings"]
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError) as e:
        raise RecipeError(f"{checkpoint_path} is damaged ({type(e).__name__}) and cannot be resumed; restore it, or "
                          f"delete it to start the run over") from None
    if checkpoint.get("script", script) != script:
        raise RecipeError(f"{checkpoint_path} is a run of {checkpoint['script']}, not of {script}; continue it with "
                          f"python {checkpoint['script']} --out-dir {checkpoint_path.parent} --resume")
    saved = {**settings, **checkpoint["settings"], "RESUME": True, "OUT_DIR": settings["OUT_DIR"]}  # newer settings
    for name in local:
        if name in given and not is_url(given[name]) and not is_url(saved[name]) and Path(saved[name]).is_absolute():
            saved[name] = given[name]  # the file's or folder's new place: a data file's checksum must match
    differ = [f"{name} ({value!r}, the run has {saved[name]!r})" for name, value in given.items()
              if name in saved and saved[name] != value]
    if differ:
        raise RecipeError(f"--resume continues the run with its own settings, but these differ: {', '.join(differ)}")
    if not is_url(saved["DATA_URL"]) and not Path(saved["DATA_URL"]).is_file():
        raise RecipeError(f"the run's data file {saved['DATA_URL']} is not there; if it moved, continue with --resume "
                          f"--data-url NEW_PATH (the run checks that it is the same file by its checksum)")
    return saved, checkpoint
