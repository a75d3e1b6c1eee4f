"""Distillation (Hinton et al. 2015; Tang et al. 2019) for either script: a fine-tuned TEACHER scores the training texts,
the unlabelled transfer texts (UNLABELED_URL) and the test split once, before the first epoch (cached in DATA_DIR, then
freed), and its outputs are soft targets the loop's loss adds to the labels' (Distiller.loss). The loop is the script's."""

import gc
import hashlib
import json
import math
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from scipy.stats import pearsonr
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from .batches import make_batches
from .data import file_sha256
from .metrics import all_logits, correlation, row_losses, scores
from .parallel import all_sum, auto_precision, autocast_for, gathered, local_leader, predict_precision, progress
from .regression import in_fp32
from .runfolder import atomic_write
from .settings import RecipeError, text_columns
from .tokens import collate, has_pair_template, model_inputs, tokenize

PROBLEMS = {"single_label_classification": "single_label", "multi_label_classification": "multi_label"}
MAX_TEMPERATURE = 100  # beyond it every softened distribution is uniform to float32: the soft loss teaches nothing


def check_settings(s):
    """DISTILL_ALPHA in [0, 1], DISTILL_TEMPERATURE positive, UNLABELED_URL only beside a TEACHER."""
    if not 0 <= s["DISTILL_ALPHA"] <= 1:
        raise RecipeError(
            f"DISTILL_ALPHA (--distill-alpha) must be in [0, 1] (the labels' share of the loss on labelled rows; "
            f"the teacher has the rest), got {s['DISTILL_ALPHA']}"
        )
    if not 0 < s["DISTILL_TEMPERATURE"] <= MAX_TEMPERATURE:
        raise RecipeError(
            f"DISTILL_TEMPERATURE (--distill-temperature) must be above 0 and at most {MAX_TEMPERATURE} (1 = the "
            f"teacher's own probabilities, higher = softer), got {s['DISTILL_TEMPERATURE']}"
        )
    if s.get("DISTILL_AUGMENT", 0) < 0 or s.get("DISTILL_AUGMENT") and not s["TEACHER"]:
        raise RecipeError(
            f"DISTILL_AUGMENT (--distill-augment) is the number of augmented copies of each training text for a "
            f"teacher to label: 0 (none) or more, beside a TEACHER (--teacher); got {s['DISTILL_AUGMENT']}"
            + " and no teacher"
            * (not s["TEACHER"])
        )
    if s["UNLABELED_URL"] and not s["TEACHER"]:
        raise RecipeError(
            "UNLABELED_URL (--unlabeled-url) gives texts for a teacher to label, but no TEACHER is set: name a "
            "fine-tuned model with --teacher (a train_distilbert.py run's folder), or drop --unlabeled-url"
        )


def teacher_source(name):
    """(the folder or hub name from_pretrained loads, the metrics.json of the run that trained it or {}): a
    train_distilbert.py run folder (its model/ and metrics.json), its model/ folder, or any checkpoint. An LSTM run, a
    LoRA run's adapter/ folder and a folder without a model are refused with what to give instead."""
    path = Path(name).expanduser()
    for run in (path, path.parent):
        record = run / "metrics.json"
        if (run / "model" / "config.json").is_file() and record.is_file() and path in (run, run / "model"):
            try:
                metrics = json.loads(record.read_text())
            except ValueError:
                metrics = {}
            return run / "model", metrics if isinstance(metrics, dict) else {}
    if path.name == "model.pt" or (path / "model.pt").is_file():
        raise RecipeError(
            f"TEACHER (--teacher) {name} is a train_lstm_baseline.py run; a teacher is a transformer classifier: give "
            f"a finished train_distilbert.py run (its OUT_DIR) or a checkpoint folder"
        )
    if (path / "adapter_config.json").is_file():
        raise RecipeError(
            f"TEACHER (--teacher) {name} holds LoRA adapters alone, without their base; give the run's folder "
            f"({path.parent}): its model/ holds the adapters merged into the base"
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise RecipeError(
            f"TEACHER (--teacher) {name} is a folder but holds no model: give a finished train_distilbert.py run "
            f"(its OUT_DIR) or a folder with config.json and the weights, as save_pretrained writes them"
        )
    return (path if path.is_dir() else name), {}


def teacher_tokenizer(source, name):
    """The tokenizer in source (teacher_source()'s) of the teacher TEACHER names, never running code from it."""
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError, ImportError) as e:
        raise RecipeError(
            f"TEACHER (--teacher) {name}'s tokenizer does not load ({' '.join(str(e).split())[:160]}); give a "
            f"finished train_distilbert.py run, a local model folder or a hub name"
        ) from None


def mask_token(name):
    """The token the teacher's tokenizer masks a word with (its unknown token where it has no mask: GPT-2's
    <|endoftext|>): what an augmented copy's masked words become (textclf/augment.py)."""
    tokenizer = teacher_tokenizer(teacher_source(name)[0], name)
    return tokenizer.mask_token or tokenizer.unk_token or tokenizer.eos_token


class Teacher:
    """A fine-tuned sequence classifier whose labels are the data's (matched by name), its tokenizer and how its texts
    are cut (its run's MAX_LENGTH and TRUNCATION, or its tokenizer's model_max_length, head first)."""

    def __init__(self, name, names, task, pairs=False):
        self.name = name
        self.source, self.run = teacher_source(name)
        self.run_settings = self.run.get("settings") if isinstance(self.run.get("settings"), dict) else None
        own = self.run_settings or {}  # a run of this collection: how it read its texts
        if own and (len(text_columns(own)) > 1) != pairs:
            read = f"pairs of texts ({own['TEXT_COLUMN']})" if len(text_columns(own)) > 1 else "one text a row"
            raise RecipeError(
                f"TEACHER (--teacher) {name} was trained on {read}, but this run's data "
                f"{'are pairs' if pairs else 'have one text a row'}; a teacher must read the texts as the student "
                f"does: give a teacher trained on {'pairs' if pairs else 'single texts'}"
            )
        if pairs and not own and not has_pair_template(self.tokenizer()):
            raise RecipeError(
                f"TEACHER (--teacher) {name} has a tokenizer without a pair template: it would read each pair's two "
                f"texts joined with nothing between them; give a teacher that reads pairs (BERT, RoBERTa, DeBERTa, "
                f"ModernBERT, MPNet)"
            )
        try:
            config = AutoConfig.from_pretrained(self.source, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise RecipeError(
                f"TEACHER (--teacher) {name} does not load ({' '.join(str(e).split())[:160]}); give a finished "
                f"train_distilbert.py run, a local model folder or a hub name"
            ) from None
        labels = [config.id2label[i] for i in range(config.num_labels)]
        kind = (
            PROBLEMS.get(config.problem_type, "regression")
            if config.problem_type
            else ("regression" if config.num_labels == 1 else "single_label")
        )
        if kind != task:
            raise RecipeError(
                f"TEACHER (--teacher) {name} is a {kind.replace('_', '-')} model, but the data make this run a "
                f"{task.replace('_', '-')} task; a teacher must be trained for the same task"
            )
        if task == "regression":
            self.order = [0]
        elif sorted(labels) != sorted(names):
            raise RecipeError(
                f"TEACHER (--teacher) {name} predicts the labels {', '.join(labels[:10])}, but the data's are "
                f"{', '.join(names[:10])}; a teacher must be trained on the same labels (matched by name)"
            )
        else:
            self.order = [labels.index(label) for label in names]  # the teacher's outputs in the data's order
        self.cut = (own.get("TRUNCATION", "head"), own.get("HEAD_TOKENS", 0))
        self.max_length = own.get("MAX_LENGTH")  # else the tokenizer's model_max_length, when it is loaded
        self.model_name = own.get("MODEL_NAME", str(name))  # the checkpoint it was fine-tuned from
        self.batch_size = own.get("EVAL_BATCH_SIZE")  # its run's test batches: its test scores reproduced

    def tokenizer(self):
        return teacher_tokenizer(self.source, self.name)

    def precision(self, device, student):
        """(precision, why) the teacher computes in: its run's (as its run tested it) where this device computes it
        natively, else fp32; a checkpoint that is no run of this collection: the student's."""
        if "precision" not in self.run:
            return student, "the student's"
        return predict_precision("auto", self.run["precision"], auto_precision(device)[0])

    def weights_sha256(self):
        """A checksum of the teacher's weight files (safetensors or bin, every shard): the cache's key."""
        folder = Path(self.source)
        if not folder.is_dir():  # a hub name: the files from_pretrained keeps in its cache
            from transformers.utils import cached_file

            folder = Path(cached_file(str(self.source), "config.json")).parent
        digest = hashlib.sha256()
        for file in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            digest.update(file_sha256(file).encode())  # each file's, in the order of their names
        return digest.hexdigest()

    def logits(self, texts, pairs, groups, data_dir, device, precision, batch_size, rank=0, world=1):
        """The teacher's logits of the texts of each group of rows (and their pairs), concatenated, in the data's label
        order, float32; computed once, each group in batches of similar length of its own (shared by the processes
        under torchrun), and cached in data_dir under a key of its weights, the texts and how they are cut and
        computed; the model is freed before this returns. A cache of the right key but another shape is rebuilt."""
        rows = np.concatenate(groups)
        texts = [texts[i] for i in rows]
        pairs = None if pairs is None else [pairs[i] for i in rows]
        batch_size = self.batch_size or batch_size
        key = {
            "teacher_sha256": self.sha256,
            "texts_sha256": hashlib.sha256("\0".join(texts).encode()).hexdigest(),
            "pairs_sha256": None if pairs is None else hashlib.sha256("\0".join(pairs).encode()).hexdigest(),
            "max_length": self.max_length,
            "cut": list(self.cut),
            "precision": precision,
            "order": self.order,
            "groups": [len(group) for group in groups],
            "batch_size": batch_size,
        }
        path = (
            Path(data_dir) / f"teacher-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}.pt"
        )
        cached = None
        if path.exists():
            try:
                cache = torch.load(path, weights_only=True)
                cached = cache["logits"] if cache["key"] == key else None
                if cached is not None and tuple(cached.shape) != (len(texts), len(self.order)):
                    raise ValueError(f"{tuple(cached.shape)} logits for {len(texts)} texts")
            except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
                print(f"teacher cache {path} is unreadable ({type(e).__name__}: {e}); computing it again")
                cached = None
        if all(gathered(cached is not None, world)):  # every machine has it, or all compute it together
            print(f"teacher {self.name}: the outputs for {len(texts):,} texts from {path}")
            return cached
        logits = self.compute(
            texts, pairs, [len(group) for group in groups], device, precision, batch_size, rank, world
        )
        if local_leader():  # each machine's own DATA_DIR
            atomic_write(path, lambda f: torch.save({"key": key, "logits": logits}, f))
        return logits

    def compute(self, texts, pairs, sizes, device, precision, batch_size, rank, world):
        """The logits of texts, loaded as its run loaded it for its test (from_pretrained's own dtype, the weights as
        saved) and computed under autocast in precision; each group of sizes batched on its own."""
        tokenizer = self.tokenizer()
        try:
            model = AutoModelForSequenceClassification.from_pretrained(self.source, trust_remote_code=False)
        except (OSError, ValueError, ImportError, SafetensorError) as e:
            raise RecipeError(
                f"TEACHER (--teacher) {self.name} does not load ({' '.join(str(e).split())[:160]}); give a "
                f"finished train_distilbert.py run, a local model folder or a hub name"
            ) from None
        if model.config.problem_type == "regression":  # its score in fp32, as the run stored it
            in_fp32(model, self.source if Path(self.source).is_dir() else None)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        own = tokenizer.model_max_length if tokenizer.model_max_length < 1e9 else 512  # 1e30: not set
        max_length = self.max_length or min(own, getattr(model.config, "max_position_embeddings", own))
        model = model.to(device).eval()
        print(f"teacher {self.name}: scoring {len(texts):,} texts, {max_length} tokens each at most, in {precision}")
        ids, offsets, types = tokenize(texts, tokenizer, max_length, *self.cut, pairs=pairs)
        lengths = (offsets[1:] - offsets[:-1]).numpy()
        no_labels = torch.zeros(len(texts), dtype=torch.int64)
        pad_id = tokenizer.pad_token_id
        batches = []
        for start, size in zip(np.cumsum([0, *sizes[:-1]]), sizes, strict=True):
            batches += [start + batch for batch in make_batches(lengths[start : start + size], batch_size)]

        def forward(m, batch):
            return m(**model_inputs(batch)).logits

        def batch_of(indices):
            return collate(indices, ids, offsets, no_labels, pad_id, types=types)

        with autocast_for(device, precision):
            logits = all_logits(
                model, forward, batches, batch_of, model.config.num_labels, device, rank, world, desc="teacher"
            )
        del model  # the student trains without the teacher in memory
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return logits[:, self.order].float()


class Distiller:
    """The soft targets of every row (the teacher's logits; NaN where it did not score: the validation split) and the
    loss that mixes them with the labels: labelled rows DISTILL_ALPHA x the label's loss + (1 - DISTILL_ALPHA) x the
    soft loss, unlabelled rows the soft loss alone. Soft loss: KL divergence of the student's from the teacher's
    distribution at DISTILL_TEMPERATURE, x T² (single-label); binary cross-entropy to the teacher's probabilities
    (multi-label); squared error to the teacher's score (regression)."""

    def __init__(self, teacher_logits, labelled, task, alpha, temperature, device, about=None):
        self.logits = teacher_logits.to(device)
        self.labelled = torch.as_tensor(labelled, device=device)
        self.task, self.alpha, self.temperature = task, alpha, temperature
        self.about = about or {"name": ""}  # its name as TEACHER gives it, the checkpoint it came from, its MAX_LENGTH

    def report(self, student_logits, r):
        """metrics.json's teacher: its name, the texts it labelled, its test scores and the student's agreement."""
        teacher_logits = self.logits[torch.as_tensor(r.test_rows, device=self.logits.device)].cpu()
        targets = r.labels[r.test_rows]
        measured = report(teacher_logits, student_logits, targets, r.names, r.s["THRESHOLD"], self.task)
        counts = {"labelled_texts": r.n_train, "transfer_texts": r.n_transfer, "augmented_texts": r.n_augmented}
        return {**self.about, **counts, **measured}

    def loss(self, logits, labels, rows, threshold, weights=None):
        """(summed loss, correct count over the labelled rows; regression: their summed squared error to the labels)
        of a batch of rows (their indices in the frame)."""
        rows = torch.as_tensor(np.asarray(rows), device=logits.device)
        labelled = self.labelled[rows].float()
        hard, correct = row_losses(logits, labels, threshold, weights)
        soft = soft_losses(logits.float(), self.logits[rows], self.task, self.temperature)
        loss = labelled * (self.alpha * hard + (1 - self.alpha) * soft) + (1 - labelled) * soft
        if self.task == "regression":  # the labels' own squared error: train RMSE
            return loss.sum(), (hard * labelled).sum()
        return loss.sum(), (correct * labelled.bool()).sum()


def soft_losses(student, teacher, task, temperature):
    """Each row's soft loss of student logits against the teacher's (see Distiller)."""
    if task == "regression":
        return (student.squeeze(-1) - teacher.squeeze(-1)) ** 2
    if task == "multi_label":
        return F.binary_cross_entropy_with_logits(student, teacher.sigmoid(), reduction="none").mean(-1)
    t = temperature
    targets = F.log_softmax(teacher / t, -1)
    return F.kl_div(F.log_softmax(student / t, -1), targets, log_target=True, reduction="none").sum(-1) * t * t


def report(teacher_logits, student_logits, targets, names, threshold, task):
    """The teacher's test scores and how often the student agrees with it: the same class (single-label), the same
    set of labels (multi-label) or, for regression, the Pearson correlation of their scores."""
    teacher = scores(teacher_logits, targets, names, threshold)
    if task == "regression":  # None where either predicts one score for every text
        agreement = correlation(pearsonr, teacher_logits.squeeze(-1).numpy(), student_logits.squeeze(-1).numpy())
    elif task == "multi_label":
        same = (teacher_logits.sigmoid() > threshold) == (student_logits.sigmoid() > threshold)
        agreement = same.all(-1).float().mean().item()
    else:
        agreement = (teacher_logits.argmax(-1) == student_logits.argmax(-1)).float().mean().item()
    return {"test": teacher, "agreement": agreement}


def prepare(r, frame, precision=None):
    """The run's Distiller, or None without a TEACHER: the teacher checked against the data's labels and task, its
    outputs for the training split, the transfer texts and the test split (teacher.logits()), and a resumed run's
    teacher checked to be the one it began with (by its weights). precision: the run's (the LSTM's: PRECISION=auto's)."""
    s = r.s
    if not s.get("TEACHER"):
        return None
    teacher = Teacher(s["TEACHER"], r.names, r.task, "text_pair" in frame)
    teacher.sha256 = teacher.weights_sha256()
    began = r.recorded.get("teacher_sha256")
    if began is not None and began != teacher.sha256:
        raise RecipeError(
            f"TEACHER (--teacher) {s['TEACHER']} is not the teacher this run began with (its weights differ): put "
            f"that teacher back to resume, or start over without --resume"
        )
    r.recorded["teacher_sha256"] = teacher.sha256  # kept in every checkpoint
    precision, why = teacher.precision(r.device, precision or auto_precision(r.device)[0])
    print(f"teacher {s['TEACHER']}: computes in {precision} ({why})")
    pairs = frame["text_pair"].tolist() if "text_pair" in frame else None
    groups = [r.train_rows, r.test_rows]  # the validation split is the student's own; the test split as its run's
    scored = teacher.logits(
        frame["text"].tolist(),
        pairs,
        groups,
        s["DATA_DIR"],
        r.device,
        precision,
        s["EVAL_BATCH_SIZE"],
        r.rank,
        r.world,
    )
    logits = torch.full((len(frame), scored.shape[1]), math.nan)
    logits[torch.as_tensor(np.concatenate(groups))] = scored
    labelled = np.zeros(len(frame), dtype=bool)
    labelled[: r.n_train] = True
    print(
        f"teacher {s['TEACHER']}: soft targets for {r.n_train:,} labelled and {r.n_transfer:,} unlabelled texts"
        + f" ({r.n_augmented:,} of them augmented copies)" * bool(r.n_augmented)
        + " "
        f"(DISTILL_ALPHA {s['DISTILL_ALPHA']}, DISTILL_TEMPERATURE {s['DISTILL_TEMPERATURE']})"
    )
    about = {"name": s["TEACHER"], "model_name": teacher.model_name, "max_length": teacher.max_length}
    return Distiller(logits, labelled, r.task, s["DISTILL_ALPHA"], s["DISTILL_TEMPERATURE"], r.device, about)


def check_hidden(s):
    """DISTILL_HIDDEN's preconditions, from the settings and the two configs, before any data is read: a teacher, a
    student made from its own model (STUDENT_LAYERS of the teacher's model/ or checkpoint), of the same width."""
    weight = s["DISTILL_HIDDEN"]
    if weight < 0 or weight and not s["TEACHER"] or weight and not s["STUDENT_LAYERS"]:
        why = (
            "must not be negative"
            if weight < 0
            else "needs a TEACHER (--teacher)"
            if not s["TEACHER"]
            else "needs a student made from the teacher's own layers: give --student-layers N and --model-name the "
            "teacher's model"
        )
        raise RecipeError(
            f"DISTILL_HIDDEN (--distill-hidden) {why} (it weighs the cosine loss between each student layer's output "
            f"and the teacher layer it came from); got {weight}"
        )
    if not weight:
        return
    source, _ = teacher_source(s["TEACHER"])
    try:
        theirs = AutoConfig.from_pretrained(source, trust_remote_code=False)
        ours = AutoConfig.from_pretrained(s["MODEL_NAME"], trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise RecipeError(
            f"DISTILL_HIDDEN (--distill-hidden): the teacher's or the student's config does not load "
            f"({' '.join(str(e).split())[:160]})"
        ) from None
    if ours.hidden_size != theirs.hidden_size:
        raise RecipeError(
            f"DISTILL_HIDDEN (--distill-hidden) compares hidden states of one width, but {s['MODEL_NAME']}'s are "
            f"{ours.hidden_size} wide and the teacher's {theirs.hidden_size}; make the student from the teacher's "
            f"model (--model-name {source}) or use --distill-hidden 0"
        )
    same = Path(s["MODEL_NAME"]).expanduser().resolve() == Path(source).expanduser().resolve()
    if not same and str(s["MODEL_NAME"]) != str(source):
        raise RecipeError(
            f"DISTILL_HIDDEN (--distill-hidden) compares each student layer with the teacher layer it came from, but "
            f"MODEL_NAME {s['MODEL_NAME']} is not the teacher's model ({source}): the student's layers would come "
            f"from another model; give --model-name {source}, or use --distill-hidden 0"
        )


class HiddenStates:
    """The teacher's hidden states at the outputs of the layers a student kept (its STUDENT_LAYERS), for every training
    row, token by token on the student's own token ids; and the cosine loss that draws each student layer's output
    towards them (Sanh et al. 2019's L_cos, at every kept layer): per row, the mean over its tokens and the layers of
    1 - cos(student, teacher), x DISTILL_HIDDEN."""

    def __init__(self, states, starts, weight):
        self.states = states  # [tokens of every training row, layers, width], bf16
        self.starts = starts  # starts[row]: the row's first token in states; -1 for rows without (not training)
        self.weight = weight

    def loss(self, hidden_states, attention_mask, rows):
        """The batch's summed loss: hidden_states (the student's, embeddings first), attention_mask [B, T], rows the
        batch's rows in the frame."""
        student = torch.stack(hidden_states[1:], dim=2).float()  # [B, T, layers, width]
        teacher = torch.zeros_like(student)
        lengths = attention_mask.sum(-1).tolist()
        for i, (row, length) in enumerate(zip(np.asarray(rows).tolist(), lengths, strict=True)):
            start = int(self.starts[row])
            teacher[i, :length] = self.states[start : start + length].to(student.device, torch.float32)
        cosine = F.cosine_similarity(student, teacher, dim=-1)  # [B, T, layers]
        mask = attention_mask.to(cosine.dtype).unsqueeze(-1)
        per_row = ((1 - cosine) * mask).sum((1, 2)) / (mask.sum((1, 2)) * cosine.shape[-1])
        return self.weight * per_row.sum()


def hidden_states(r, layers, ids, offsets, types, pad_id, precision, weight):
    """HiddenStates of the teacher (r.s["TEACHER"]) for the training rows of r, on the student's token ids (ids,
    offsets, types), at the outputs of its layers `layers`: computed once in batches (shared by the processes under
    torchrun) and cached in DATA_DIR under a key of the teacher's weights, the token ids and the layers; the teacher is
    freed before this returns."""
    s = r.s
    source, _ = teacher_source(s["TEACHER"])
    rows = np.asarray(r.train_rows)
    lengths = (offsets[1:] - offsets[:-1]).numpy()
    token_sha = hashlib.sha256(ids.numpy().tobytes() + offsets.numpy().tobytes()).hexdigest()
    key = {
        "teacher_sha256": r.recorded["teacher_sha256"],
        "tokens_sha256": token_sha,
        "rows": len(rows),
        "layers": list(layers),
        "precision": precision,
    }
    path = (
        Path(s["DATA_DIR"]) / f"hidden-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}.pt"
    )
    starts = np.full(len(lengths), -1, dtype=np.int64)
    starts[rows] = np.concatenate([[0], np.cumsum(lengths[rows])[:-1]])
    total = int(lengths[rows].sum())
    cached = None
    if path.exists():
        try:
            cache = torch.load(path, weights_only=True, mmap=True)
            cached = cache["states"] if cache["key"] == key and cache["states"].shape[0] == total else None
        except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
            print(f"hidden-state cache {path} is unreadable ({type(e).__name__}); computing it again")
    if all(gathered(cached is not None, r.world)):
        print(f"teacher {s['TEACHER']}: its hidden states for {len(rows):,} texts from {path}")
        return HiddenStates(cached, starts, weight)
    model = AutoModelForSequenceClassification.from_pretrained(source, trust_remote_code=False).to(r.device).eval()
    width = model.config.hidden_size
    print(
        f"teacher {s['TEACHER']}: hidden states of its layers ({', '.join(map(str, layers))}) for {len(rows):,} "
        f"texts ({total:,} tokens, {total * len(layers) * width * 2 / 1e9:.2f} GB in bf16), in {precision}"
    )
    states = torch.zeros(total, len(layers), width, dtype=torch.bfloat16)
    no_labels = torch.zeros(len(lengths), dtype=torch.int64)
    batches = [rows[b] for b in make_batches(lengths[rows], s["EVAL_BATCH_SIZE"])]
    with torch.inference_mode(), autocast_for(r.device, precision):
        for batch in progress(batches[r.rank :: r.world], desc="teacher hidden"):
            tensors = [t.to(r.device) for t in collate(batch, ids, offsets, no_labels, pad_id, types=types)]
            outputs = model(**model_inputs(tensors), output_hidden_states=True)
            kept = torch.stack([outputs.hidden_states[layer + 1] for layer in layers], dim=2).float().cpu()
            for i, row in enumerate(batch.tolist()):
                start, length = int(starts[row]), int(lengths[row])
                states[start : start + length] = kept[i, :length].to(torch.bfloat16)
    del model
    gc.collect()
    if r.device.type == "cuda":
        torch.cuda.empty_cache()
    if r.world > 1:  # each process computed every world-th batch: the sum is every row's
        states = all_sum(states.float(), r.world).to(torch.bfloat16)
    if local_leader():
        atomic_write(path, lambda f: torch.save({"key": key, "states": states}, f))
    return HiddenStates(states, starts, weight)
