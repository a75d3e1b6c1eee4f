"""Train an LSTM sentiment classifier from scratch on the IMDb reviews: the baseline for train_distilbert.py.

    python train_lstm_baseline.py                                # the full recipe: 15 epochs
    python train_lstm_baseline.py --epochs 2 --train-size 5000  # a quick run
    python train_lstm_baseline.py --patience 3                  # stop when validation accuracy stalls for 3 epochs
    python train_lstm_baseline.py --data-url /path/to/movie_data.csv.gz
    python train_lstm_baseline.py --data-url train.parquet --test-url test.parquet --text-column text --label-columns label
    python train_lstm_baseline.py --data-url comments.jsonl --text-column comment_text --label-columns toxic,insult
                                  --shuffle true --train-size 0.8 --valid-size 0.1 --test-size 0.1  # multi-label
    python train_lstm_baseline.py --out-dir runs/lstm --resume  # continue an interrupted run
    torchrun --standalone --nproc_per_node=2 train_lstm_baseline.py  # data-parallel, the same recipe

Same data, download and split as train_distilbert.py. Every UPPER_CASE setting below can be overridden from
the shell as --lower-case-name VALUE (or =VALUE); --help lists them. Writes OUT_DIR/metrics.json,
OUT_DIR/model.pt (the best epoch's weights, settings and vocabulary, one file; predict() reloads it) and
TensorBoard curves in OUT_DIR/tensorboard/. The training loop is run()'s, top to bottom.
"""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.feature_extraction.text import CountVectorizer
from torch import nn

from textclf import distill
from textclf.batches import flat_token_ids, pad_batch
from textclf.data import clean
from textclf.metrics import all_logits, batch_loss
from textclf.parallel import accumulating, progress
from textclf.runfolder import atomic_write
from textclf.settings import RecipeError, label_columns, text_columns
from textclf.training import Run
from textclf.training import main as run_main

# ----------------------------------------------------------------------------------------------- settings
# one setting a line, its comment beside it however long (--help shows the comments): not reflowed
# fmt: off
# data
DATA_URL = "https://github.com/rasbt/python-machine-learning-book-3rd-edition/raw/master/ch08/movie_data.csv.gz"  # URL (also hf://datasets/OWNER/NAME/FILE) or path: .csv .tsv .jsonl (.gz) .parquet, aclImdb .tar.gz
VALID_URL = ""  # a validation file of its own (as DATA_URL); "" = VALID_SIZE rows of DATA_URL
TEST_URL = ""  # a test file of its own, e.g. a dataset's official test split; "" = TEST_SIZE rows of DATA_URL
DATA_DIR = "data"  # download cache
TEXT_COLUMN = "review"  # the column that holds the texts; two, comma-separated (sentence1,sentence2): a sentence-pair task
LABEL_COLUMNS = "sentiment"  # one column: single-label, 2 or more classes; several, comma-separated: multi-label, 0/1 each
TASK = "auto"  # auto = regression where the one label column holds numbers not all whole (scores), else classification
LABEL_NAMES = "negative,positive"  # names of integer labels 0, 1, ...; word labels name themselves
THRESHOLD = 0.5  # multi-label: a label is predicted where its sigmoid probability is over this
CLASS_WEIGHTS = "none"  # balanced = each class's loss x n_samples / (n_classes x its count); multi-label: positives x neg/pos
SHUFFLE = False  # False = split in file order (the recipe); True = permute the rows with SEED first
TRAIN_SIZE = 35_000  # the first rows of DATA_URL (or a fraction, e.g. 0.8); not given beside VALID_URL/TEST_URL: the rest; the vocabulary's source
VALID_SIZE = 5_000  # the next rows: choose the best epoch (not given beside TEST_URL: a tenth; of VALID_URL: all unless given)
TEST_SIZE = 10_000  # the next rows: reported once, for the best epoch (not given beside VALID_URL: a tenth; of TEST_URL: all unless given)
# model
VOCAB_SIZE = 20_000  # most frequent training tokens, <pad> and <unk> included
MAX_LENGTH = 4096  # tokens per text, longer ones keep their first (bounds memory); IMDb's longest has 2,535
EMBEDDING_DIM = 128  # token embedding width
HIDDEN_DIM = 256  # LSTM state width
# distillation (README: Smaller, faster, cheaper)
TEACHER = ""  # a fine-tuned model of the data's labels (a train_distilbert.py run folder, a checkpoint folder or hub name) whose outputs the student learns too; "" = off
UNLABELED_URL = ""  # texts without labels (a file as DATA_URL with its text column(s); the aclImdb archive: its unsup reviews) that the TEACHER labels for training
DISTILL_ALPHA = 0.5  # labelled rows: DISTILL_ALPHA x the label's loss + (1 - DISTILL_ALPHA) x the teacher's soft loss; unlabelled rows: the soft loss alone
DISTILL_TEMPERATURE = 2.0  # single-label: both distributions softened by this temperature in the soft loss (x T², Hinton et al. 2015)
DISTILL_AUGMENT = 0  # with a TEACHER: N augmented copies of each training text (words masked or replaced, n-gram windows; Tang et al. 2019) join the transfer texts
# optimisation
BATCH_SIZE = 128  # reviews per forward pass
GRAD_ACCUM_STEPS = 1  # forward passes per optimizer step: effective batch = BATCH_SIZE * GRAD_ACCUM_STEPS
EPOCHS = 15  # passes over the training split
PATIENCE = 0  # epochs without a better validation score before stopping, 0 = off
LEARNING_RATE = 0.005  # Adam learning rate
GRAD_CLIP = 0.0  # clip the gradient norm to this, 0 = off
SEED = 123  # initialisation and shuffling
# system
DEVICE = "auto"  # auto = cuda if available (under torchrun cuda:LOCAL_RANK), else cpu
LENGTH_GROUPING = True  # train on batches of similar-length reviews (less padding); False = plain shuffle
EVAL_BATCH_SIZE = 256  # reviews per forward pass in evaluation
LOG_EVERY = 20  # batches between progress-bar and TensorBoard updates (each one waits for the GPU)
TENSORBOARD = True  # curves in OUT_DIR/tensorboard/ for `tensorboard --logdir runs` (needs tensorboard); False = off
OUT_DIR = "runs/lstm"  # metrics.json, model.pt and the resumable checkpoint.pt
RESUME = False  # continue the interrupted run in OUT_DIR from its checkpoint.pt
# fmt: on
DEFAULTS = {name: value for name, value in globals().items() if name.isupper() and isinstance(value, (int, float, str))}
POSITIVE_SETTINGS = [
    "TRAIN_SIZE",
    "VALID_SIZE",
    "TEST_SIZE",
    "VOCAB_SIZE",
    "MAX_LENGTH",
    "EMBEDDING_DIM",
    "HIDDEN_DIM",
    "BATCH_SIZE",
    "GRAD_ACCUM_STEPS",
    "EPOCHS",
    "LEARNING_RATE",
    "EVAL_BATCH_SIZE",
    "LOG_EVERY",
]
TOKEN_PATTERN = r"(?u)\b\w+\b|[!?]"  # words, and the punctuation that carries sentiment


def build_vocab(train_texts, vocab_size, pairs=False):
    """The most frequent tokens of the training texts after <pad> (id 0), <unk> (id 1) and, for sentence pairs,
    <sep> (id 2, between a pair's two texts): vocab_size in all. <sep> is no word: TOKEN_PATTERN never yields it."""
    specials = ["<pad>", "<unk>"] + ["<sep>"] * pairs
    counter = CountVectorizer(token_pattern=TOKEN_PATTERN, max_features=vocab_size - len(specials))
    counter.fit(clean(text) for text in train_texts)
    return specials + sorted(counter.vocabulary_, key=counter.vocabulary_.get)


def encode(texts, vocab, max_length, pairs=None):
    """Token ids of all texts, at most max_length each, as one flat int32 tensor and offsets (text i is
    ids[offsets[i]:offsets[i+1]]). With pairs (each text's second text), text <sep> pair, the longer of the two
    cut first to fit max_length."""
    analyze = CountVectorizer(token_pattern=TOKEN_PATTERN).build_analyzer()  # lowercase, then TOKEN_PATTERN
    index = {token: i for i, token in enumerate(vocab)}

    def ids(text):
        return [index.get(token, 1) for token in analyze(clean(text))] or [1]

    if pairs is None:
        pieces = [ids(text)[:max_length] for text in progress(texts, desc="encode")]
    else:
        pieces = [
            joined(ids(a), ids(b), index["<sep>"], max_length)
            for a, b in progress(zip(texts, pairs, strict=True), desc="encode", total=len(texts))
        ]
    return flat_token_ids(pieces)


def joined(first, second, sep, max_length):
    """first <sep> second in max_length tokens: the longer one is cut, a token at a time, until the pair fits."""
    first, second = list(first), list(second)
    while len(first) + len(second) + 1 > max_length and len(first) + len(second) > 2:
        longer = first if len(first) >= len(second) else second
        longer.pop()
    return first + [sep] + second


def collate(indices, ids, offsets, labels):
    """Batch of reviews right-padded (id 0) to the longest one: token ids, lengths, labels."""
    padded, lengths = pad_batch(indices, ids, offsets, pad_id=0)
    return padded, lengths, labels[np.asarray(indices)]


class LSTMClassifier(nn.Module):
    """Embedding -> one-layer LSTM -> linear layer on the state after each review's last real token."""

    def __init__(self, vocab_size, embedding_dim, hidden_dim, num_labels=2):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, batch_first=True)
        self.head = nn.Linear(hidden_dim, num_labels)

    def forward(self, ids, lengths):
        # A unidirectional LSTM's output at position length - 1 has not seen the right padding: it is the final
        # state pack_padded_sequence would give, without the cost of packing (tests check the two agree). gather()
        # takes it for every batch size: export.py's ONNX graph keeps the batch axis free.
        outputs, _ = self.lstm(self.embedding(ids))
        where = (lengths.to(ids.device) - 1).view(-1, 1, 1).expand(-1, 1, outputs.shape[-1])
        return self.head(outputs.gather(1, where).squeeze(1))


def evaluate(model, batches, data, device, rank=0, world=1):
    """The model's logits over batches (all_logits()), without gradients."""
    return all_logits(
        model,
        lambda m, batch: m(batch[0], batch[1]),
        batches,
        lambda indices: collate(indices, *data),
        model.head.out_features,
        device,
        rank,
        world,
    )


def load_model(out_dir, device="cpu"):
    """The best epoch's model saved in out_dir, in eval mode, and the vocabulary it was trained with (both in
    model.pt: they are replaced together). The model knows its label names (.labels) and whether it is
    multi-label (.threshold: the run's THRESHOLD, or None for single-label), and its .max_length."""
    saved = torch.load(Path(out_dir) / "model.pt", map_location=device, weights_only=True)
    vocab, s = saved["vocab"], saved["settings"]
    labels = saved.get("labels", ["negative", "positive"])  # model.pt files from before LABEL_COLUMNS
    model = LSTMClassifier(len(vocab), s["EMBEDDING_DIM"], s["HIDDEN_DIM"], len(labels)).to(device)
    model.load_state_dict(saved["model"])
    model.labels, model.max_length = labels, s.get("MAX_LENGTH", DEFAULTS["MAX_LENGTH"])  # older runs: the default
    multi = saved.get("task") == "multi_label" or len(label_columns({"LABEL_COLUMNS": s.get("LABEL_COLUMNS", "")})) > 1
    model.threshold = s["THRESHOLD"] if multi else None  # older model.pt files: known by their label columns
    model.regression = saved.get("task") == "regression"  # one output: the score itself
    model.pairs = "<sep>" in vocab  # a sentence-pair model reads text <sep> pair
    return model.eval(), vocab


def predict(texts, out_dir="runs/lstm"):
    """Classify new texts (a sentence-pair model: (text, pair) tuples) with the model saved in out_dir.
    Single-label: [(label, its probability), ...]; multi-label: [[(label, probability) for each label over the
    threshold], ...]; regression: [(the score's name, the predicted score), ...]."""
    model, vocab = load_model(out_dir)
    texts = [texts] if isinstance(texts, str) else list(texts)  # one text, not its characters
    pairs = None
    if model.pairs:  # (text, pair) tuples
        if not all(isinstance(pair, (tuple, list)) and len(pair) == 2 for pair in texts):
            raise ValueError(
                f"the model in {out_dir} classifies sentence pairs: give each as a (text, pair) tuple, "
                f"e.g. predict([('A man plays a guitar.', 'A person makes music.')], {str(out_dir)!r})"
            )
        texts, pairs = [a for a, _ in texts], [b for _, b in texts]
    ids, offsets = encode(texts, vocab, model.max_length, pairs)
    batch = collate(range(len(texts)), ids, offsets, torch.zeros(len(texts), dtype=torch.int64))
    with torch.inference_mode():
        logits = model(batch[0], batch[1])
    if model.regression:
        return [(model.labels[0], float(score)) for score in logits[:, 0]]
    if model.threshold is None:
        return [(model.labels[int(p.argmax())], float(p.max())) for p in logits.softmax(-1)]
    return [
        [(label, float(q)) for label, q in zip(model.labels, p, strict=True) if q > model.threshold]
        for p in logits.sigmoid()
    ]


def check_settings(s, given):
    """This script's own settings, beyond those every run checks."""
    if s["GRAD_CLIP"] < 0:
        raise RecipeError(f"GRAD_CLIP (--grad-clip) must not be negative, got {s['GRAD_CLIP']}")
    specials = ["<pad>", "<unk>"] + ["<sep>"] * (len(text_columns(s)) > 1)  # build_vocab()'s, before the words
    if s["VOCAB_SIZE"] <= len(specials):
        raise RecipeError(
            f"VOCAB_SIZE (--vocab-size) must leave room for words beside the {len(specials)} special tokens "
            f"({', '.join(specials)}): at least {len(specials) + 1}, got {s['VOCAB_SIZE']}"
        )
    return s


def run(settings, given, held):
    r = Run(settings, given, held, POSITIVE_SETTINGS, check_settings)  # settings, processes, OUT_DIR
    s, device = r.s, r.device

    # data: download once, validate, split in file order; vocabulary from the training texts (and any transfer texts)
    frame = r.load_data()
    pairs = frame["text_pair"].tolist() if "text_pair" in frame else None  # a sentence-pair task: the second texts
    teacher = distill.prepare(r, frame)  # with a TEACHER: its soft targets, computed once; then it is freed
    train_texts = frame["text"].iloc[r.train_rows].tolist() + (
        frame["text_pair"].iloc[r.train_rows].tolist() if pairs else []
    )
    vocab = build_vocab(train_texts, s["VOCAB_SIZE"], pairs is not None)
    data = r.index(*encode(frame["text"].tolist(), vocab, s["MAX_LENGTH"], pairs), frame)

    # model and optimizer
    torch.manual_seed(s["SEED"])
    model = LSTMClassifier(len(vocab), s["EMBEDDING_DIM"], s["HIDDEN_DIM"], len(r.names)).to(device)
    if r.regression:  # start at the training mean: Adam moves the bias about LEARNING_RATE a step, too slow for 3.5
        nn.init.constant_(model.head.bias, r.labels[: r.n_train].mean().item())
    optimizer = torch.optim.Adam(model.parameters(), lr=s["LEARNING_RATE"], fused=device.type == "cuda")
    train_model = model
    if r.world > 1:  # under torchrun: gradients averaged over the processes
        device_ids = [device] if device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    r.resume({"model": model, "optimizer": optimizer}, r.out_dir / "model.pt")

    def save_best(epoch):  # the weights with the vocabulary and labels they go with, replaced together
        best = {
            "model": model.state_dict(),
            "settings": s,
            "epoch": epoch,
            "vocab": vocab,
            "labels": r.names,
            "task": r.task,
        }
        atomic_write(r.out_dir / "model.pt", lambda f: torch.save(best, f), stale=r.out_dir / "metrics.json")

    # train: the hand-written loop; r starts it where a checkpoint left off and stops it at one on Ctrl-C or SIGTERM
    if r.regression:  # the floor: always predicting the training mean
        floor = f"RMSE of the training mean {r.labels[: r.n_train].std(correction=0).item():.4f}"
    else:
        train_labels = pd.DataFrame(r.labels[: r.n_train].numpy().reshape(r.n_train, -1))
        floor = f"majority-class accuracy {train_labels.value_counts(normalize=True).iloc[0]:.4f}"
    print(
        f"train {r.n_train:,}{f' + {r.n_transfer:,} unlabelled' * bool(r.n_transfer)} / valid {r.n_valid:,} / "
        f"test {r.n_test:,} reviews | vocabulary {len(vocab):,} | "
        f"{sum(p.numel() for p in model.parameters()):,} parameters | batch {s['BATCH_SIZE']} x "
        f"{s['GRAD_ACCUM_STEPS']} | {device} x {r.world} | {floor}"
    )

    def score(candidate, batches):  # a model's logits on a split
        return evaluate(candidate, batches, data, device, r.rank, r.world)

    for epoch in r.epochs():  # PATIENCE may end them early
        train_model.train()
        for batch in r.batches(epoch, lambda indices: collate(indices, *data)):  # this process's share
            ids, lengths, labels = batch.tensors
            with accumulating(train_model, batch.ends_step):  # under torchrun, gradients all-reduced once a step
                logits = train_model(ids, lengths)
                # the batch's sum, weighted by class where CLASS_WEIGHTS asks; with a TEACHER, mixed with its soft loss
                # (unlabelled rows: the soft loss alone)
                if teacher is None:
                    loss_sum, correct = batch_loss(logits, labels, s["THRESHOLD"], r.class_weights)
                else:
                    loss_sum, correct = teacher.loss(logits, labels, batch.rows, s["THRESHOLD"], r.class_weights)
                (loss_sum / batch.step_examples).backward()  # the mean over the optimizer step's examples
            grad_norm = None  # the gradients' norm before clipping, at an optimizer step
            if batch.ends_step:  # GRAD_CLIP 0: the norm is measured, nothing clipped
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s["GRAD_CLIP"] or math.inf)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            r.record(batch, loss_sum, correct, grad_norm)  # progress bar, TensorBoard, divergence; a stop checkpoints
        r.end_epoch(epoch, score(model, r.valid_batches), save_best)

    # test the best epoch's model, reloaded from disk exactly as predict() does
    return r.finish(lambda: load_model(r.out_dir, device)[0], model, score, r.out_dir / "model.pt", teacher=teacher)


def main(argv=None):
    return run_main(run, DEFAULTS, __file__, argv)


if __name__ == "__main__":
    main()
