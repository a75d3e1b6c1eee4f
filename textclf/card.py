"""The model card (README.md) of a finished run's model folder, as the Hugging Face hub shows it: metadata and the
evaluation results (model-index) by huggingface_hub, then what was trained on what, how, how well, and how to use it."""

import re
import urllib.parse
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .parallel import cpu_name
from .settings import is_url
from .student import described


def file_name(url):
    """The file name of a data path or URL, as the card names the data."""
    return Path(urllib.parse.urlparse(url).path if is_url(url) else url).name


def number(value):
    return "undefined" if value is None else f"{value:.4f}"


def row(cells):
    """A markdown table row; a | in a label is escaped."""
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def shown_scores(test):
    """A split's headline scores in words, for the card's prose."""
    keys = ("accuracy", "macro_f1", "macro_roc_auc", "pearson", "spearman", "rmse")
    return ", ".join(f"{key.replace('_', ' ')} {test[key]:.4f}" for key in keys if test.get(key) is not None)


def table(header, rows):
    return "\n".join([row(header), "|---" * len(header) + "|", *map(row, rows)])


def model_card(metrics, folder):
    """metrics.json's numbers as a ModelCard: base_model (a hub name), labels, test accuracy, macro-F1 or ROC AUC."""
    s, test, multi, names = metrics["settings"], metrics["test"], metrics["multi_label"], metrics["labels"]
    regression = metrics.get("task") == "regression"
    data = file_name(s["DATA_URL"])
    tested = file_name(s.get("TEST_URL") or s["DATA_URL"])  # TEST_URL: its own file
    name = Path(s["OUT_DIR"]).resolve().name  # --out-dir . is named too
    if regression:
        measured = [
            ("pearsonr", "Pearson correlation", test["pearson"]),
            ("spearmanr", "Spearman correlation", test["spearman"]),
            ("rmse", "RMSE", test["rmse"]),
        ]
    else:
        second = ("roc_auc", "macro ROC AUC", test["macro_roc_auc"]) if multi else ("f1", "macro-F1", test["macro_f1"])
        measured = [("accuracy", "exact-match accuracy" if multi else "accuracy", test["accuracy"]), second]
    results = [
        EvalResult(
            task_type="text-classification",
            dataset_type=tested,
            dataset_name=tested,
            dataset_split="test",
            metric_type=kind,
            metric_name=name,
            metric_value=value,
        )
        for kind, name, value in measured
        if value is not None
    ]
    hub_name = not Path(s["MODEL_NAME"]).exists() and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", s["MODEL_NAME"])
    card = ModelCardData(
        base_model=s["MODEL_NAME"] if hub_name else None,
        pipeline_tag="text-classification",
        library_name="transformers",
        tags=["text-classification"],
        labels=names,
        model_name=name,
        eval_results=results,
    )
    ex, order = metrics["examples"], "shuffled with SEED" if s["SHUFFLE"] else "in file order"
    device = metrics["device"] if metrics["device"] != "cpu" else f"CPU ({cpu_name() or 'model unknown'})"
    processes = f" x {metrics['world_size']}" if metrics["world_size"] > 1 else ""
    settings = [
        "MODEL_NAME",
        "MAX_LENGTH",
        "TRUNCATION",
        "HEAD_TOKENS",
        "EPOCHS",
        "BATCH_SIZE",
        "GRAD_ACCUM_STEPS",
        "LEARNING_RATE",
        "WARMUP_RATIO",
        "WEIGHT_DECAY",
        "LR_DECAY",
        "GRAD_CLIP",
        "PATIENCE",
        "SEED",
        "TASK",
        "CLASS_WEIGHTS",
    ]
    if s.get("LORA_RANK"):  # adapters trained on a frozen base, then merged into it
        settings[1:1] = ["LORA_RANK", "LORA_ALPHA", "LORA_DROPOUT"]
    if s.get("STUDENT_LAYERS"):  # a student of MODEL_NAME's own layers
        settings[1:1] = ["STUDENT_LAYERS"]
    if s.get("TEACHER"):  # distilled
        settings += ["TEACHER", "UNLABELED_URL", "DISTILL_ALPHA", "DISTILL_TEMPERATURE", "DISTILL_AUGMENT"]
        settings += ["DISTILL_HIDDEN"] * bool(s.get("DISTILL_HIDDEN"))
    pair = len([c for c in s["TEXT_COLUMN"].split(",") if c.strip()]) > 1
    if pair:  # a pair is cut longest first; TRUNCATION and HEAD_TOKENS are for single texts
        settings = [k for k in settings if k not in ("TRUNCATION", "HEAD_TOKENS")]
    columns = (
        ("train_loss", "train_rmse", "valid_loss", "valid_pearson")
        if regression
        else ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy")
    )
    epochs = [(e["epoch"], *(number(e[k]) for k in columns), f"{e['seconds']:.1f}") for e in metrics["epochs"]]
    confusion = (
        ""
        if multi or regression
        else "Rows: the true class; columns: the predicted one.\n\n"
        + table(
            ["true \\ predicted", *names],
            [(name, *counts) for name, counts in zip(names, test["confusion_matrix"], strict=True)],
        )
        if len(names) <= 20
        else f"The confusion matrix of the {len(names)} classes is in the run's metrics.json."
    )
    example = (
        '{"text": "A man is playing a guitar.", "text_pair": "A person plays music."}'
        if pair
        else '"A wonderful, moving film."'
    )
    if pair:  # the tokenizer's pair template, the longer text cut first; predict.py reads a tab between the two
        use = (
            f"`truncation=True` cuts a pair to the {s['MAX_LENGTH']} tokens the model trained on, the longer text "
            f"first (`longest_first`), as training did. The run's own preprocessing is predict.py's, a pair a line with "
            f"a tab between its two texts:\n\n```bash\nprintf 'A man is playing a guitar.\\tA person plays music.\\n' "
            f"| python predict.py {s['OUT_DIR']} -\n```"
        )
    else:
        use = (
            f"`truncation=True` cuts a text to the {s['MAX_LENGTH']} tokens the model trained on, keeping its start; "
            f"the run's own preprocessing (its cleaning and {s['TRUNCATION']} truncation) is "
            f'`python predict.py {s["OUT_DIR"]} "a text"`.'
        )
    teacher = metrics.get("teacher")
    taught = ""
    if teacher:  # distilled: the teacher's soft targets on the training texts and any unlabelled ones
        agreement = number(teacher["agreement"])
        augmented = teacher.get("augmented_texts", 0)
        unlabelled = teacher["transfer_texts"] - augmented
        taught = (
            f"\nDistilled from `{teacher['name']}` (DISTILL_ALPHA {s['DISTILL_ALPHA']}, DISTILL_TEMPERATURE "
            f"{s['DISTILL_TEMPERATURE']}): its soft targets on the {teacher['labelled_texts']:,} training texts"
            + f", on {unlabelled:,} unlabelled texts from `{file_name(s['UNLABELED_URL'])}`"
            * bool(unlabelled)
            + f", on {augmented:,} augmented copies of the training texts (DISTILL_AUGMENT "
            f"{s.get('DISTILL_AUGMENT')}: words masked or replaced, n-gram windows)"
            * bool(augmented)
            + f". On the test texts the teacher scores {shown_scores(teacher['test'])}; the student agrees with it on "
            f"{agreement}.\n"
        )
    made = metrics.get("student")
    if made:  # STUDENT_LAYERS: a smaller model of MODEL_NAME's own layers
        taught += (
            f"\nA student made of {described(made)}, with its embeddings and head, as DistilBERT was made from BERT "
            f"(Sanh et al. 2019); `config.json` holds its {len(made['layers'])} layers.\n"
        )
    if regression:
        task = f"regression (a {names[0]} score)"
        headline = ", ".join(f"{name} {number(value)}" for _, name, value in measured)
    else:
        task = f"{'multi' if multi else 'single'}-label text classification ({', '.join(names)})"
        headline = f"Accuracy {test['accuracy']:.4f}, {second[1]} {number(second[2])}"
    body = f"""# {name}

`{s["MODEL_NAME"]}` fine-tuned for {task}{" of sentence pairs" * pair} by `train_distilbert.py`.

## Training data

`{data}`{f" and `{tested}`" * (tested != data)}: {ex["train"]:,} training, {ex["valid"]:,} validation and {
        ex["test"]:,} test texts (`{s["TEXT_COLUMN"]}`,
labels from `{s["LABEL_COLUMNS"]}`), split {order}.
{taught}
## Settings

{
        table(
            ["setting", "value"],
            [(f"`{k}`", s[k]) for k in settings if k in s] + [("precision", metrics.get("precision"))],
        )
    }

## Training

{
        table(
            [
                "epoch",
                "train distillation loss" if teacher else "train loss",
                "train RMSE" if regression else "train accuracy",
                "valid loss",
                "valid Pearson" if regression else "valid accuracy",
                "seconds",
            ],
            epochs,
        )
    }

The model is epoch {metrics["best_epoch"]}'s, the best on validation. Trained in {metrics["train_seconds"]:.1f} s on
{device}{processes}.

## Test

{headline} on the {ex["test"]:,} test texts of `{tested}`.

{confusion}

## Use

```python
from transformers import pipeline
classify = pipeline("text-classification", model="{folder}", truncation=True)  # or the name you upload it as
classify({example})
```

{use}
"""
    return ModelCard(f"---\n{card.to_yaml()}\n---\n\n{body}")


def adapter_card(metrics, folder, pad_token_id=None, base_head=False):
    """The model card of a LoRA run's adapter folder, as the hub expects a peft adapter's: library_name peft, the base
    model, the test scores, and code that loads it and classifies a padded batch as written: with the run's labels
    (the base's own config has other ones), pad_token_id where the base has none (GPT-2, Llama, Qwen) and
    ignore_mismatched_sizes where the base has a head of its own (base_head), which the adapter's replaces."""
    s, names = metrics["settings"], metrics["labels"]
    hub_name = not Path(s["MODEL_NAME"]).exists() and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", s["MODEL_NAME"])
    data = ModelCardData(
        base_model=s["MODEL_NAME"] if hub_name else None,
        library_name="peft",
        pipeline_tag="text-classification",
        tags=["text-classification", "lora", "peft"],
    )
    problem = {"regression": "regression", "multi_label": "multi_label_classification"}.get(
        metrics.get("task"), "single_label_classification"
    )
    labels = {i: name for i, name in enumerate(names)}
    test = metrics["test"]
    shown = ", ".join(
        f"{key} {test[key]:.4f}"
        for key in ("accuracy", "macro_f1", "macro_roc_auc", "pearson", "spearman")
        if test.get(key) is not None
    )
    extra = f", pad_token_id={pad_token_id}" * (pad_token_id is not None) + ", ignore_mismatched_sizes=True" * base_head
    pair = len([c for c in s["TEXT_COLUMN"].split(",") if c.strip()]) > 1
    example = (
        '["A man is playing a guitar.", "A dog runs."], ["A person plays music.", "A cat sleeps."]'
        if pair
        else '["A wonderful, moving film.", "Dull."]'
    )
    local = (
        f"\nThe base model is the local folder `{s['MODEL_NAME']}` (`base_model_name_or_path` in "
        f"`adapter_config.json`): elsewhere, set that to where the base model is there, or its hub name.\n"
        if not hub_name
        else ""
    )
    body = f"""# {Path(s["OUT_DIR"]).resolve().name}: LoRA adapter

LoRA adapters of rank {s["LORA_RANK"]} (alpha {s["LORA_ALPHA"]}, dropout {s["LORA_DROPOUT"]}) on every linear layer of
`{s["MODEL_NAME"]}`, and its classification head, trained by `train_distilbert.py`: {shown} on the
{metrics["examples"]["test"]:,} test texts. The whole model, adapters merged, is the run's `model/` folder beside this one.

```python
from peft import AutoPeftModelForSequenceClassification
from transformers import AutoTokenizer

model = AutoPeftModelForSequenceClassification.from_pretrained(
    "{folder}", num_labels={len(names)}, id2label={labels}, problem_type="{problem}"{extra})
tokenizer = AutoTokenizer.from_pretrained("{folder}")
batch = tokenizer({example}, padding=True, truncation=True, return_tensors="pt")
logits = model(**batch).logits
```
{local}"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
