"""STUDENT_LAYERS (textclf/student.py): a student of N of a checkpoint's own layers, for every family the training
script takes. Tiny random checkpoints of 4 layers (each family's tiny one of tests/families.py, deepened): the student's
layers are the source's, its config says N, it trains, saves and loads as any checkpoint; ModernBERT's and the decoders'
students equal a model built by hand from those layers; and one line for each bad input."""

import json

import pytest
import torch
from conftest import make_reviews, write_csv
from families import save_family
from test_reliability import distilbert_args, fails
from test_tasks import make_pairs
from test_training import comparable, interrupt_at
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, pipeline

import train_distilbert as td
from textclf.student import evenly_spaced, layer_list, student_of

FAMILIES = ["bert", "distilbert", "roberta", "electra", "mpnet", "deberta-v2", "modernbert", "gpt2", "llama", "qwen"]


def deeper(family, path, layers=4):
    """The family's tiny checkpoint with `layers` layers, their attention types by the family's own rule (ModernBERT:
    global every second layer, so layers 0 and 2 are both global), its random weights from a fixed seed."""
    source = save_family(family, path / "source")
    config = AutoConfig.from_pretrained(source)
    values = {**config.to_dict(), "num_hidden_layers": layers}
    if "layer_types" in values:
        values["layer_types"] = None  # drawn again for the new depth, by the family's rule
    config = type(config)(**values)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(path / "deep")
    AutoTokenizer.from_pretrained(source).save_pretrained(path / "deep")
    return path / "deep"


def classifier(folder):
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
    if model.config.pad_token_id is None:  # GPT-2 and Llama pad with their end-of-text token, as the script does
        model.config.pad_token_id = model.config.eos_token_id
    return model


def padded_batch(folder):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer(["a great film", "the plot was dull and the actor was awful"], padding=True, return_tensors="pt")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_student_keeps_evenly_spaced_layers_of_every_family(tmp_path, family):
    source = classifier(deeper(family, tmp_path))
    student = student_of(source, 2, family)
    assert student.config.num_hidden_layers == 2 and student.student == {"of": family, "layers": [0, 2], "of_layers": 4}
    path = layer_list(source, family)
    ours, theirs = student.state_dict(), source.state_dict()
    for key, value in ours.items():  # every weight is the source's: a kept layer's from its place in the source
        if key.startswith(f"{path}."):
            index = int(key[len(path) + 1 :].split(".")[0])
            key = key.replace(f"{path}.{index}.", f"{path}.{[0, 2][index]}.", 1)
        assert torch.equal(value, theirs[key]), key
    batch = padded_batch(tmp_path / "deep")
    student.train()  # it trains: one AdamW step on a padded batch moves every kept layer's weights
    before = {key: value.clone() for key, value in student.state_dict().items() if key.startswith(f"{path}.1.")}
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    student(**batch, labels=torch.tensor([1, 0])).loss.backward()
    optimizer.step()
    moved = [key for key, value in before.items() if not torch.equal(value, student.state_dict()[key])]
    assert moved, "no weight of the student's second layer moved"
    student.save_pretrained(tmp_path / "student")
    reloaded = classifier(tmp_path / "student")
    assert AutoConfig.from_pretrained(tmp_path / "student").num_hidden_layers == 2
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, student.eval()(**batch).logits)


@pytest.mark.parametrize("family", ["modernbert", "gpt2", "llama", "qwen"])
def test_modernbert_and_decoder_students_equal_a_model_built_by_hand(tmp_path, family):
    """By hand: the source's config with 2 layers, their attention types written out (ModernBERT: layers 0 and 2 are
    both global), and each kept layer's weights loaded into its new place (the decoders' layers renumbered)."""
    source = classifier(deeper(family, tmp_path))
    config = AutoConfig.from_pretrained(tmp_path / "deep", num_labels=2)
    config.pad_token_id = source.config.pad_token_id
    config.num_hidden_layers = 2
    if getattr(source.config, "layer_types", None):
        config.layer_types = [source.config.layer_types[0], source.config.layer_types[2]]
    if family == "modernbert":
        assert config.layer_types == ["full_attention", "full_attention"]
    hand = type(source)(config).eval()
    hand.load_state_dict(source.state_dict(), strict=False)  # embeddings, norms, head; layers 0 and 1 for now
    path = layer_list(source, family)
    hand_layers, source_layers = hand.get_submodule(path), source.get_submodule(path)
    hand_layers[1].load_state_dict(source_layers[2].state_dict())
    student = student_of(source, 2, family).eval()
    batch = padded_batch(tmp_path / "deep")
    with torch.no_grad():
        torch.testing.assert_close(student(**batch).logits, hand(**batch).logits)


def test_evenly_spaced_layers_are_distilberts():
    assert evenly_spaced(12, 6) == [0, 2, 4, 6, 8, 10] and evenly_spaced(6, 3) == [0, 2, 4]
    assert evenly_spaced(4, 4) == [0, 1, 2, 3] and evenly_spaced(5, 2) == [0, 2]


@pytest.mark.parametrize("variant", ["plain", "lora-pairs"])
def test_a_student_trains_saves_and_loads_with_from_pretrained(tmp_path, variant, capsys):
    deep = deeper("bert", tmp_path)
    if variant == "plain":
        data = write_csv(make_reviews(1_000, seed=5), tmp_path / "reviews.csv")
        extra = {}
    else:
        data = write_csv(make_pairs(1_000, seed=5), tmp_path / "pairs.csv")
        extra = {"text_column": "sentence1,sentence2", "label_columns": "judgment", "lora_rank": 4}
    metrics = td.main(distilbert_args(tmp_path, data, deep, student_layers=2, tensorboard=False, **extra))
    assert metrics["student"] == {"of": "deep", "layers": [0, 2], "of_layers": 4}
    assert "student: 2 of deep's 4 layers (0, 2)" in capsys.readouterr().out
    config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    labels = len(metrics["labels"])
    whole = AutoModelForSequenceClassification.from_pretrained(deep, num_labels=labels, ignore_mismatched_sizes=True)
    assert metrics["parameters"] < sum(p.numel() for p in whole.parameters())
    card = (tmp_path / "out" / "model" / "README.md").read_text()
    assert "A student made of 2 of deep's 4 layers (0, 2)" in card and "| `STUDENT_LAYERS` | 2 |" in card
    classify = pipeline("text-classification", model=str(tmp_path / "out" / "model"))
    assert classify("a great film")[0]["label"] in metrics["labels"]
    # a later STUDENT_LAYERS reads the student: one of its two layers
    again = td.main(
        distilbert_args(
            tmp_path, data, tmp_path / "out" / "model", student_layers=1, out_dir=tmp_path / "again", epochs=1, **extra
        )
    )
    assert again["student"] == {"of": "out/model", "layers": [0], "of_layers": 2}


def test_a_students_run_resumes_to_the_uninterrupted_numbers(tmp_path, monkeypatch):
    deep = deeper("bert", tmp_path)
    data = write_csv(make_reviews(1_000, seed=6), tmp_path / "reviews.csv")
    settings = {"student_layers": 2, "tensorboard": False, "precision": "fp32"}
    straight = td.main(distilbert_args(tmp_path, data, deep, out_dir=tmp_path / "straight", **settings))
    interrupt_at(td, monkeypatch, "batch_loss", 20)
    with pytest.raises(SystemExit):
        td.main(distilbert_args(tmp_path, data, deep, out_dir=tmp_path / "resumed", **settings))
    monkeypatch.undo()
    resumed = td.main([f"--out-dir={tmp_path / 'resumed'}", "--resume"])
    assert comparable(resumed) == comparable(straight)


def test_bad_student_settings_are_one_line(tmp_path):
    data = write_csv(make_reviews(1_000, seed=7), tmp_path / "reviews.csv")
    deep = deeper("bert", tmp_path)
    albert = save_family("albert", tmp_path / "albert")
    fails(td, distilbert_args(tmp_path, data, deep, student_layers=-1), "STUDENT_LAYERS (--student-layers) must be 0")
    fails(td, distilbert_args(tmp_path, data, deep, student_layers=5), "is 5, but deep has 4 layers")
    fails(
        td,
        distilbert_args(tmp_path, data, albert, student_layers=1),
        "(ALBERT) shares one set of weights among all its layers",
    )
    assert not (tmp_path / "out" / "model").exists() and not (tmp_path / "out" / "checkpoint.pt").exists()
