"""Fine-tune DistilBERT (or DeBERTa-v3, ModernBERT, RoBERTa, a GPT-2, Llama or Qwen decoder...) on the 50,000 IMDb movie
reviews (or your own texts) with a plain PyTorch training loop.

    python train_distilbert.py                                   # the full recipe: 3 epochs, 512 tokens
    python train_distilbert.py --epochs 1 --max-length 128 --train-size 2000   # a quick run
    python train_distilbert.py --model-name /path/to/model --data-url /path/to/movie_data.csv.gz
    python train_distilbert.py --model-name answerdotai/ModernBERT-base --learning-rate 3e-5   # another checkpoint
    python train_distilbert.py --data-url train.csv --test-url test.csv --text-column body --label-columns queue
                               --shuffle true   # your own data and its test file (README: Your own data)
    python train_distilbert.py --out-dir runs/distilbert --resume          # continue an interrupted run
    torchrun --standalone --nproc_per_node=8 train_distilbert.py         # data-parallel on 8 GPUs, the same recipe

Every UPPER_CASE setting below can be overridden from the shell as --lower-case-name VALUE (or =VALUE);
--help lists them with their defaults. Writes OUT_DIR/metrics.json, OUT_DIR/model/ (the best epoch, loadable
with AutoModelForSequenceClassification.from_pretrained or pipeline("text-classification"), with its model card
README.md) and TensorBoard curves in OUT_DIR/tensorboard/. The training loop is run()'s, top to bottom.
"""

import errno
import hashlib
import importlib.util
import json
import math
import os
import pickle
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    get_linear_schedule_with_warmup,
)

from textclf import distill
from textclf.card import adapter_card, model_card
from textclf.data import BR_TAG
from textclf.lora import Trained, base_dtype, merged, quantization, saved_state, with_adapters
from textclf.metrics import all_logits, batch_loss
from textclf.parallel import accumulating, agreeing, autocast_for, leader_first, run_precision
from textclf.regression import in_fp32, score_layer
from textclf.runfolder import atomic_write, temporary, write_error
from textclf.settings import RecipeError, text_columns
from textclf.student import described, student_of
from textclf.tokens import collate, has_pair_template, model_inputs, reads_segments, tokenize
from textclf.training import Run
from textclf.training import main as run_main

# ----------------------------------------------------------------------------------------------- settings
# one setting a line, its comment beside it however long (--help shows the comments): not reflowed
# fmt: off
# data
DATA_URL = "https://github.com/rasbt/python-machine-learning-book-3rd-edition/raw/master/ch08/movie_data.csv.gz"  # URL (also hf://datasets/OWNER/NAME/FILE) or path: .csv .tsv .jsonl (.gz) .parquet, aclImdb .tar.gz
VALID_URL = ""  # a validation file of its own (as DATA_URL); "" = VALID_SIZE rows of DATA_URL
TEST_URL = ""  # a test file of its own, e.g. a dataset's official test split; "" = TEST_SIZE rows of DATA_URL
DATA_DIR = "data"  # download cache and token-id cache
TEXT_COLUMN = "review"  # the column that holds the texts; two, comma-separated (sentence1,sentence2): a sentence-pair task
LABEL_COLUMNS = "sentiment"  # one column: single-label, 2 or more classes; several, comma-separated: multi-label, 0/1 each
TASK = "auto"  # auto = regression where the one label column holds numbers not all whole (scores), else classification
LABEL_NAMES = "negative,positive"  # names of integer labels 0, 1, ...; word labels name themselves
THRESHOLD = 0.5  # multi-label: a label is predicted where its sigmoid probability is over this
CLASS_WEIGHTS = "none"  # balanced = each class's loss x n_samples / (n_classes x its count); multi-label: positives x neg/pos
SHUFFLE = False  # False = split in file order (the recipe); True = permute the rows with SEED first
TRAIN_SIZE = 35_000  # the first rows of DATA_URL (or a fraction, e.g. 0.8); not given beside VALID_URL/TEST_URL: the rest
VALID_SIZE = 5_000  # the next rows: choose the best epoch (not given beside TEST_URL: a tenth; of VALID_URL: all unless given)
TEST_SIZE = 10_000  # the next rows: reported once, for the best epoch (not given beside VALID_URL: a tenth; of TEST_URL: all unless given)
# model
MODEL_NAME = "distilbert-base-uncased"  # hub name or local folder with config, weights and tokenizer (README: Which checkpoint)
MAX_LENGTH = 512  # tokens per review, longer ones are truncated
TRUNCATION = "head+tail"  # what a review over MAX_LENGTH keeps: head+tail = first HEAD_TOKENS + last ones; head = first
HEAD_TOKENS = 128  # with head+tail: tokens kept from the start, the rest from the end; MAX_LENGTH // 4 if it leaves no room
STUDENT_LAYERS = 0  # 0 = MODEL_NAME as it is; N = a student of N of its layers, evenly spaced, with its embeddings and head (as DistilBERT was made from BERT)
# adapters (README: Checkpoints bigger than the GPU)
LORA_RANK = 0  # 0 = full fine-tuning (the recipe); r > 0 = LoRA adapters of rank r on every linear layer, base frozen
LORA_ALPHA = 16  # LoRA scaling: each adapter's update x LORA_ALPHA / LORA_RANK
LORA_DROPOUT = 0.05  # dropout on the adapters' input
LOAD_IN_4BIT = False  # QLoRA: the frozen base in 4-bit NF4 by bitsandbytes (CUDA only; needs LORA_RANK > 0)
# distillation (README: Smaller, faster, cheaper)
TEACHER = ""  # a fine-tuned model of the data's labels (a train_distilbert.py run folder, a checkpoint folder or hub name) whose outputs the student learns too; "" = off
UNLABELED_URL = ""  # texts without labels (a file as DATA_URL with its text column(s); the aclImdb archive: its unsup reviews) that the TEACHER labels for training
DISTILL_ALPHA = 0.5  # labelled rows: DISTILL_ALPHA x the label's loss + (1 - DISTILL_ALPHA) x the teacher's soft loss; unlabelled rows: the soft loss alone
DISTILL_TEMPERATURE = 2.0  # single-label: both distributions softened by this temperature in the soft loss (x T², Hinton et al. 2015)
DISTILL_AUGMENT = 0  # with a TEACHER: N augmented copies of each training text (words masked or replaced, n-gram windows; Tang et al. 2019) join the transfer texts
DISTILL_HIDDEN = 0.0  # with a TEACHER whose own layers the student was made of (STUDENT_LAYERS of its model/): the weight of the cosine loss between each student layer's output and its teacher layer's (Sanh et al. 2019)
# optimisation
BATCH_SIZE = 16  # reviews per forward pass
GRAD_ACCUM_STEPS = 1  # forward passes per optimizer step: effective batch = BATCH_SIZE * GRAD_ACCUM_STEPS
GRADIENT_CHECKPOINTING = False  # recompute each layer's activations in the backward pass: far less memory, slower
EPOCHS = 3  # passes over the training split
PATIENCE = 0  # epochs without a better validation score before stopping, 0 = off; the schedule stays EPOCHS long
LEARNING_RATE = 5e-5  # AdamW peak learning rate
WEIGHT_DECAY = 0.01  # AdamW decoupled weight decay, on weight matrices only
LR_DECAY = 1.0  # layer-wise: head and top layer at LEARNING_RATE, each layer below x LR_DECAY, embeddings last; 1 = off
WARMUP_RATIO = 0.1  # fraction of optimizer steps with linear warm-up, then linear decay to zero
GRAD_CLIP = 1.0  # clip the gradient norm to this, 0 = off
SEED = 123  # model head initialisation, shuffling and dropout
# system
DEVICE = "auto"  # auto = cuda if available (under torchrun cuda:LOCAL_RANK), else cpu
PRECISION = "auto"  # auto = bf16 where native (Ampere+ GPUs, CPUs with AVX512-BF16/AMX), fp16 + scaler on older GPUs
COMPILE = False  # torch.compile the model; pays off only on long runs
FUSED_ADAMW = True  # AdamW as one fused kernel (CUDA, CPU, MPS, XPU): the same update, rounded apart; 10x on a CPU
LENGTH_GROUPING = True  # train on batches of similar-length reviews (less padding); False = plain shuffle
EVAL_BATCH_SIZE = 64  # reviews per forward pass in evaluation
LOG_EVERY = 20  # batches between progress-bar and TensorBoard updates (each one waits for the GPU)
TENSORBOARD = True  # curves in OUT_DIR/tensorboard/ for `tensorboard --logdir runs` (needs tensorboard); False = off
OUT_DIR = "runs/distilbert"  # metrics.json, model/ and the resumable checkpoint.pt
RESUME = False  # continue the interrupted run in OUT_DIR from its checkpoint.pt
# fmt: on
DEFAULTS = {name: value for name, value in globals().items() if name.isupper() and isinstance(value, (int, float, str))}
POSITIVE_SETTINGS = [
    "TRAIN_SIZE",
    "VALID_SIZE",
    "TEST_SIZE",
    "MAX_LENGTH",
    "BATCH_SIZE",
    "GRAD_ACCUM_STEPS",
    "EPOCHS",
    "LEARNING_RATE",
    "EVAL_BATCH_SIZE",
    "LOG_EVERY",
]
LAYER = re.compile(r"\.(?:layers?|h)\.(\d+)\.")  # a parameter of layer N (encoder.layer.N, layers.N, h.N), for LR_DECAY
PROBLEM = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}  # the config's problem_type: pipeline() then scores as the run did
EMBEDDING = re.compile(r"embed|\.wte\.|\.wpe\.|relative_attention_bias|encoder\.LayerNorm\.")  # below layer 0


def check_settings(s, given):
    """This script's own settings, beyond those every run checks; HEAD_TOKENS filled in where it leaves no tail."""
    if s["MAX_LENGTH"] < 3:
        raise RecipeError(
            f"MAX_LENGTH (--max-length) must be at least 3 ([CLS], a token, [SEP]), got {s['MAX_LENGTH']}"
        )
    if not 0 <= s["WARMUP_RATIO"] < 1 or s["WEIGHT_DECAY"] < 0 or s["GRAD_CLIP"] < 0:
        raise RecipeError("WARMUP_RATIO must be in [0, 1), WEIGHT_DECAY and GRAD_CLIP must not be negative")
    if not 0 < s["LR_DECAY"] <= 1:
        raise RecipeError(f"LR_DECAY (--lr-decay) must be in (0, 1], got {s['LR_DECAY']}; 1 turns it off")
    if s["TRUNCATION"] not in ("head", "head+tail"):
        raise RecipeError(f"TRUNCATION (--truncation) must be head or head+tail, got {s['TRUNCATION']!r}")
    if s["TRUNCATION"] == "head+tail" and s["HEAD_TOKENS"] > s["MAX_LENGTH"] - 2 and "HEAD_TOKENS" not in given:
        s = {**s, "HEAD_TOKENS": s["MAX_LENGTH"] // 4}  # no room for a tail: Sun et al.'s share (128 of 512)
    if s["TRUNCATION"] == "head+tail" and not 0 <= s["HEAD_TOKENS"] <= s["MAX_LENGTH"] - 2:
        raise RecipeError(
            f"HEAD_TOKENS (--head-tokens) must be between 0 and MAX_LENGTH - 2 = {s['MAX_LENGTH'] - 2} "
            f"(room for [CLS] and [SEP]), got {s['HEAD_TOKENS']}"
        )
    if s["PRECISION"] not in ("auto", "bf16", "fp16", "fp32"):
        raise RecipeError(f"PRECISION (--precision) must be auto, bf16, fp16 or fp32, got {s['PRECISION']!r}")
    if s["LORA_RANK"] < 0:
        raise RecipeError(
            f"LORA_RANK (--lora-rank) must be 0 (full fine-tuning) or a positive integer rank such as "
            f"8 or 16, got {s['LORA_RANK']}"
        )
    if s["LORA_RANK"] and not (s["LORA_ALPHA"] > 0 and 0 <= s["LORA_DROPOUT"] < 1):
        raise RecipeError(
            f"LORA_ALPHA (--lora-alpha) must be positive and LORA_DROPOUT (--lora-dropout) in [0, 1), "
            f"got {s['LORA_ALPHA']} and {s['LORA_DROPOUT']}"
        )
    if s["STUDENT_LAYERS"] < 0:
        raise RecipeError(
            f"STUDENT_LAYERS (--student-layers) must be 0 (the model as it is) or a number of layers to keep, got "
            f"{s['STUDENT_LAYERS']}"
        )
    if s["STUDENT_LAYERS"] and s["LOAD_IN_4BIT"]:
        raise RecipeError(
            "STUDENT_LAYERS (--student-layers) builds a model from MODEL_NAME's own layers, which a 4-bit base "
            "(--load-in-4bit) holds quantized: train the student in full or with LoRA on an unquantized base"
        )
    distill.check_hidden(s)  # DISTILL_HIDDEN: a teacher, a student of its own layers, one width
    if s["LOAD_IN_4BIT"] and not s["LORA_RANK"]:
        raise RecipeError(
            "LOAD_IN_4BIT (--load-in-4bit) freezes a 4-bit base that only adapters can train: give "
            "--lora-rank too (e.g. 16)"
        )
    return s


def cached_token_ids(texts, tokenizer, max_length, data_dir, data_sha256, truncation="head", head_tokens=0, pairs=None):
    """tokenize() once: the result is cached in data_dir under a key of everything it depends on (data file,
    the texts in their order, tokenizer, max length, truncation, cleaning) and rebuilt when any of them changes or
    the file is unreadable."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("truncation")  # per-call state, set by the last call; max_length is in the key
    spec.pop("padding")
    key = {
        "data_sha256": data_sha256,
        "max_length": max_length,
        "rows": len(texts),
        "clean": BR_TAG.pattern,
        "texts_sha256": hashlib.sha256("\0".join(texts).encode()).hexdigest(),  # columns, order (SHUFFLE)
        "tokenizer_sha256": hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest(),
    }
    if truncation != "head":  # head-only keys stay as they were, so existing caches stay valid
        key["truncation"] = f"{truncation} {head_tokens}"
    if pairs is not None:  # the second texts, and whether the model reads segments
        key["pairs_sha256"] = hashlib.sha256("\0".join(pairs).encode()).hexdigest()
        key["segments"] = reads_segments(tokenizer)
    path = Path(data_dir) / f"tokens-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}.pt"
    if path.exists():
        try:
            cache = torch.load(path, weights_only=True)
            if cache["key"] == key:
                return cache["ids"], cache["offsets"], cache.get("types")
        except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
            # a damaged cache is rebuilt, never trusted
            print(f"token cache {path} is unreadable ({type(e).__name__}); rebuilding it")
    ids, offsets, types = tokenize(texts, tokenizer, max_length, truncation, head_tokens, pairs=pairs)
    atomic_write(path, lambda f: torch.save({"key": key, "ids": ids, "offsets": offsets, "types": types}, f))
    return ids, offsets, types


def evaluate(model, batches, data, pad_id, device, autocast, rank=0, world=1, types=None):
    """The model's logits over batches (all_logits()), without gradients."""
    with autocast:
        return all_logits(
            model,
            lambda m, batch: m(**model_inputs(batch)).logits,
            batches,
            lambda indices: collate(indices, *data, pad_id, types=types),
            model.config.num_labels,
            device,
            rank,
            world,
        )


def save_model(model, tokenizer, path, stale):
    """save_pretrained into a fresh folder, then swapped in: a failed write (full disk) leaves the old model, a kill
    between the renames is undone by remove_stale(); the file stale (earlier results) is deleted once it is whole."""
    tmp, old = temporary(path), temporary(path, "old")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, OSError):  # safetensors reports a full disk as its own error
            e = OSError(errno.ENOSPC if "No space" in str(e) else errno.EIO, str(e))
        raise write_error(path, e) from None
    Path(stale).unlink(missing_ok=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def parameter_groups(model, learning_rate, weight_decay, lr_decay):
    """AdamW parameter groups: weight decay on matrices only and, with lr_decay < 1, layer-wise learning rates (Sun
    et al. 2019): the head, a final norm and the top layer at learning_rate, each layer below x lr_decay, the
    embeddings last with every embedding-like parameter (ELECTRA's projection, DeBERTa's relative position embeddings
    and their norm, MPNet's relative attention bias). Layers are found by name: ...layer.N (BERT, DistilBERT, RoBERTa,
    XLM-R, ELECTRA, MPNet, DeBERTa), ...layers.N (ModernBERT, Llama, Qwen) or ...h.N (GPT-2)."""
    names = {name: p for name, p in model.named_parameters() if p.requires_grad}  # with LoRA: adapters and head
    layer_of = {}  # the layer of each parameter that belongs to one
    if lr_decay != 1:
        for name in names:
            match = LAYER.search(name)
            if match:
                layer_of[name] = int(match.group(1))
    if lr_decay != 1 and not layer_of:
        why = (
            "shares one set of weights among all its layers (ALBERT): no layer has weights of its own to learn slower"
            if any(".albert_layer_groups." in name for name in names)
            else "has no layers named like encoder.layer.N, layers.N or h.N"
        )
        raise RecipeError(
            f"LR_DECAY (--lr-decay) gives each layer its own learning rate, but {type(model).__name__} "
            f"{why}; use --lr-decay 1"
        )
    top = max(layer_of.values(), default=0)
    groups = {}
    for name, p in names.items():
        depth = top - layer_of[name] if name in layer_of else top + 1 if EMBEDDING.search(name) else 0
        groups.setdefault((lr_decay**depth if layer_of else 1.0, p.ndim >= 2), []).append(p)
    return [
        {"params": params, "lr": learning_rate * scale, "weight_decay": weight_decay if matrix else 0.0}
        for (scale, matrix), params in sorted(groups.items(), key=lambda g: (-g[0][0], not g[0][1]))
    ]


def from_pretrained(load, name, **kwargs):
    """load(name) from a local folder or the hub, never running code from it; a mistyped name, no hub access, a
    folder that holds no model or one that needs code of its own is one line that says so."""
    try:
        return load(name, trust_remote_code=False, **kwargs)
    except (OSError, ValueError, ImportError, SafetensorError) as e:  # SafetensorError: damaged weights
        if "trust_remote_code" in str(e):
            raise RecipeError(needs_code(name)) from None
        if package := missing_package(name, e):
            raise RecipeError(
                f"the tokenizer of {name} needs the package {package}, which is not installed here: "
                f"pip install {package}"
            ) from None
        reason = str(e).strip().splitlines()[0][:160]
        if Path(name).is_dir():
            raise RecipeError(
                f"MODEL_NAME (--model-name) {name} is a folder but holds no model that transformers "
                f"can load ({reason}); it needs config.json, the weights and the tokenizer files, "
                f"as save_pretrained writes them"
            ) from None
        raise RecipeError(
            f"MODEL_NAME (--model-name) {name!r} is neither a local folder nor a model the Hugging "
            f"Face hub could provide ({reason}); check the name, or pass a local folder with "
            f"--model-name /path/to/model"
        ) from None


def missing_package(name, error):
    """The package a tokenizer needs that is not installed: sentencepiece for a SentencePiece vocabulary (a folder's
    spm.model; transformers then speaks of tiktoken), or the one the error names."""
    spm = list(Path(name).glob("*.model")) or "tiktoken" in str(error)
    return next(
        (
            p
            for p in ("sentencepiece", "tiktoken")
            if (p in str(error) or spm and p == "sentencepiece") and importlib.util.find_spec(p) is None
        ),
        None,
    )


def needs_code(name):
    return (
        f"the model in {name} needs Python code of its own to load (config.json's auto_map), and this collection "
        f"never runs code from a model folder; use a model that transformers supports as it is"
    )


def check_tokenizer(tokenizer, model, folder):
    """A tokenizer that cannot be the model's (far fewer tokens than the model has embeddings) is refused: a folder
    without its vocabulary file loads the special tokens alone, and every word becomes [UNK]."""
    if len(tokenizer) * 2 < model.config.vocab_size:
        raise RecipeError(
            f"the tokenizer in {folder} has {len(tokenizer):,} tokens for a model with "
            f"{model.config.vocab_size:,}: its vocabulary file (tokenizer.json, or vocab.txt) is missing; "
            f"save the tokenizer beside the model (tokenizer.save_pretrained)"
        )


def ready(model, tokenizer, s):
    """The checkpoint made ready for this run, or refused with the reason: a pad token where it has none (GPT-2 and
    Llama pad with their end-of-text token), its id in the config where that has none (Qwen), so that a decoder's head
    finds each text's last non-pad token; MAX_LENGTH within what the model reads; gradient checkpointing on request."""
    check_tokenizer(tokenizer, model, s["MODEL_NAME"])
    if tokenizer.pad_token is None:
        if (tokenizer.eos_token or tokenizer.unk_token) is None:
            raise RecipeError(
                f"the tokenizer of {s['MODEL_NAME']} has no pad, end-of-text or unknown token to pad "
                f"batches with; add one (tokenizer.add_special_tokens) and save it beside the model"
            )
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token  # saved with the model, as is the config's
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    table = getattr(model.config, "max_position_embeddings", math.inf)
    reserved = getattr(getattr(model.base_model, "embeddings", None), "padding_idx", -1) + 1  # RoBERTa: the pad id + 1
    own = tokenizer.model_max_length if tokenizer.model_max_length < 1e9 else math.inf  # 1e30: not set
    if s["MAX_LENGTH"] > min(table - reserved, own):
        why = (
            "its tokenizer's model_max_length (a model this script saved keeps its MAX_LENGTH there)"
            if own < table - reserved
            else f"{table} position embeddings" + f", {reserved} of them reserved" * bool(reserved)
        )
        raise RecipeError(
            f"MAX_LENGTH (--max-length) is {s['MAX_LENGTH']} but {s['MODEL_NAME']} reads at most "
            f"{min(table - reserved, own)} tokens ({why})"
        )
    tokenizer.model_max_length = s["MAX_LENGTH"]  # saved with the model: pipeline(truncation=True) cuts there
    if len(text_columns(s)) > 1 and not has_pair_template(tokenizer):
        raise RecipeError(
            f"the tokenizer of {s['MODEL_NAME']} has no pair template: it would join the two texts of "
            f"a pair with nothing between them; use a model that reads pairs (BERT, RoBERTa, DeBERTa, "
            f"ModernBERT, MPNet), or join the two columns into one text column with a separator"
        )
    if s["GRADIENT_CHECKPOINTING"]:  # non-reentrant: works under DDP and keeps dropout's draws
        if not model.supports_gradient_checkpointing:
            raise RecipeError(
                f"{type(model).__name__} does not support gradient checkpointing in transformers; use "
                f"--gradient-checkpointing false (and a smaller --batch-size with --grad-accum-steps)"
            )
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)({"use_reentrant": False})


def load_checkpoint(name, r, dtype, device, four_bit=None):
    """MODEL_NAME with a new head for the run's labels (or its score) on device, its weights in dtype (fp32 to train
    them all; LoRA: the frozen base in the run's precision) or, with four_bit, in 4-bit NF4; with STUDENT_LAYERS, the
    student of that many of its layers (textclf/student.py)."""
    model = from_pretrained(
        AutoModelForSequenceClassification.from_pretrained,
        name,
        num_labels=len(r.names),
        id2label=dict(enumerate(r.names)),
        label2id={label: i for i, label in enumerate(r.names)},
        problem_type=PROBLEM[r.task],
        ignore_mismatched_sizes=True,  # a head for other labels is replaced, as it is new
        dtype=dtype,
        quantization_config=four_bit,
        **({"device_map": {"": device}} if four_bit else {}),
    )  # 4-bit weights load in place
    if r.s["STUDENT_LAYERS"]:  # N of its layers, evenly spaced, its embeddings and head: an ordinary smaller model
        model = student_of(model, r.s["STUDENT_LAYERS"], shown_name(name))
    return model if four_bit else model.to(device)


def shown_name(name):
    """A checkpoint's name as the log and the card show it: a hub name, or a folder's name (a run's model/ with its
    run's)."""
    parts = Path(name).parts
    return "/".join(parts[-2:]) if parts and parts[-1] == "model" else (parts[-1] if parts else str(name))


def start_at(model, mean):
    """A regression head whose output starts at the training mean: its bias (the last one-output linear layer's, where
    it has one) set to mean, as AdamW moves a bias only about LEARNING_RATE a step."""
    _, head = score_layer(model)
    if head is not None and head.bias is not None:
        with torch.no_grad():
            head.bias.fill_(mean)


def run(settings, given, held):
    r = Run(settings, given, held, POSITIVE_SETTINGS, check_settings)  # settings, processes, OUT_DIR
    s, device = r.s, r.device
    precision, why = run_precision(s["PRECISION"], device, r.recorded.get("precision"), r.world)  # alike everywhere

    # data: download once, validate, split in file order; model; tokenize once (cached)
    frame = r.load_data()
    pairs = frame["text_pair"].tolist() if "text_pair" in frame else None  # a sentence-pair task: the second texts
    teacher = distill.prepare(r, frame, precision)  # with a TEACHER: its soft targets, computed once; then it is freed
    torch.manual_seed(s["SEED"])
    lora = s["LORA_RANK"] > 0  # adapters on a frozen base; 0: every weight trains, in fp32
    with agreeing(r.world):  # a model folder missing on one machine stops every process
        four_bit = quantization(s["LOAD_IN_4BIT"], device, precision)  # None, or the base in 4-bit NF4
        model = load_checkpoint(s["MODEL_NAME"], r, base_dtype(s["LORA_RANK"], precision), device, four_bit)
        tokenizer = from_pretrained(AutoTokenizer.from_pretrained, s["MODEL_NAME"])
        ready(model, tokenizer, s)  # pad token, MAX_LENGTH, pair template, gradient checkpointing
        made = getattr(model, "student", None)  # with STUDENT_LAYERS: of which layers of MODEL_NAME
        if made:
            print(f"student: {described(made)}")
        if r.regression:  # the head in fp32, outside autocast; it starts at the training mean (decoders' have no bias)
            start_at(in_fp32(model), frame["label"].iloc[: r.n_train].mean())
        if lora:  # the base frozen in the run's precision; adapters and head train in fp32
            model = with_adapters(model, s)
    with leader_first(r.world):
        texts = frame["text"].tolist()
        truncation = (s["TRUNCATION"], s["HEAD_TOKENS"])
        ids, offsets, types = cached_token_ids(
            texts, tokenizer, s["MAX_LENGTH"], s["DATA_DIR"], r.data_sha256, *truncation, pairs
        )
    data, pad_id = r.index(ids, offsets, frame), tokenizer.pad_token_id
    hidden = None  # DISTILL_HIDDEN: the teacher's hidden states at the layers the student kept, on its token ids
    if s["DISTILL_HIDDEN"]:
        hidden = distill.hidden_states(r, made["layers"], ids, offsets, types, pad_id, precision, s["DISTILL_HIDDEN"])

    # optimizer, schedule, precision
    fused = s["FUSED_ADAMW"] and device.type in ("cuda", "cpu", "mps", "xpu")  # the devices torch has it for
    groups = parameter_groups(model, s["LEARNING_RATE"], s["WEIGHT_DECAY"], s["LR_DECAY"])  # what trains
    optimizer = torch.optim.AdamW(groups, lr=s["LEARNING_RATE"], fused=fused)
    total_steps = math.ceil(math.ceil(len(r.train_rows) / s["BATCH_SIZE"]) / s["GRAD_ACCUM_STEPS"]) * s["EPOCHS"]
    scheduler = get_linear_schedule_with_warmup(optimizer, round(s["WARMUP_RATIO"] * total_steps), total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    autocast = autocast_for(device, precision)
    forward_model = torch.compile(model, dynamic=True) if s["COMPILE"] else model
    train_model = forward_model
    if r.world > 1:  # under torchrun: gradients averaged over the processes
        device_ids = [device] if device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(forward_model, device_ids=device_ids)
    saved = r.out_dir / ("adapter" if lora else "model")  # the best epoch's weights (LoRA: its adapters and head)
    trained = Trained(model) if lora else model  # what checkpoint.pt holds of the model: LoRA, only what trains
    parts = {"model": trained, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    r.resume(parts, saved, precision=precision)

    # train: the hand-written loop; r starts it where a checkpoint left off and stops it at one on Ctrl-C or SIGTERM
    attention = model.config._attn_implementation  # SDPA where the model has it, else eager
    print(
        f"train {r.n_train:,}{f' + {r.n_transfer:,} unlabelled' * bool(r.n_transfer)} / valid {r.n_valid:,} / "
        f"test {r.n_test:,} reviews | batch {s['BATCH_SIZE']} x "
        f"{s['GRAD_ACCUM_STEPS']} | {total_steps:,} optimizer steps | {device} x {r.world} | {precision} ({why}) | "
        f"{attention} attention"
    )

    def score(candidate, batches):  # a model's logits on a split
        return evaluate(candidate, batches, data, pad_id, device, autocast, r.rank, r.world, types)

    for epoch in r.epochs():  # PATIENCE may end them early
        train_model.train()  # dropout on: from_pretrained and evaluation leave the model in eval mode
        # this process's share of each batch
        for batch in r.batches(epoch, lambda indices: collate(indices, *data, pad_id, types=types)):
            labels = batch.tensors[2]
            with accumulating(train_model, batch.ends_step):  # under torchrun, gradients all-reduced once a step
                with autocast:  # input_ids, attention_mask and, for pairs on BERT-style models, token_type_ids
                    outputs = train_model(**model_inputs(batch.tensors), output_hidden_states=hidden is not None)
                logits = outputs.logits
                # summed over the batch, in fp32; weighted by class where CLASS_WEIGHTS asks; with a TEACHER, mixed with
                # its soft loss (unlabelled rows: the soft loss alone)
                if teacher is None:
                    loss_sum, correct = batch_loss(logits, labels, s["THRESHOLD"], r.class_weights)
                else:
                    loss_sum, correct = teacher.loss(logits, labels, batch.rows, s["THRESHOLD"], r.class_weights)
                if hidden is not None:  # DISTILL_HIDDEN: each student layer's output drawn towards its teacher layer's
                    loss_sum = loss_sum + hidden.loss(outputs.hidden_states, batch.tensors[1], batch.rows)
                # / the step's examples (over the processes, which DDP averages): accumulated batches and processes
                # give exactly the gradient of the whole step's batch
                scaler.scale(loss_sum / batch.step_examples).backward()
            grad_norm = None  # the gradients' norm before clipping, at an optimizer step
            if batch.ends_step:
                scaler.unscale_(optimizer)  # clip the true gradients (GRAD_CLIP 0: measure them only)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s["GRAD_CLIP"] or math.inf)
                scaler.step(optimizer)  # fp16: skipped where the gradients overflowed
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            r.record(batch, loss_sum, correct, grad_norm)  # progress bar, TensorBoard, divergence; a stop checkpoints
        # validation; a better epoch's model is kept, then a checkpoint
        valid_logits = score(forward_model, r.valid_batches)
        r.end_epoch(epoch, valid_logits, lambda epoch: save_model(model, tokenizer, saved, r.out_dir / "metrics.json"))

    # test the best epoch's model, reloaded from disk exactly as a user would; a LoRA run's adapters are merged into
    # the base first and saved as a whole model in model/ (the others merge theirs: rank 0 then sends its weights)
    def merged_into_base(state):
        base = load_checkpoint(s["MODEL_NAME"], r, base_dtype(s["LORA_RANK"], precision), device)
        base.config.pad_token_id = tokenizer.pad_token_id
        return merged(in_fp32(base) if r.regression else base, state, s)  # a score's head stays fp32 in model/

    def best():
        if lora:
            whole = merged_into_base(saved_state(saved, device))
            save_model(whole, tokenizer, r.out_dir / "model", r.out_dir / "metrics.json")
        reloaded = AutoModelForSequenceClassification.from_pretrained(r.out_dir / "model", trust_remote_code=False)
        if r.regression:  # the head as model/ stores it, in fp32 (from_pretrained casts it to a LoRA base's dtype)
            in_fp32(reloaded, r.out_dir / "model")
        return reloaded.to(device)

    if lora and r.rank > 0:  # the merged model's shape, for rank 0's weights
        model = merged_into_base(Trained(model).state_dict())

    def card(metrics):  # the hub's model card; a LoRA run's adapter folder gets peft's
        text = str(model_card(metrics, r.out_dir / "model"))
        atomic_write(r.out_dir / "model" / "README.md", lambda f: f.write(text.encode()))
        if lora:  # the card's code loads the base as it is: a pad id where it has none, its own head replaced
            base = from_pretrained(AutoConfig.from_pretrained, s["MODEL_NAME"])
            pad_id = tokenizer.pad_token_id if base.pad_token_id is None else None
            head = any(name.endswith("ForSequenceClassification") for name in base.architectures or [])
            adapter_text = str(adapter_card(metrics, saved, pad_id, head and base.num_labels != len(r.names)))
            atomic_write(saved / "README.md", lambda f: f.write(adapter_text.encode()))
        else:  # an earlier LoRA run's adapters in this OUT_DIR are not this run's
            shutil.rmtree(r.out_dir / "adapter", ignore_errors=True)

    student = {"student": made} if made else {}
    return r.finish(
        best,
        model,
        score,
        f"{r.out_dir / 'model'}/",
        card,
        teacher,
        precision=precision,
        precision_chosen_by=why,
        **student,
    )


def main(argv=None):
    return run_main(run, DEFAULTS, __file__, argv)


if __name__ == "__main__":
    main()
