"""TRUNCATION head+tail and LR_DECAY (Sun et al. 2019): exact token ids, exact learning rates, and a run in which
only the end of each review tells its label."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import NEGATIVE, NEUTRAL, POSITIVE, cli, write_csv
from test_reliability import distilbert_args, fails
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

import predict
import train_distilbert as td

WORDS = NEUTRAL + POSITIVE + NEGATIVE  # each one WordPiece token of the tiny vocabulary


@pytest.mark.parametrize("words", [5, 6, 7, 8, 30])  # 2 special tokens + words: under, at, just over, far over 8
def test_head_and_head_tail_truncation_keep_the_exact_tokens(tiny_model, words):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    text = " ".join(WORDS[i % len(WORDS)] for i in range(words))
    full = tokenizer(text)["input_ids"]  # [CLS] w1 ... wn [SEP]
    assert len(full) == words + 2

    def tokens(truncation, head_tokens=0):
        ids, offsets, _ = td.tokenize([text], tokenizer, 8, truncation, head_tokens)
        return ids[offsets[0] : offsets[1]].tolist()

    if len(full) <= 8:  # at or under the limit nothing changes
        assert tokens("head") == tokens("head+tail", 3) == full
    else:
        assert tokens("head") == full[:7] + full[-1:]
        assert tokens("head+tail", 3) == full[: 1 + 3] + full[-(8 - 1 - 3) :]  # [CLS] 3 first, 3 last, [SEP]
        assert tokens("head+tail", 0) == full[:1] + full[-7:]  # tail only
        assert tokens("head+tail", 6) == tokens("head")  # all but [SEP] from the head: plain head truncation


def test_head_tail_has_its_own_token_cache(tmp_path, tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    texts = [" ".join(WORDS)] * 3
    head = td.cached_token_ids(texts, tokenizer, 8, tmp_path, "sha")
    both = td.cached_token_ids(texts, tokenizer, 8, tmp_path, "sha", "head+tail", 3)
    assert len(list(tmp_path.glob("tokens-*.pt"))) == 2
    assert head[0].tolist() != both[0].tolist()
    again = td.cached_token_ids(texts, tokenizer, 8, tmp_path, "sha", "head+tail", 3)
    assert again[0].tolist() == both[0].tolist() and len(list(tmp_path.glob("tokens-*.pt"))) == 2


def rates(groups):
    """{parameter id: (learning rate, weight decay)} of AdamW parameter groups, each parameter in one group."""
    seen = {}
    for group in groups:
        for p in group["params"]:
            assert id(p) not in seen
            seen[id(p)] = (group["lr"], group["weight_decay"])
    return seen


@pytest.mark.parametrize("family", ["distilbert", "bert"])
def test_layer_wise_learning_rates(family):
    if family == "distilbert":
        model = DistilBertForSequenceClassification(
            DistilBertConfig(vocab_size=50, dim=16, n_layers=3, n_heads=2, hidden_dim=32)
        )
        layer = "distilbert.transformer.layer."
    else:
        model = BertForSequenceClassification(
            BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32)
        )
        layer = "bert.encoder.layer."
    seen = rates(td.parameter_groups(model, 1e-3, 0.01, 0.9))
    named = dict(model.named_parameters())
    assert len(seen) == len(named)
    for name, p in named.items():
        lr, weight_decay = seen[id(p)]
        expected = (
            1e-3 * 0.9**3
            if ".embeddings." in name
            # below the lowest of 3 layers
            else 1e-3 * 0.9 ** (2 - int(name[len(layer)]))
            if name.startswith(layer)
            else 1e-3
        )  # head, pooler
        assert lr == pytest.approx(expected, rel=1e-12), name
        assert weight_decay == (0.01 if p.ndim >= 2 else 0.0), name
    assert seen[id(named["classifier.weight"])][0] == 1e-3
    assert (
        seen[
            id(
                named[
                    layer + "2.output_layer_norm.weight" if family == "distilbert" else layer + "2.output.dense.weight"
                ]
            )
        ][0]
        == 1e-3
    )  # the top layer: the full rate

    off = td.parameter_groups(model, 1e-3, 0.01, 1.0)  # off: the two groups of before, matrices first
    assert [(g["lr"], g["weight_decay"]) for g in off] == [(1e-3, 0.01), (1e-3, 0.0)]
    assert [p.ndim >= 2 for p in off[0]["params"]] == [True] * len(off[0]["params"])


@pytest.mark.parametrize(
    "override, message",
    [
        ({"lr_decay": 0}, "LR_DECAY (--lr-decay) must be in (0, 1], got 0"),
        ({"lr_decay": 1.5}, "LR_DECAY (--lr-decay) must be in (0, 1], got 1.5"),
        ({"truncation": "tail"}, "TRUNCATION (--truncation) must be head or head+tail, got 'tail'"),
        ({"truncation": "head+tail", "head_tokens": 63}, "HEAD_TOKENS (--head-tokens) must be between 0 and"),
    ],
)
def test_bad_accuracy_settings_are_one_line(tmp_path, override, message):
    fails(td, distilbert_args(tmp_path, "http://127.0.0.1:9/never-fetched.csv", **override), message)


def verdict_at_the_end(n, seed):
    """Reviews of 40 neutral words with the sentiment words last: head truncation at 24 tokens never sees them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    reviews = [
        " ".join(list(rng.choice(NEUTRAL, 40)) + list(rng.choice(POSITIVE if label else NEGATIVE, 2)))
        for label in labels
    ]
    return pd.DataFrame({"review": reviews, "sentiment": labels})


def test_head_tail_learns_what_only_the_end_of_a_review_says(tmp_path, tiny_model):
    csv = write_csv(verdict_at_the_end(1_400, seed=3), tmp_path / "reviews.csv")
    common = {
        "data_url": csv.as_uri(),
        "data_dir": tmp_path / "data",
        "model_name": tiny_model,
        "train_size": 1_000,
        "valid_size": 200,
        "test_size": 200,
        "max_length": 24,
        "epochs": 2,
        "learning_rate": 3e-3,
    }
    head = td.main(cli(**common, truncation="head", out_dir=tmp_path / "head"))
    both = td.main(cli(**common, truncation="head+tail", head_tokens=8, out_dir=tmp_path / "both"))
    assert head["test_accuracy"] < 0.65  # it never sees the verdict
    assert both["test_accuracy"] > 0.9
    # the default HEAD_TOKENS (128) leaves no room at MAX_LENGTH 24: a quarter of it, recorded as the run's setting
    default = td.main(cli(**{**common, "epochs": 1}, out_dir=tmp_path / "default"))  # the default: head+tail
    assert default["settings"]["TRUNCATION"] == "head+tail" and default["settings"]["HEAD_TOKENS"] == 6

    test = pd.read_csv(csv).iloc[1_200:]  # predict.py truncates as the run trained
    predict.main([str(tmp_path / "both"), "--input", str(csv), "--output", str(tmp_path / "predicted.csv")])
    predicted = pd.read_csv(tmp_path / "predicted.csv").iloc[1_200:]
    accuracy = (predicted["predicted_label"] == test["sentiment"].map({0: "negative", 1: "positive"})).mean()
    assert (
        accuracy
        == both["test_accuracy"]
        == json.loads((tmp_path / "both" / "metrics.json").read_text())["test_accuracy"]
    )
