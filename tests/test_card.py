"""textclf.card: the model card a DistilBERT run writes into its model folder, read back by huggingface_hub's own
parser with metrics.json's numbers."""

import json

import pytest
from conftest import make_reviews, write_csv
from huggingface_hub import ModelCard
from test_reliability import distilbert_args

import train_distilbert as td
from textclf.card import model_card


def test_a_run_writes_a_model_card_the_hub_reads(tmp_path, tiny_model):
    csv = write_csv(make_reviews(1_000), tmp_path / "reviews.csv")
    td.main(distilbert_args(tmp_path, csv.as_uri(), tiny_model))
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    card = ModelCard.load(tmp_path / "out" / "model" / "README.md")
    data = card.data
    assert data.pipeline_tag == "text-classification" and data.library_name == "transformers"
    assert data.labels == ["negative", "positive"] and data.base_model is None  # a local folder is no hub name
    accuracy, f1 = data.eval_results
    assert (accuracy.metric_type, accuracy.metric_value) == ("accuracy", metrics["test_accuracy"])
    assert (f1.metric_type, f1.metric_value, f1.dataset_name) == ("f1", metrics["test"]["macro_f1"], "reviews.csv")
    import compare

    row = compare.table([("out", metrics)]).splitlines()[-1].split("|")
    assert f"Accuracy {row[-2].strip()}" in card.text  # compare.py's test accuracy, and the card's
    for line in [
        "`reviews.csv`: 600 training, 200 validation and 200 test texts",
        f"| 2 | {metrics['epochs'][1]['train_loss']:.4f} |",
        f"Accuracy {metrics['test_accuracy']:.4f}",
        "| true \\ predicted | negative | positive |",
        'classify = pipeline("text-classification"',
    ]:
        assert line in card.text, line


@pytest.mark.parametrize(
    "name, base",
    [
        ("distilbert-base-uncased", "distilbert-base-uncased"),
        ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
        ("/models/minilm", None),
    ],
)
def test_base_model_is_named_for_hub_models_and_multi_label_reports_roc_auc(tmp_path, name, base):
    metrics = {
        "settings": {**td.DEFAULTS, "MODEL_NAME": name, "OUT_DIR": "runs/toxic", "DATA_URL": "comments.csv"},
        "labels": ["toxic", "insult"],
        "multi_label": True,
        "device": "NVIDIA H200",
        "world_size": 8,
        "examples": {"train": 8, "valid": 1, "test": 1},
        "best_epoch": 1,
        "train_seconds": 1.0,
        "epochs": [
            {
                "epoch": 1,
                "train_loss": 0.5,
                "train_accuracy": 0.5,
                "valid_loss": 0.5,
                "valid_accuracy": 0.5,
                "seconds": 1.0,
            }
        ],
        "test": {"accuracy": 0.75, "macro_roc_auc": 0.9},
        "precision": "bf16",
    }
    model_card(metrics, tmp_path).save(tmp_path / "README.md")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == base and card.data.model_name == "toxic"
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("accuracy", 0.75), ("roc_auc", 0.9)]
    assert "on\nNVIDIA H200 x 8." in card.text and "true \\ predicted" not in card.text
