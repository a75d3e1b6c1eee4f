"""What a script's training loop calls, from the command line to metrics.json: the run's start, its epochs and batches
(resumed where a checkpoint left off), the record of each, checkpoints, the signals (Ctrl-C, SIGTERM) that stop it at
one, and the final test. The loop itself (forward, backward, optimizer step) is the script's."""

import contextlib
import dataclasses
import gc
import json
import math
import shlex
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from . import distill, parallel
from .augment import augmented_frame
from .batches import loader, make_batches, to_device
from .board import Board
from .data import (
    check_labels,
    file_sha256,
    file_splits,
    given_label_names,
    is_regression,
    load_reviews,
    metadata_names,
    relabel,
    split,
    targets,
)
from .metrics import better, headline, scores, shown
from .parallel import PeerFailed, agreed, agreeing, all_sum, gathered, leader, leader_first, local_leader, progress
from .runfolder import atomic_write, locked, remove_stale, usable_folder
from .settings import SPLIT_SIZES, RecipeError, check_settings, label_columns, parse_settings, resolve_run


def main(run, defaults, script, argv=None):
    """A script's command line: run(settings, given, held) with defaults overridden from argv, held lasting the run.
    A RecipeError is one line and exit 1; Ctrl-C or SIGTERM one line on how to resume, and exit 128 + the signal."""
    settings, given = parse_settings(sys.argv[1:] if argv is None else argv, defaults, script)
    checkpoint, Run.script = Path(settings["OUT_DIR"]) / "checkpoint.pt", script and Path(script).name
    previous = {s: signal.signal(s, signals) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.ExitStack() as held:
            return run(settings, given, held)
    except RecipeError as e:  # one line from each machine's first process (the others' would repeat it)
        raise SystemExit(f"error: {e}" if local_leader() and not isinstance(e, PeerFailed) else 1) from None
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        torchrun = (parallel.torchrun_env() or {}).get("WORLD_SIZE", 1) > 1
        where = (
            (
                f"the run is saved in {checkpoint}; continue it with: {'torchrun <its options>' if torchrun else 'python'}"
                f" {Path(script).name} --out-dir {shlex.quote(str(checkpoint.parent))} --resume"
                + torchrun
                * (
                    " (machines that share no filesystem need a copy of it at that path first; torchrun reports the "
                    "stop as a failure, the checkpoint is complete)"
                )
            )
            if checkpoint.exists()
            else "nothing to resume"
        )
        where = Run.interrupted or where
        if leader():
            print(f"{chr(10) * sys.stderr.isatty()}interrupted ({signum.name}): {where}", file=sys.stderr)
        raise SystemExit(128 + signum) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if dist.is_initialized():  # free the DDP wrapper (a reference cycle) first: where it lived on into the
            gc.collect()  # interpreter's exit, a gloo process sometimes aborted there after a finished run
            dist.destroy_process_group()


class Run:
    """One run: settings s (the checkpoint's with --resume), device, rank, world (processes), data and state."""

    script = None  # the file name of the script main() runs, recorded in checkpoints and metrics.json
    observer = None  # observer(epoch, score) after each epoch, where a sweep's trial runs: True stops the run there
    interrupted = None  # what a stopped run's line says of resuming it, where that is not the user's to do (a sweep)

    def __init__(self, settings, given, held, positive, check=lambda s, given: s):
        """Processes started; settings checked, OUT_DIR locked, what killed runs left removed: agreeing()."""
        self.device, self.rank, self.world = parallel.start_processes(settings["DEVICE"])
        with agreeing(self.world):
            self.out_dir = Path(settings["OUT_DIR"])
            usable_folder(self.out_dir, "OUT_DIR (--out-dir)")
            self.checkpoint_path = self.out_dir / "checkpoint.pt"
            s, self.checkpoint = resolve_run(settings, given, self.checkpoint_path, self.script)
            self.recorded = (self.checkpoint or {}).get("recorded", {})  # what a resumed run resolved when it began
            self.given = self.recorded.setdefault("given", sorted(given))  # the settings its command line gave
            self.s = s = checked_settings(s, given, positive, check)
            usable_folder(s["DATA_DIR"], "DATA_DIR (--data-dir)")
            Board.check(s["TENSORBOARD"])  # before a download, not after
            if leader():
                held.enter_context(locked(self.out_dir))  # a second run into OUT_DIR is refused while this one lasts
                remove_stale(self.out_dir)  # what killed runs left behind
                remove_stale(self.out_dir / "model")
            if local_leader():
                remove_stale(s["DATA_DIR"])  # each machine's own
        held.push(self.ended)
        print("settings: " + json.dumps(s))

    @classmethod
    def reading(cls, settings, given):
        """A Run that only reads a finished run's data as it did (load_data(), index()): export.py checks an export on
        the run's test split. One process, no checkpoint, no OUT_DIR; the transfer texts are not read."""
        r = cls.__new__(cls)
        r.s, r.given, r.checkpoint = {**settings, "UNLABELED_URL": ""}, list(given), None
        r.device, r.rank, r.world = torch.device("cpu"), 0, 1
        return r

    def load_data(self):
        """The data (file_splits()), downloaded once, checked alike on every machine and at --resume, as one frame."""
        s, loaded, parts = self.s, {}, {}
        files = file_splits(s, self.given)
        with leader_first(self.world):  # DATA_URL first: its labels name the other files' (relabel())
            path, rows, own = load_reviews(s["DATA_URL"], s["DATA_DIR"], s, "DATA_URL")
            self.names, renamed = given_label_names(s, self.given, own, metadata_names(path, s), path)
            loaded["DATA_URL"] = path, rows, self.names
            self.regression = is_regression(rows)  # TASK auto: the training file's labels decide for every file
            task = {**s, "TASK": "regression" if self.regression else "classification"}
            for url in files:
                if url != "DATA_URL":  # integers without names of their own are named as the training file's
                    path, rows, own = load_reviews(
                        s[url], s["DATA_DIR"], task, url, self.names, "the training file's labels"
                    )
                    own = [renamed.get(label, label) for label in own] if metadata_names(path, s) else own
                    loaded[url] = path, rows, own
            if s.get("UNLABELED_URL"):  # texts alone, for the teacher to label: any labels it has are not read
                path, texts, _ = load_reviews(
                    s["UNLABELED_URL"],
                    s["DATA_DIR"],
                    s,
                    "UNLABELED_URL",
                    named_by="the training file's",
                    texts_only=True,
                )
                loaded["UNLABELED_URL"] = path, texts, None  # no label names of its own
        shas = [file_sha256(path) for path, _, _ in loaded.values()]
        self.data_sha256 = " ".join(shas)  # of each file, DATA_URL's first, UNLABELED_URL's last
        before = (self.checkpoint or {}).get("data_sha256", self.data_sha256).split()
        for (url, (path, rows, own)), sha, was in zip(loaded.items(), shas, before, strict=True):
            hosts = dict(gathered((sha, socket.gethostname()), self.world))  # each checksum and a machine that has it
            if len(hosts) > 1:
                raise RecipeError(
                    f"the machines read different data from {s[url]}: "
                    + "; ".join(f"{h} a file of SHA-256 {c[:12]}…" for c, h in hosts.items())
                    + f"; give each machine the same "
                    f"file (delete {path} where it differs to download it again)"
                )
            if sha != was:
                raise RecipeError(
                    f"{path} is not the file the checkpoint was trained on (its checksum differs): put "
                    f"the original back to resume, or start over without --resume in another --out-dir"
                )
            if url == "UNLABELED_URL":
                continue
            chunks = split(relabel(rows, own, self.names, path), files[url], s["SHUFFLE"], s["SEED"], url, self.given)
            parts.update(zip(files[url], chunks, strict=True))
        parts = [parts[size] for size in SPLIT_SIZES]
        check_labels(*parts, self.names, s["SHUFFLE"], lists=len(label_columns(s)) == 1)
        self.multi = "label" not in parts[0]  # a 0/1 column per class: several label columns, or one of lists
        if self.regression and s["CLASS_WEIGHTS"] != "none":
            raise RecipeError(
                f"CLASS_WEIGHTS (--class-weights) {s['CLASS_WEIGHTS']} weights classes, but "
                f"{label_columns(s)[0]} holds scores (a regression task); drop --class-weights"
            )
        self.task = "regression" if self.regression else "multi_label" if self.multi else "single_label"
        self.n_train, self.n_valid, self.n_test = map(len, parts)
        frame = pd.concat(parts)
        self.n_transfer = 0
        if "UNLABELED_URL" in loaded:  # after the test split, each label a placeholder that no loss reads
            transfer = loaded["UNLABELED_URL"][1]
            if ("text_pair" in frame) != ("text_pair" in transfer):
                raise RecipeError("UNLABELED_URL (--unlabeled-url) needs the data's text columns, both of a pair")
            transfer = transfer_texts(transfer, frame, self.n_train, s["UNLABELED_URL"])
            self.n_transfer = len(transfer)
            frame = pd.concat([frame, unlabelled_rows(transfer, frame, self.regression)])
        self.n_augmented = 0
        if s.get("DISTILL_AUGMENT"):  # copies of the training texts for the teacher to label, after any others
            copies = augmented_frame(
                frame.iloc[: self.n_train], s["DISTILL_AUGMENT"], s["SEED"], distill.mask_token(s["TEACHER"])
            )
            self.n_augmented = len(copies)
            self.n_transfer += len(copies)
            frame = pd.concat([frame, unlabelled_rows(copies, frame, self.regression)])
            print(
                f"DISTILL_AUGMENT {s['DISTILL_AUGMENT']}: {len(copies):,} augmented copies of the {self.n_train:,} "
                f"training texts (words masked, replaced by words of the training texts, n-gram windows; Tang et al. "
                f"2019) join the transfer texts"
            )
        # the rows trained on: the training split's, then the transfer texts'; the test split's
        self.train_rows = np.r_[0 : self.n_train, len(frame) - self.n_transfer : len(frame)]
        self.test_rows = np.arange(self.n_train + self.n_valid, self.n_train + self.n_valid + self.n_test)
        return frame

    def index(self, ids, offsets, frame):
        """(ids, offsets, targets) of load_data()'s frame, as collate() takes them; the evaluation batches; the loss's
        class weights (class_weights(): None unless CLASS_WEIGHTS), printed once and kept for metrics.json."""
        self.labels = targets(frame, self.names)
        self.class_weights = class_weights(self.labels[: self.n_train], len(self.names), self.s["CLASS_WEIGHTS"])
        if self.class_weights is not None:
            print(
                f"class weights ({self.s['CLASS_WEIGHTS']}{', on positives' * self.multi}): "
                + ", ".join(
                    f"{name} {weight:.4f}" for name, weight in zip(self.names, self.class_weights.tolist(), strict=True)
                )
                + " (train_loss is weighted by them; the validation and test losses are not)"
            )
            self.class_weights = self.class_weights.to(self.device)
        self.lengths = (offsets[1:] - offsets[:-1]).numpy()
        a, b = self.n_train, self.n_train + self.n_valid
        self.valid_batches = [a + batch for batch in make_batches(self.lengths[a:b], self.s["EVAL_BATCH_SIZE"])]
        test = self.test_rows
        self.test_batches = [test[batch] for batch in make_batches(self.lengths[test], self.s["EVAL_BATCH_SIZE"])]
        return ids, offsets, self.labels

    def resume(self, parts, best, **recorded):
        """parts ({name: model, optimizer, ...}) and recorded (what the run resolved when it began: its precision) go into
        every checkpoint; --resume restores them and each process's random state, once best (the model's path) is found."""
        self.parts, self.recorded = parts, {**self.recorded, **recorded}
        self.state = {
            "epoch": 1,
            "batch": 0,
            "history": [],
            "best_valid": None,
            "best_epoch": None,
            "stopped_early_at": None,
            "batch_losses": [],
            "correct": 0,
            "seconds": 0.0,
        }
        before = self.recorded.setdefault("world_sizes", [self.world])  # older checkpoints: not known
        if self.checkpoint is None:
            return
        with agreeing(self.world):
            if leader() and self.checkpoint["state"]["best_epoch"] is not None and not Path(best).exists():
                raise RecipeError(
                    f"the run's best model so far (epoch {self.checkpoint['state']['best_epoch']}), "
                    f"{best}, is missing: put it back to resume, or start over without --resume"
                )
        if before[-1] != self.world:
            before.append(self.world)
            print(
                f"resuming with {self.world} processes a run that had {before[-2]}: the result will differ slightly "
                f"from an uninterrupted run's (metrics.json's world_sizes records both)"
            )
        for name, part in parts.items():
            part.load_state_dict(self.checkpoint[name])
        self.state = self.checkpoint["state"]
        if self.rank > 0:  # the checkpoint holds the sums over all processes: rank 0 carries them on
            self.state.update(batch_losses=[0.0] * self.state["batch"], correct=0)
        rng = own_random_state(self.checkpoint["rng"], self.rank)
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        print(
            f"resuming {self.checkpoint_path}: epoch {self.state['epoch']}, batch {self.state['batch']}/"
            f"{math.ceil(len(self.train_rows) / self.s['BATCH_SIZE'])}"
        )

    def save_checkpoint(self, **state):
        """The run as it stands, written by rank 0, with every process's random state (dropout draws differ)."""
        self.state.update(state)
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        rng = gathered({"torch": torch.get_rng_state(), "cuda": cuda}, self.world)
        checkpoint = {
            "settings": self.s,
            "script": self.script,
            "data_sha256": self.data_sha256,
            "state": self.state,
            "rng": rng,
            "recorded": self.recorded,
            **{name: part.state_dict() for name, part in self.parts.items()},
        }
        if leader():
            atomic_write(self.checkpoint_path, lambda f: torch.save(checkpoint, f))

    def epochs(self):
        """The epochs left, from the checkpoint's, PATIENCE ending them early; Ctrl-C, SIGTERM stop at a checkpoint."""
        signals.requested, signals.deferred, self.training, self.grad_norm = False, True, True, None
        s, accum = self.s, self.s["GRAD_ACCUM_STEPS"]
        self.steps_per_epoch = math.ceil(math.ceil(len(self.train_rows) / s["BATCH_SIZE"]) / accum)
        started = self.recorded.setdefault("tensorboard", time.strftime("%Y%m%d-%H%M%S"))  # this run's folder
        self.board = Board(
            self.out_dir / "tensorboard" / started,
            self.step(self.state["epoch"], self.state["batch"]),
            s["TENSORBOARD"],
            leader(),
        )
        for epoch in range(self.state["epoch"], self.s["EPOCHS"] + 1):
            if self.state.get("stopped_early_at"):  # (checkpoints from before PATIENCE lack it)
                break
            yield epoch
        signals.deferred, self.training = False, False

    def batches(self, epoch, collate):
        """The epoch's training batches (Batch: this process's share, collated, on the device) from the checkpoint's."""
        s, state, world, accum = self.s, self.state, self.world, self.s["GRAD_ACCUM_STEPS"]
        generator = torch.Generator().manual_seed(s["SEED"] + epoch)
        rows = self.train_rows  # the training split's, then any transfer texts'
        batches = [rows[b] for b in make_batches(self.lengths[rows], s["BATCH_SIZE"], generator, s["LENGTH_GROUPING"])]
        self.epoch, self.epoch_start = epoch, time.perf_counter() - state["seconds"]
        self.batch_losses = torch.zeros(len(batches), device=self.device)
        self.batch_losses[: state["batch"]] = torch.tensor(state["batch_losses"])
        self.correct = torch.tensor(state["correct"], device=self.device)
        self.shares = [parallel.share(batch, self.rank, world) for batch in batches]  # this process's parts
        self.bar = progress(
            loader([part for part, _ in self.shares[state["batch"] :]], collate, self.device),
            desc=f"epoch {epoch}/{s['EPOCHS']}",
            initial=state["batch"],
            total=len(batches),
        )
        self.sizes, self.window = list(map(len, batches)), (time.perf_counter(), state["batch"])  # since the last log
        for i, tensors in enumerate(self.bar, start=state["batch"]):
            first, weight, self.batch_index = i - i % accum, self.shares[i][1], i
            yield Batch(
                to_device(tensors, self.device),
                i,
                (i + 1) % accum == 0 or i + 1 == len(batches),
                sum(map(len, batches[first : first + accum])) / world if weight else math.inf,
                weight,
                self.shares[i][0],
            )
        self.bar.close()
        self.train_seconds = time.perf_counter() - self.epoch_start

    def record(self, batch, loss_sum, correct, grad_norm=None):
        """A batch's summed loss and correct count (and the unclipped gradient norm, at a step) into the epoch's sums;
        every LOG_EVERY batches the mean loss on the bar (not finite: diverged) and TensorBoard; a stop request after a
        step ends the run with a checkpoint, all processes after the same step."""
        s, i, n = self.s, batch.index, len(self.batch_losses)
        self.batch_losses[i], self.correct = loss_sum.detach() * batch.weight, self.correct + correct * batch.weight
        self.grad_norm = self.grad_norm if grad_norm is None else grad_norm
        if (i + 1) % s["LOG_EVERY"] == 0 or i + 1 == n:
            losses = all_sum(self.batch_losses[: i + 1].clone(), self.world)  # all processes': they stop together
            loss = losses.sum().item() / max(sum(self.sizes[: i + 1]), 1)
            if not math.isfinite(loss):
                overflow = bool(losses.isfinite().all())  # each finite, their sum beyond float32
                bad = int(losses.argmax() if overflow else torch.nonzero(~losses.isfinite())[0])
                raise self.diverged(
                    f"at epoch {self.epoch}, batch {bad + 1}",
                    f"the loss is {losses[bad].item()}" + " (its sum over the epoch overflows)" * overflow,
                )
            self.bar.set_postfix(loss=f"{loss:.4f}")
            self.log(i)
        due = batch.ends_step and stop_check_due(i + 1, n, s["GRAD_ACCUM_STEPS"], s["LOG_EVERY"], self.world)
        signum = agreed(signals.requested, self.device, self.world) if due else None  # all agree, then stop alike
        if signum:
            losses, correct = all_sum(self.batch_losses, self.world), all_sum(self.correct, self.world)
            self.save_checkpoint(
                epoch=self.epoch,
                batch=i + 1,
                batch_losses=losses[: i + 1].tolist(),
                correct=correct.item(),
                seconds=time.perf_counter() - self.epoch_start,
            )
            raise Interrupted(signum)  # the signal one of them got

    def log(self, i):
        """TensorBoard once a step: loss since the last log, learning rate, gradient norm, reviews per second."""
        (since, first), step = self.window, self.step(self.epoch, i + 1)
        if self.board.writer is None or step == self.board.last_step:
            return
        self.board.last_step = step
        examples = sum(len(part) * weight for part, weight in self.shares[first : i + 1])
        seconds, self.window = time.perf_counter() - since, (time.perf_counter(), i + 1)
        self.board.scalars(
            {
                "train/loss": self.batch_losses[first : i + 1].sum().item() / max(examples, 1),
                "train/grad_norm": None if self.grad_norm is None else float(self.grad_norm),
                "train/reviews_per_second": sum(self.sizes[first : i + 1]) / seconds,
            },
            step,
        )
        self.board.learning_rates(self.parts["optimizer"].param_groups, step)

    def step(self, epoch, batches_done):
        """The optimizer steps taken when batches_done batches of epoch are: TensorBoard's x."""
        return (epoch - 1) * self.steps_per_epoch + math.ceil(batches_done / self.s["GRAD_ACCUM_STEPS"])

    def end_epoch(self, epoch, logits, save_best):
        """The epoch's validation scores (not finite: diverged) beside its training numbers; save_best(epoch) (rank 0)
        keeps a better epoch's model; a checkpoint. PATIENCE epochs without a better one, or a stop request, end it."""
        s, state, a = self.s, self.state, self.n_train
        if not torch.isfinite(logits).all():  # a model that diverged is never kept
            raise self.diverged(f"after epoch {epoch}", "the validation logits are not finite")
        valid = scores(logits, self.labels[a : a + self.n_valid], self.names, s["THRESHOLD"])
        if not math.isfinite(valid["loss"]):
            raise self.diverged(f"after epoch {epoch}", f"the validation loss is {valid['loss']}")
        batch_losses, correct = all_sum(self.batch_losses, self.world), all_sum(self.correct, self.world)
        train_loss = batch_losses.sum().item() / len(self.train_rows)  # the transfer texts' soft loss too
        distilled = bool(s.get("TEACHER"))  # train_loss is the distillation loss; the labels' figures are their own
        if self.regression:  # the mean squared error is the loss: its root is in the scores' own units
            mse = correct.item() / a if distilled else train_loss  # distilled: the labelled rows' squared error
            train = {"train_loss": train_loss, "train_rmse": math.sqrt(mse)}
            measured = {f"valid_{key}": valid[key] for key in ("loss", "pearson", "spearman", "rmse")}
            train_shown = f"train RMSE {train['train_rmse']:.4f}"
        else:
            train = {"train_loss": train_loss, "train_accuracy": correct.item() / a}
            measured = {
                "valid_loss": valid["loss"],
                "valid_accuracy": valid["accuracy"],
                **({"valid_macro_roc_auc": valid["macro_roc_auc"]} if self.multi else {}),
            }
            train_shown = f"train accuracy {train['train_accuracy']:.4f}"
        record = {"epoch": epoch, **train, **measured, "seconds": self.train_seconds}
        print(
            f"epoch {epoch}: train {'distillation ' * distilled}loss {record['train_loss']:.4f} | {train_shown} | "
            f"valid {shown(valid)} | {self.train_seconds:.1f} s"
        )
        state["history"].append(record)
        self.board.scalars(
            {
                "train/epoch_distillation_loss" if distilled else "train/epoch_loss": train_loss,
                "train/epoch_accuracy": train.get("train_accuracy"),
                "train/epoch_rmse": train.get("train_rmse"),
                "valid/loss": valid["loss"],
                "valid/accuracy": valid.get("accuracy"),
                "valid/macro_roc_auc": valid.get("macro_roc_auc"),
                "valid/pearson": valid.get("pearson"),
                "valid/spearman": valid.get("spearman"),
                "valid/rmse": valid.get("rmse"),
            },
            self.step(epoch + 1, 0),
        )
        if better(valid, state["best_valid"]):
            state.update(best_valid=valid, best_epoch=epoch)
            if leader():
                save_best(epoch)
        pruned = Run.observer is not None and Run.observer(epoch, valid[headline(valid)])  # as metrics.json records it
        if pruned and epoch < s["EPOCHS"]:  # sweep.py's pruner: the best epoch so far is tested and saved as a run's
            state.update(stopped_early_at=epoch, pruned=True)
            print(
                f"epoch {epoch}: the sweep's pruner stops this trial (its validation score is below the median of "
                f"earlier trials' at this epoch); best epoch {state['best_epoch']}"
            )
        elif s["PATIENCE"] and epoch - state["best_epoch"] >= s["PATIENCE"] and epoch < s["EPOCHS"]:
            state["stopped_early_at"] = epoch
            what = {"pearson": "Pearson correlation", "macro_roc_auc": "macro ROC AUC"}.get(headline(valid), "accuracy")
            print(
                f"epoch {epoch}: no better validation {what} for "
                f"{s['PATIENCE']} epochs (PATIENCE): stopping early, best epoch {state['best_epoch']}"
            )
        self.save_checkpoint(epoch=epoch + 1, batch=0, batch_losses=[], correct=0, seconds=0.0)
        if signum := agreed(signals.requested, self.device, self.world):  # also after the last epoch
            raise Interrupted(signum)

    def ended(self, kind, error, traceback):
        """held's exit: stop requests no longer deferred; out of memory, an overflowing step as what one can change."""
        signals.deferred = False
        if getattr(self, "board", None):
            self.board.close()
        s = self.s
        if isinstance(error, torch.OutOfMemoryError):
            length = f" at --max-length {s['MAX_LENGTH']}" if "MAX_LENGTH" in s else ""
            raise RecipeError(
                f"out of GPU memory with --batch-size {s['BATCH_SIZE']}{length}: lower --batch-size "
                f"(e.g. {max(1, s['BATCH_SIZE'] // 2)}) and raise --grad-accum-steps (e.g. "
                f"{s['GRAD_ACCUM_STEPS'] * 2}) for the same effective batch"
                f"{', or lower --max-length' if length else ''}"
            ) from error
        if isinstance(error, RuntimeError) and "without overflow" in str(error) and getattr(self, "training", False):
            raise self.diverged(
                f"at epoch {self.epoch}, batch {self.batch_index + 1}", "the optimizer step overflows"
            ) from None
        return False

    def diverged(self, where, what):
        """The error for a run whose numbers stopped being finite: where, what, and what to try. Scores whose squared
        errors from their mean, over the training split, pass float32's range overflow whatever the learning rate."""
        if getattr(self, "regression", False) and hasattr(self, "labels"):
            train = self.labels[: self.n_train].double()
            spread = float((train - train.mean()).abs().max())
            if spread**2 * self.n_train >= torch.finfo(torch.float32).max:
                return RecipeError(
                    f"training diverged {where}: {what}; the scores are too large for their squared errors "
                    f"(up to {spread:.3g} from their mean, squared and summed over {self.n_train:,} rows) to fit "
                    f"in float32: rescale them (divide {label_columns(self.s)[0]} by a power of ten, e.g. "
                    f"1e{max(1, math.ceil(math.log10(spread)) - 3)}) and train again"
                )
        tip = " or try --precision fp32" if self.s.get("PRECISION", "fp32") != "fp32" else ""
        tip += "" if self.s["GRAD_CLIP"] else " or set --grad-clip 1"
        return RecipeError(
            f"training diverged {where}: {what}; lower --learning-rate (now {self.s['LEARNING_RATE']})"
            f"{tip}. Nothing of this epoch was kept"
        )

    def finish(self, load, model, evaluate, saved, card=None, teacher=None, **extra):
        """The best epoch's model, reloaded by load() as a user would (rank 0; the others take its weights into model),
        tested (beside its teacher, a Distiller, where it has one); then card(metrics) and metrics.json (rank 0)
        replace each machine's checkpoint and the other script's model. A stop request during the test stops all
        processes after it."""
        signals.deferred, state = True, self.state
        with agreeing(self.world):
            best = load() if leader() else model
        parallel.broadcast_weights(best, self.world)
        test_logits = evaluate(best, self.test_batches)
        test = scores(test_logits, self.labels[self.test_rows], self.names, self.s["THRESHOLD"])
        train_seconds = sum(record["seconds"] for record in state["history"])
        cuda = self.device.type == "cuda"
        devices = gathered(torch.cuda.get_device_name(self.device) if cuda else str(self.device), self.world)
        if signum := agreed(signals.requested, self.device, self.world):
            raise Interrupted(signum)
        print(
            f"best epoch {state['best_epoch']}: valid {shown(state['best_valid'])} | test {shown(test)} | "
            f"trained {train_seconds:.1f} s"
        )
        taught = teacher.report(test_logits, self) if teacher else None
        if taught:
            agreement = "undefined" if taught["agreement"] is None else f"{taught['agreement']:.4f}"
            print(f"teacher {taught['name']}: test {shown(taught['test'])} | the student agrees on {agreement}")
        weights = self.class_weights
        metrics = {
            "settings": self.s,
            "labels": self.names,
            "multi_label": self.multi,
            "task": self.task,
            "class_weights": None if weights is None else dict(zip(self.names, weights.tolist(), strict=True)),
            "examples": {"train": self.n_train, "valid": self.n_valid, "test": self.n_test},
            **({"transfer_texts": self.n_transfer} if self.n_transfer else {}),
            **({"augmented_texts": self.n_augmented} if self.n_augmented else {}),
            "epochs": state["history"],
            "best_epoch": state["best_epoch"],
            "stopped_early_at": state.get("stopped_early_at"),
            **({"pruned": True} if state.get("pruned") else {}),  # by sweep.py's pruner, at stopped_early_at
            "valid_accuracy": state["best_valid"].get("accuracy"),
            "test_accuracy": test.get("accuracy"),
            "valid": state["best_valid"],
            "test": test,
            "train_seconds": train_seconds,
            "device": devices[0],
            "devices": devices,
            "world_size": self.world,
            "world_sizes": self.recorded["world_sizes"],
            "script": self.script,
            "given": self.given,  # the settings its command line gave (beside a file of their own, sizes mean more)
            **extra,
            **({"teacher": taught} if taught else {}),
            "parameters": sum(p.numel() for p in best.parameters()),
            "peak_gpu_memory": torch.cuda.max_memory_allocated(self.device) if cuda else None,
        }
        final = {
            "test_accuracy": test.get("accuracy"),
            "test_loss": test["loss"],
            "test_macro_f1": test.get("macro_f1"),
            "test_macro_roc_auc": test.get("macro_roc_auc"),
            "test_pearson": test.get("pearson"),
            "test_spearman": test.get("spearman"),
            "test_rmse": test.get("rmse"),
            "valid_accuracy": state["best_valid"].get("accuracy"),
            "valid_pearson": state["best_valid"].get("pearson"),
        }
        with agreeing(self.world):  # a full disk on rank 0 stops every process, each machine's checkpoint kept
            if leader():
                if card:
                    card(metrics)
                atomic_write(
                    self.out_dir / "metrics.json", lambda f: f.write((json.dumps(metrics, indent=2) + "\n").encode())
                )
                for other in {self.out_dir / "model", self.out_dir / "model.pt"} - {Path(saved)}:  # the other script's
                    shutil.rmtree(other) if other.is_dir() else other.unlink(missing_ok=True)
        if local_leader():  # model and metrics.json are what a complete run leaves, on every machine
            self.checkpoint_path.unlink(missing_ok=True)
        self.board.scalars(
            {f"test/{k[5:]}": v for k, v in final.items() if k.startswith("test_")},
            self.step(len(state["history"]) + 1, 0),
        )  # after metrics.json: a resumed run writes once
        self.board.end(self.s, final)
        print(f"wrote {self.out_dir / 'metrics.json'} and {saved}")
        if self.world > 1:  # no process tears down its connections while another still uses them
            dist.barrier()
        return metrics


def checked_settings(s, given, positive, check):
    """The settings as every run checks them: the shared checks, distillation's, then the script's own check(s, given),
    which may fill some in (sweep.py checks a searched value with it too)."""
    check_settings(s, positive)
    if "TEACHER" in s:
        distill.check_settings(s)
    return check(s, given)


def unlabelled_rows(texts, frame, regression):
    """texts (a frame of the text column, or the pair's two) as rows of frame: each label a placeholder that no loss
    reads (transfer texts are the teacher's to label)."""
    rows = texts.copy()
    for column in frame.columns.difference(["text", "text_pair"]):
        rows[column] = 0.0 if regression else 0
    return rows[frame.columns]


def transfer_texts(transfer, frame, n_train, url):
    """The transfer texts a student may train on: none that is a validation or test text (the splits that choose and
    judge it), none that is a training text (labelled already), each once; what was left out is said. frame: the
    training, validation and test splits, in that order."""
    columns = ["text", "text_pair"] if "text_pair" in transfer else ["text"]

    def keys(part):
        return pd.MultiIndex.from_frame(part[columns])

    ours = keys(transfer)
    held_out = ours.isin(keys(frame.iloc[n_train:]))
    repeated = (ours.duplicated() | ours.isin(keys(frame.iloc[:n_train]))) & ~held_out
    if held_out.any() or repeated.any():
        print(
            f"UNLABELED_URL {url}: {held_out.sum():,} of its {len(transfer):,} texts are validation or test texts and "
            f"{repeated.sum():,} repeat a training text or an earlier one: left out; "
            f"{(~held_out & ~repeated).sum():,} remain"
        )
    kept = transfer[~held_out & ~repeated]
    if len(kept) == 0:
        raise RecipeError(
            f"UNLABELED_URL (--unlabeled-url) {url} holds no text beside the validation and test texts: give "
            f"unlabelled texts other than the data's (the labelled file itself is not one)"
        )
    return kept


def class_weights(labels, classes, kind):
    """The loss's weights for kind "balanced", from the training labels: single-label, each class's
    n_samples / (n_classes x its count), n_classes those present in training, as scikit-learn's compute_class_weight
    counts them (a class absent from training 0); multi-label, each label's positives weighted by its negatives /
    positives. None for "none"."""
    if kind == "none":
        return None
    if labels.ndim == 2:
        positives = labels.sum(0)
        return (len(labels) - positives) / positives
    counts = torch.bincount(labels, minlength=classes).double()
    weights = len(labels) / (int((counts > 0).sum()) * counts)
    return torch.where(counts > 0, weights, 0.0).float()


def own_random_state(saved, rank):
    """This process's random state from a checkpoint's: its own, or rank 0's where the run had fewer processes; of a
    checkpoint from before per-process states, rank 0's CPU state alone (its GPUs need not exist here)."""
    if isinstance(saved, dict):
        return {"torch": saved["torch"], "cuda": None}
    return saved[rank] if rank < len(saved) else saved[0]


def stop_check_due(batches_done, batches, accum, every, world):
    """Whether the processes agree on a stop request after this step: one process each step, more every `every`."""
    step, last = -(-batches_done // accum), batches_done == batches
    return world == 1 or last or step % every == 0


@dataclasses.dataclass
class Batch:
    """One training batch of this process, from Run.batches()."""

    tensors: list  # collate()'s tensors, on the device
    index: int  # in the epoch, from 0
    ends_step: bool  # the optimizer steps after this batch
    step_examples: float  # the step's examples over the processes (DDP averages); inf for a weightless stand-in
    weight: int  # 1, or 0 for a stand-in (this process had no review of the batch)
    rows: object  # the frame's rows of this share (numpy indices): a teacher's soft targets are looked up by them


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM: main() stops with one line and exit status 128 + the signal's number."""

    def __init__(self, signum=signal.SIGINT):
        super().__init__(signum)
        self.signum = signal.Signals(signum)


class Signals:
    """Ctrl-C, SIGTERM stop at once; deferred (training, the test) the first sets .requested: checkpoint, then stop."""

    deferred = requested = False

    def __call__(self, signum, frame):
        if self.requested or not self.deferred:
            raise Interrupted(signum)
        self.requested = signum
        if leader():
            print(
                f"\n{signal.Signals(signum).name}: saving a checkpoint after this step (Ctrl-C again to quit now)",
                file=sys.stderr,
            )


signals = Signals()
