"""textclf.regression: a score's head computes in fp32 outside autocast, in training, evaluation and prediction, and a
saved model (a LoRA run's merged model/ too) keeps it in fp32. bf16 runs on this CPU emulated where it has no native
bf16: slower, exact."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cli, make_reviews, write_csv
from safetensors import safe_open

import predict
import train_distilbert as td
from textclf.regression import Fp32Linear, in_fp32, score_layer


def scores_near_1000(n, seed=3):
    """Reviews whose score is 1000 + 3 x the sentiment + noise: bf16 holds a number near 1000 only as a multiple of 4."""
    reviews = make_reviews(n, seed=seed)
    noise = np.random.default_rng(seed).normal(0, 0.3, n)
    return pd.DataFrame({"review": reviews["review"], "score": np.round(1000 + 3 * reviews["sentiment"] + noise, 3)})


def test_the_score_layer_computes_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    with torch.no_grad():
        head[2].bias.fill_(1000.0)
    x = torch.randn(50, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        coarse = head(x).float()
    assert len(set(coarse.squeeze(-1).tolist())) <= 4  # bf16: multiples of 4 (or 8) near 1000
    name, layer = score_layer(head)
    assert name == "2" and layer is head[2]
    in_fp32(head)
    assert isinstance(head[2], Fp32Linear) and list(head[2].state_dict()) == ["weight", "bias"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fine = head(x)
    assert fine.dtype == torch.float32
    assert len(set(fine.squeeze(-1).tolist())) == 50
    with torch.no_grad():  # as fine as the body's bf16 features allow: its own rounding only
        features = head[1](head[0](x.bfloat16().float()).bfloat16().float())
        exact = head[2](features)
    assert torch.allclose(fine, exact, atol=1e-3)


def test_a_model_without_a_one_output_layer_is_left_alone():
    model = torch.nn.Linear(4, 3)
    assert score_layer(model) == (None, None)
    assert in_fp32(model) is model and type(model) is torch.nn.Linear


@pytest.fixture(scope="module")
def scores_csv(tmp_path_factory):
    return write_csv(scores_near_1000(500), tmp_path_factory.mktemp("scores") / "scores.csv")


def regression_run(tmp_path, model, csv, precision, **extra):
    settings = {
        "data_url": csv,
        "data_dir": tmp_path / "data",
        "model_name": model,
        "label_columns": "score",
        "train_size": 300,
        "valid_size": 100,
        "test_size": 100,
        "max_length": 64,
        "epochs": 2,
        "learning_rate": 3e-3,
        "precision": precision,
        "tensorboard": False,
        "out_dir": tmp_path / precision,
        **extra,
    }
    return td.main(cli(**settings))


def test_a_regression_run_in_bf16_scores_as_finely_as_in_fp32(tmp_path, tiny_model, scores_csv):
    """Before, bf16 gave one value for every text (1000 or 1004) and an undefined Pearson."""
    fp32 = regression_run(tmp_path, tiny_model, scores_csv, "fp32")
    bf16 = regression_run(tmp_path, tiny_model, scores_csv, "bf16")
    for split in ("valid", "test"):
        assert bf16[split]["pearson"] is not None
        assert bf16[split]["pearson"] == pytest.approx(fp32[split]["pearson"], abs=0.05)
        assert bf16[split]["rmse"] == pytest.approx(fp32[split]["rmse"], rel=0.02)
    assert fp32["test"]["pearson"] > 0.5  # it learned the sentiment's part of the score
    run = predict.Run(tmp_path / "bf16", torch.device("cpu"), "bf16")
    texts = scores_near_1000(500)["review"].tolist()[400:]
    scores = run.logits(texts, 64)[:, 0]
    assert len(set(scores.tolist())) > 50  # bf16 would round them all to a multiple of 4


def test_a_lora_regression_run_keeps_its_head_in_fp32_in_the_merged_model(tmp_path, tiny_model, scores_csv):
    metrics = regression_run(tmp_path, tiny_model, scores_csv, "bf16", lora_rank=4)
    assert metrics["test"]["pearson"] is not None
    with safe_open(str(tmp_path / "bf16" / "model" / "model.safetensors"), "pt") as f:
        dtypes = {key: f.get_slice(key).get_dtype() for key in f.keys()}  # noqa: SIM118 (a safetensors file)
    assert dtypes["classifier.weight"] == dtypes["classifier.bias"] == "F32"
    assert dtypes["pre_classifier.weight"] == "BF16"  # the body as the run held it
    run = predict.Run(tmp_path / "bf16", torch.device("cpu"), "bf16")
    assert run.model.classifier.weight.dtype == torch.float32
    scores = run.logits(scores_near_1000(500)["review"].tolist()[400:], 64)[:, 0]
    assert len(set(scores.tolist())) > 10  # a head in bf16 gives one value
