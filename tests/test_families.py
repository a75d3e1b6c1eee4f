"""Every checkpoint family users pick, as tiny random checkpoints laid out like the real ones (tests/families.py):
each trains with train_distilbert.py, LR_DECAY groups its parameters by depth, predict.py reproduces the run's test
accuracy, and pipeline() classifies a text longer than MAX_LENGTH from the saved folder."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import cli, make_reviews, write_csv
from families import FAMILIES, TEXTS, save_family
from safetensors.torch import load_file
from test_distributed import close, torchrun
from test_reliability import fails
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

import predict
import train_distilbert as td

ROOT = Path(__file__).resolve().parents[1]
DECODERS = ("gpt2", "llama", "qwen")
# the parameters below the lowest layer, which LR_DECAY gives the smallest learning rate: the embeddings and what acts
# like them (ELECTRA's projection of its narrower embeddings, relative position embeddings and their norm)
BOTTOM = {
    "bert": ["bert.embeddings."],
    "distilbert": ["distilbert.embeddings."],
    "roberta": ["roberta.embeddings."],
    "xlm-roberta": ["roberta.embeddings."],
    "electra": ["electra.embeddings.", "electra.embeddings_project."],
    "mpnet": ["mpnet.embeddings.", "mpnet.encoder.relative_attention_bias."],
    "deberta-v2": ["deberta.embeddings.", "deberta.encoder.rel_embeddings.", "deberta.encoder.LayerNorm."],
    "modernbert": ["model.embeddings."],
    "gpt2": ["transformer.wte.", "transformer.wpe."],
    "llama": ["model.embed_tokens."],
    "qwen": ["model.embed_tokens."],
}
LAYERS = {
    "distilbert": "distilbert.transformer.layer.",
    "modernbert": "model.layers.",
    "llama": "model.layers.",
    "qwen": "model.layers.",
    "gpt2": "transformer.h.",
    "xlm-roberta": "roberta.encoder.layer.",
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("families")
    return {name: save_family(name, folder / name) for name in FAMILIES}


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    return write_csv(make_reviews(300, seed=21), tmp_path_factory.mktemp("data") / "reviews.csv")


def settings(tmp_path, model, csv, **overrides):
    return {
        "data_url": csv,
        "data_dir": tmp_path / "data",
        "model_name": model,
        "train_size": 200,
        "valid_size": 50,
        "test_size": 50,
        "max_length": 32,
        "head_tokens": 8,
        "epochs": 1,
        "learning_rate": 3e-3,
        "lr_decay": 0.8,
        "tensorboard": False,
        "out_dir": tmp_path / "out",
        **overrides,
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_predicts_and_reloads(tmp_path, checkpoints, reviews, family, capsys):
    s = settings(tmp_path, checkpoints[family], reviews)
    if family == "albert":  # its layers share one set of weights: LR_DECAY is refused with that reason
        fails(
            td,
            cli(**s),
            "LR_DECAY (--lr-decay) gives each layer its own learning rate, but "
            "AlbertForSequenceClassification shares one set of weights among all its layers (ALBERT)",
        )
        s["lr_decay"] = 1.0
    metrics = td.main(cli(**s))
    eager = family in ("mpnet", "deberta-v2")  # transformers has no SDPA for them: its default, eager, runs
    assert f"| {'eager' if eager else 'sdpa'} attention" in capsys.readouterr().out
    assert metrics["examples"] == {"train": 200, "valid": 50, "test": 50}

    # predict.py: the run's own tokenizer, truncation and batches give the run's test accuracy exactly
    test = pd.read_csv(reviews).iloc[250:]
    run = predict.Run(tmp_path / "out", torch.device("cpu"))
    logits = run.logits(test["review"].tolist(), 16)
    assert (logits.argmax(-1).numpy() == test["sentiment"].to_numpy()).mean() == metrics["test_accuracy"]

    # pipeline() on the saved folder: a pad token where the checkpoint had none, a batch padded like predict.py's
    folder = str(tmp_path / "out" / "model")
    config = AutoModelForSequenceClassification.from_pretrained(folder).config
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.pad_token is not None and config.pad_token_id == tokenizer.pad_token_id
    if family in ("gpt2", "llama"):  # no pad token in the checkpoint: its end-of-text token pads
        assert tokenizer.pad_token == tokenizer.eos_token
    classify = pipeline("text-classification", model=folder, truncation=True, device="cpu")
    short = [text for text in test["review"] if "<br" not in text][:6]  # within MAX_LENGTH: nothing cut
    short = [text for text in short if len(tokenizer(text)["input_ids"]) <= 32]
    scores = [p["score"] for p in classify(short, batch_size=len(short))]
    fp32 = predict.Run(tmp_path / "out", torch.device("cpu"), "fp32")  # as pipeline computes, also where bf16 is native
    assert scores == pytest.approx(fp32.logits(short, 16).softmax(-1).max(-1).values.tolist(), abs=1e-5)
    long = " ".join(TEXTS[:40])  # far over MAX_LENGTH (and over what ModernBERT, Llama and Qwen could read at once)
    assert len(tokenizer(long)["input_ids"]) > 300
    assert classify(long)[0]["label"] in ("negative", "positive")


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "albert"])
def test_lr_decay_gives_each_layer_its_depth(checkpoints, family):
    """The head and final norm at the full rate, layer N at 0.5 ** (top - N), the embeddings and everything that acts
    like them at 0.5 ** (top + 1): the named parameters below, which an encoder.layer.N-only rule put at the head's."""
    model = AutoModelForSequenceClassification.from_pretrained(checkpoints[family])
    rate = {id(p): group["lr"] for group in td.parameter_groups(model, 1.0, 0.01, 0.5) for p in group["params"]}
    layer = LAYERS.get(family, f"{model.base_model_prefix}.encoder.layer.")
    for name, p in model.named_parameters():
        if name.startswith(layer):
            expected = 0.5 ** (1 - int(name[len(layer)]))  # 2 layers: 0 and 1 (the top)
        else:
            expected = 0.25 if name.startswith(tuple(BOTTOM[family])) else 1.0
        assert rate[id(p)] == expected, name
    assert sorted(set(rate.values())) == [0.25, 0.5, 1.0]


def test_lr_decay_names_a_model_without_layers():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2))
    with pytest.raises(
        td.RecipeError,
        match=r"Sequential has no layers named like encoder.layer.N, layers.N or h.N; "
        r"use --lr-decay 1",
    ):
        td.parameter_groups(model, 1e-3, 0.01, 0.9)
    assert len(td.parameter_groups(model, 1e-3, 0.01, 1.0)) == 2  # off: any model


def test_head_and_tail_keep_each_tokenizers_own_special_tokens(checkpoints):
    """[CLS] first and [SEP] last (BERT), <s> ... </s> (RoBERTa), <|begin_of_text|> first (Llama), none (GPT-2):
    head+tail keeps what the tokenizer puts before and after a text, HEAD_TOKENS of its start, and its end."""
    text = " ".join(f"w{i}" for i in range(60))
    for family in ("bert", "roberta", "llama", "gpt2", "qwen"):
        tokenizer = AutoTokenizer.from_pretrained(checkpoints[family])
        full = tokenizer(text)["input_ids"]
        bare = tokenizer(text, add_special_tokens=False)["input_ids"]
        before = full.index(bare[0])
        ids, _offsets, _ = td.tokenize([text], tokenizer, 20, "head+tail", head_tokens=5)
        kept = ids.tolist()
        assert (
            len(kept) == 20
            and kept[: before + 5] == full[: before + 5]
            and kept[before + 5 :] == full[-(15 - before) :]
        )


def test_max_length_is_what_the_checkpoint_reads(tmp_path, checkpoints, reviews):
    """RoBERTa, XLM-R and MPNet reserve two of their 514 positions (514 crashed in the first batch); the tokenizer's
    own model_max_length is a limit too; within them a run starts."""
    for family in ("roberta", "xlm-roberta", "mpnet"):
        fails(
            td,
            cli(**settings(tmp_path, checkpoints[family], reviews, max_length=513)),
            "MAX_LENGTH (--max-length) is 513",
            "reads at most 512 tokens (514 position embeddings, 2 of them reserved)",
        )
    short = tmp_path / "short"
    AutoModelForSequenceClassification.from_pretrained(checkpoints["bert"]).save_pretrained(short)
    AutoTokenizer.from_pretrained(checkpoints["bert"], model_max_length=128).save_pretrained(short)
    fails(
        td,
        cli(**settings(tmp_path, short, reviews, max_length=256)),
        "reads at most 128 tokens (its tokenizer's model_max_length",
    )
    metrics = td.main(
        cli(
            **settings(
                tmp_path,
                checkpoints["roberta"],
                reviews,
                max_length=512,
                lr_decay=1.0,
                train_size=40,
                valid_size=20,
                test_size=20,
            )
        )
    )
    assert metrics["settings"]["MAX_LENGTH"] == 512


def spm_only(folder, path):
    """A DeBERTa-v3 folder as the hub ships it: the SentencePiece model spm.model, no tokenizer.json."""
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS),
        model_writer=model,
        vocab_size=200,
        hard_vocab_limit=False,
        minloglevel=2,
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        pad_piece="[PAD]",
        bos_piece="[CLS]",
        eos_piece="[SEP]",
        unk_piece="[UNK]",
        user_defined_symbols=["[MASK]"],
    )
    config = json.loads((Path(folder) / "tokenizer_config.json").read_text())
    path.mkdir()
    (path / "spm.model").write_bytes(model.getvalue())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "DebertaV2Tokenizer"}))
    AutoModelForSequenceClassification.from_pretrained(folder).save_pretrained(path)


def test_a_sentencepiece_folder_trains_and_without_the_package_says_what_to_install(tmp_path, checkpoints, reviews):
    folder = tmp_path / "deberta-v3"
    spm_only(checkpoints["deberta-v2"], folder)
    assert not (folder / "tokenizer.json").exists()
    metrics = td.main(cli(**settings(tmp_path, folder, reviews, train_size=40, valid_size=20, test_size=20)))
    assert metrics["test_accuracy"] >= 0
    without = (
        "import sys; sys.modules['sentencepiece'] = None; sys.path.insert(0, sys.argv[1]); "
        "import train_distilbert; train_distilbert.main(sys.argv[2:])"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            without,
            str(ROOT),
            *cli(**settings(tmp_path, folder, reviews, out_dir=tmp_path / "without")),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: the tokenizer of {folder} needs the package sentencepiece, "
        f"which is not installed here: pip install sentencepiece"
    )


def test_gradient_checkpointing_gives_the_same_weights(tmp_path, checkpoints, reviews):
    """Activations recomputed in the backward pass (dropout's draws kept) give the weights of a run without, to
    rounding; a model transformers cannot checkpoint is refused with one line."""
    weights = {}
    for on in (False, True):
        td.main(cli(**settings(tmp_path / str(on), checkpoints["bert"], reviews, gradient_checkpointing=on)))
        weights[on] = load_file(tmp_path / str(on) / "out" / "model" / "model.safetensors")
    assert max((weights[True][k] - weights[False][k]).abs().max().item() for k in weights[True]) < 1e-5
    moved = max(
        (weights[True][k] - load_file(checkpoints["bert"] / "model.safetensors")[k]).abs().max().item()
        for k in weights[True]
        if not k.startswith("classifier")
    )
    assert moved > 1e-3  # the runs trained: the comparison means something
    fails(
        td,
        cli(**settings(tmp_path, checkpoints["mpnet"], reviews, gradient_checkpointing=True)),
        "MPNetForSequenceClassification does not support gradient checkpointing in transformers; use "
        "--gradient-checkpointing false",
    )


@pytest.mark.parametrize("family", ["modernbert", "qwen"])
def test_an_encoder_and_a_decoder_under_torchrun_match_one_process(tmp_path, checkpoints, reviews, family):
    s = settings(tmp_path, checkpoints[family], reviews, eval_batch_size=16, precision="fp32")  # bf16 rounds apart
    single = td.main(cli(**s))
    done = torchrun("train_distilbert.py", cli(**{**s, "out_dir": tmp_path / "ddp"}))
    assert done.returncode == 0, done.stderr[-3000:]
    close(single, json.loads((tmp_path / "ddp" / "metrics.json").read_text()))
    assert re.search(r"\| sdpa attention", done.stdout)
