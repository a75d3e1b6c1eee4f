"""Show finished runs side by side: a markdown table of their results, and their learning curves in one PNG.

    python compare.py runs/distilbert runs/lstm --output curves.png
    python compare.py benchmarks/results/*.json                       # metrics.json files work too

Each argument is a run's OUT_DIR (or its metrics.json), from either training script.
"""

import argparse
import json
import math
import sys
from pathlib import Path

from textclf.runfolder import atomic_write, inside
from textclf.settings import RecipeError


def load(path):
    """(name, metrics) of one run: an OUT_DIR holding metrics.json, or the metrics.json file itself."""
    path = Path(path)
    inside(path, "compare.py")
    file = path / "metrics.json" if path.is_dir() else path
    try:
        metrics = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise RecipeError(f"{file} is not the metrics.json of a finished run ({type(e).__name__}: {e})") from None
    if (
        not isinstance(metrics, dict)
        or not isinstance(metrics.get("settings"), dict)
        or not isinstance(metrics.get("epochs"), list)
        or not all(isinstance(e, dict) and "epoch" in e for e in metrics["epochs"])
    ):
        raise RecipeError(
            f"{file} is not the metrics.json of a finished run of train_distilbert.py or train_lstm_baseline.py"
        )
    return (path.name if path.is_dir() else file.parent.name if file.name == "metrics.json" else file.stem), metrics


def describe(metrics):
    """Script and model of a run, from its settings ("?" where a hand-edited file lacks them)."""
    s = metrics["settings"]
    if "MODEL_NAME" in s:
        parts = Path(s["MODEL_NAME"]).parts or ("?",)
        return "train_distilbert.py", "/".join(parts[-2:]) if parts[-1] == "model" else parts[-1]
    return "train_lstm_baseline.py", f"LSTM {s.get('EMBEDDING_DIM', '?')}/{s.get('HIDDEN_DIM', '?')}"


def test_data(metrics):
    """Which rows a run was tested on, and against which label column(s): its test file, or the rows of its data file
    after training and validation; None where its file does not say."""
    s, examples = metrics["settings"], metrics.get("examples", {})
    if not s.get("TEST_URL") and not s.get("DATA_URL"):
        return None
    test = examples.get("test", s.get("TEST_SIZE"))  # older runs: the setting, perhaps a fraction
    rows = f"{test:,} rows" if isinstance(test, int) else f"{test:.0%} of the rows" if isinstance(test, float) else "?"
    labels = f" ({s['LABEL_COLUMNS']})" if s.get("LABEL_COLUMNS") else ""  # the same file, another label: other data
    if s.get("TEST_URL"):
        return f"{Path(s['TEST_URL']).name}{labels}, {rows}"
    if "train" not in examples or "valid" not in examples:
        return f"{Path(s['DATA_URL']).name}{labels}, {rows}"
    order = f", shuffled (seed {s.get('SEED')})" if s.get("SHUFFLE") else ""
    first = examples["train"] + examples["valid"]
    return f"{Path(s['DATA_URL']).name}{labels}, {rows} after the first {first:,}{order}"


def number(value, form):
    return "?" if value is None else format(value, form)


def with_teachers(runs):
    """runs, each distilled run followed by its teacher: a row of the teacher's test scores on the same test split."""
    rows = []
    for name, m in runs:
        rows.append((name, m))
        teacher = m.get("teacher")
        if teacher:
            rows.append(
                (
                    f"{name}: teacher",
                    {
                        "role": "teacher",
                        "settings": {
                            **m["settings"],
                            "MODEL_NAME": teacher.get("model_name", teacher["name"]),  # (older runs: its name)
                            "MAX_LENGTH": teacher.get("max_length") or "?",
                        },
                        "task": m.get("task"),
                        "multi_label": m.get("multi_label"),
                        "examples": m.get("examples", {}),
                        "epochs": [],
                        "test": teacher["test"],
                        "test_accuracy": teacher["test"].get("accuracy"),
                    },
                )
            )
    return rows


def table(runs):
    """One markdown row per run: what was trained, how long, and how well (multi-label: exact-match accuracy, and
    the macro ROC AUC that picks the best epoch; regression: Pearson, which picks it, Spearman and RMSE); a distilled
    run's teacher on the next row, with its test scores. What a run's file lacks shows as ?."""
    runs = with_teachers(runs)
    auc = any(m.get("multi_label") for _, m in runs)
    regression = any(m.get("task") == "regression" for _, m in runs)
    tested = [test_data(m) for _, m in runs]
    differ = (
        len(set(tested) - {None}) > 1
    )  # then their test numbers do not compare: the table says on what each was tested
    header = (
        [
            "run",
            "script",
            "model",
            "parameters",
            "training reviews",
            "max length",
            "epochs",
            "device",
            "training s",
            "s per epoch",
            "best epoch",
            "valid accuracy",
            "test accuracy",
        ]
        + ["valid macro ROC AUC", "test macro ROC AUC"] * auc
        + ["valid Pearson", "test Pearson", "test Spearman", "test RMSE"] * regression
        + ["test data"] * differ
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (name, m), test in zip(runs, tested, strict=True):
        s, epochs = m["settings"], m["epochs"]
        script, model = describe(m)
        if m.get("role") == "teacher":
            script, model = "teacher", Path(m["settings"]["MODEL_NAME"]).name or m["settings"]["MODEL_NAME"]
        device = (
            m.get("device", "?")
            + (f" x {m['world_size']}" if m.get("world_size", 1) > 1 else "")
            + (f", {m['precision']}" if "precision" in m else "")
        )
        n = m.get("parameters")
        parameters = "?" if n is None else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"
        seconds = [e["seconds"] for e in epochs if "seconds" in e]
        per_epoch = (
            ", ".join(f"{t:.1f}" for t in seconds) if len(seconds) <= 3 else f"{min(seconds):.1f}–{max(seconds):.1f}"
        )
        train = m.get("examples", {}).get("train", s.get("TRAIN_SIZE"))  # older runs: a fraction stays a fraction
        train = "?" if train is None else f"{train:.0%} of the rows" if isinstance(train, float) else f"{train:,}"
        ran = f"{len(epochs)} of {s['EPOCHS']}" if len(epochs) < s.get("EPOCHS", 0) else str(len(epochs))
        if m.get("role") == "teacher":  # trained elsewhere: only its test scores are known here
            train, ran = "?", "?"
        row = [
            name,
            script,
            model,
            parameters,
            train,
            str(s.get("MAX_LENGTH", "all")),
            ran,
            device,
            number(m.get("train_seconds"), ".1f"),
            per_epoch or "?",
            number(m.get("best_epoch"), "d"),
            number(m.get("valid_accuracy"), ".4f"),
            number(m.get("test_accuracy"), ".4f"),
        ]
        row += [number((m.get(split) or {}).get("macro_roc_auc"), ".4f") for split in ("valid", "test") if auc]
        if regression:
            row += [number((m.get("valid") or {}).get("pearson"), ".4f")]
            row += [number((m.get("test") or {}).get(key), ".4f") for key in ("pearson", "spearman", "rmse")]
        row += [test or "?"] * differ
        lines.append("| " + " | ".join(row) + " |")
    if differ:
        lines.append(
            "\nThese runs were tested on different data (the test data column): their test numbers do not compare."
        )
    return "\n".join(lines)


def figure_of(runs):
    """Loss and accuracy per epoch of every run: training solid, validation dashed, the best epoch starred; a colour
    a run (the default ten, then tab20's, then evenly spaced), and the legend below the plots, however many runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, len(runs))  # legend columns
    legend_rows = -(-2 * len(runs) // columns)
    height = 4.5 + 0.25 * max(0, legend_rows - 2)  # inches: a quarter more a legend row beyond two
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(12, height), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(runs) > len(colors):
        colors = (
            [plt.get_cmap("tab20")(i) for i in range(len(runs))]
            if len(runs) <= 20
            else [plt.get_cmap("turbo")(i / (len(runs) - 1)) for i in range(len(runs))]
        )
    for (name, m), color in zip(runs, colors, strict=False):
        epochs = [e["epoch"] for e in m["epochs"]]
        score = "pearson" if m.get("task") == "regression" else "accuracy"  # the right panel: what picks the epoch
        for axes, key in ((loss_axes, "loss"), (accuracy_axes, score)):
            axes.plot(
                epochs,
                [e.get(f"train_{key}", math.nan) for e in m["epochs"]],
                "o-",
                color=color,
                label=f"{name}, training" + " (distillation loss)" * bool(key == "loss" and m.get("teacher")),
            )
            if all(f"valid_{key}" in e for e in m["epochs"]):
                axes.plot(
                    epochs, [e[f"valid_{key}"] for e in m["epochs"]], "s--", color=color, label=f"{name}, validation"
                )
        for best in (e for e in m["epochs"] if e["epoch"] == m.get("best_epoch") and e.get(f"valid_{score}")):
            accuracy_axes.plot(
                best["epoch"],
                best[f"valid_{score}"],
                "*",
                color=color,
                markersize=16,
                markeredgecolor="black",
                zorder=3,
            )
    regression = any(m.get("task") == "regression" for _, m in runs)
    distilled = any(m.get("teacher") for _, m in runs)
    loss_axes.set(
        title="Loss per epoch",
        xlabel="epoch",
        ylabel=(
            "mean loss per text\n(cross-entropy; regression: squared error)"
            if regression
            else "cross-entropy (mean per review)"
        )
        + "\ndistilled runs' training: the distillation loss" * distilled,
    )
    accuracy_axes.set(
        title="Accuracy per epoch (★ best epoch, the saved model)",
        xlabel="epoch",
        ylabel="accuracy (regression: Pearson correlation)" if regression else "accuracy",
    )
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = loss_axes.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=columns, frameon=False)
    figure.tight_layout(rect=(0, 0.25 * legend_rows / height, 1, 1))
    return figure


def plot(runs, output):
    """figure_of(runs) as a PNG (or any format matplotlib writes) at output."""
    import matplotlib.pyplot as plt

    figure = figure_of(runs)
    output = Path(output)
    atomic_write(output, lambda f: figure.savefig(f, format=output.suffix.lstrip(".") or "png"))
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="OUT_DIR of a finished run (or its metrics.json)")
    parser.add_argument("--output", help="draw the learning curves into this PNG")
    parser.error = lambda message: sys.exit(f"error: {message}")  # one line and exit 1, like every other error
    args = parser.parse_args(argv)
    try:
        if args.output:  # before anything is drawn or written
            from matplotlib.backend_bases import FigureCanvasBase

            kind, known = Path(args.output).suffix.lstrip(".").lower(), FigureCanvasBase.get_supported_filetypes()
            if kind and kind not in known:
                raise RecipeError(
                    f"--output {args.output}: matplotlib cannot write .{kind} files; use one of "
                    f"{', '.join('.' + k for k in sorted(known))}"
                )
        runs = [load(path) for path in args.runs]
        print(table(runs))
        if args.output:
            plot(runs, args.output)
            print(f"wrote {args.output}", file=sys.stderr)
    except RecipeError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
