"""A batch's loss, a split's logits and scikit-learn scores, the best epoch, and the numbers the log shows."""

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from .batches import loader, to_device
from .parallel import all_sum, progress


def batch_loss(logits, targets, threshold, weights=None):
    """Summed loss and correct count of a batch, in fp32: cross-entropy and accuracy, (multi-label) BCE and exact
    match, or (regression: float targets, one output) squared error and 0. weights: the classes' (multi-label: the
    positives') weights in the loss, or None."""
    logits = logits.float()
    if targets.is_floating_point() and targets.ndim == 1:
        return ((logits.squeeze(-1) - targets) ** 2).sum(), torch.zeros((), dtype=torch.int64, device=logits.device)
    if targets.ndim == 1:
        return F.cross_entropy(logits, targets, weight=weights, reduction="sum"), (logits.argmax(-1) == targets).sum()
    loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights, reduction="sum") / targets.shape[1]
    return loss, ((logits.sigmoid() > threshold) == (targets > 0.5)).all(-1).sum()


def row_losses(logits, targets, threshold, weights=None):
    """batch_loss()'s terms, one a row (a distilled run weighs each row's): each row's loss (multi-label: its mean over
    the labels) and whether it is correct (regression: never). batch_loss() keeps its own sums, which round as runs
    before distillation did."""
    logits = logits.float()
    if targets.is_floating_point() and targets.ndim == 1:
        return (logits.squeeze(-1) - targets) ** 2, torch.zeros(len(targets), dtype=torch.int64, device=logits.device)
    if targets.ndim == 1:
        losses = F.cross_entropy(logits, targets, weight=weights, reduction="none")
        return losses, (logits.argmax(-1) == targets).long()
    losses = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights, reduction="none").mean(-1)
    return losses, ((logits.sigmoid() > threshold) == (targets > 0.5)).all(-1).long()


@torch.inference_mode()
def all_logits(model, forward, batches, collate, width, device, rank, world, desc="evaluate"):
    """forward(model, batch)'s float32 logits in order, without gradients; each process takes every world-th batch."""
    model.eval()
    first = min(int(b.min()) for b in batches)
    logits = torch.zeros(sum(map(len, batches)), width, device=device)
    mine = batches[rank::world]
    bar = progress(loader(mine, collate, device), desc=desc, leave=desc != "evaluate")
    for batch, indices in zip(bar, mine, strict=True):  # the bar first: zip() exhausts it, so it ends at 100%
        logits[torch.as_tensor(indices - first, device=device)] = forward(model, to_device(batch, device)).float()
    model.train()
    return all_sum(logits, world).cpu()


def scores(logits, targets, names, threshold):
    """A split's accuracy (multi-label: exact match) and mean loss; single-label macro-F1 over the classes present in the
    truth or the predictions (scikit-learn's default: a class in neither has no F1 to average) and confusion matrix
    (rows: true class); multi-label ROC AUC per label (None where a label has one value), their mean, micro- and
    macro-F1."""
    loss, correct = batch_loss(logits, targets, threshold)
    y = targets.numpy()
    if targets.is_floating_point() and targets.ndim == 1:
        predicted = logits.float().squeeze(-1).numpy()
        return {
            "loss": loss.item() / len(targets),
            "rmse": float(np.sqrt(loss.item() / len(targets))),
            "pearson": correlation(pearsonr, predicted, y),
            "spearman": correlation(spearmanr, predicted, y),
        }
    result = {"accuracy": correct.item() / len(targets), "loss": loss.item() / len(targets)}
    if targets.ndim == 1:
        predicted = logits.argmax(-1).numpy()
        matrix = confusion_matrix(y, predicted, labels=range(len(names)))
        return {
            **result,
            "macro_f1": float(f1_score(y, predicted, average="macro", zero_division=0)),
            "recall": {
                name: float(matrix[k, k] / matrix[k].sum()) if matrix[k].sum() else None for k, name in enumerate(names)
            },
            "confusion_matrix": matrix.tolist(),
        }
    probabilities, decided = logits.sigmoid().numpy(), (logits.sigmoid() > threshold).numpy()
    auc = {
        name: float(roc_auc_score(y[:, k], probabilities[:, k])) if 0 < y[:, k].sum() < len(y) else None
        for k, name in enumerate(names)
    }
    defined = [value for value in auc.values() if value is not None]
    return {
        **result,
        "roc_auc": auc,
        "macro_roc_auc": float(np.mean(defined)) if defined else None,
        **{f"{kind}_f1": float(f1_score(y, decided, average=kind, zero_division=0)) for kind in ("micro", "macro")},
    }


def correlation(measure, predicted, true):
    """scipy's Pearson or Spearman correlation, None where either side is constant (it is undefined there)."""
    if np.ptp(predicted) == 0 or np.ptp(true) == 0:
        return None
    return float(measure(predicted, true).statistic)


def headline(result):
    """The validation number that picks the best epoch: accuracy, multi-label macro ROC AUC, regression Pearson."""
    return "pearson" if "pearson" in result else "macro_roc_auc" if "roc_auc" in result else "accuracy"


def better(result, best):
    """Whether validation scores beat the best (None at first), by their headline()."""
    if best is None:
        return True
    key = headline(result)
    undefined = -1.0  # an undefined score (one class in validation) is worse than any

    def value(scores):
        return undefined if scores[key] is None else scores[key]

    return value(result) > value(best)


def shown(result):
    """A split's headline numbers for the log: accuracy, for multi-label the macro ROC AUC, for regression Pearson,
    Spearman and RMSE."""
    if "pearson" in result:
        pearson, spearman = (
            ("undefined" if result[k] is None else f"{result[k]:.4f}") for k in ("pearson", "spearman")
        )
        return f"Pearson {pearson} | Spearman {spearman} | RMSE {result['rmse']:.4f}"
    if "roc_auc" not in result:
        return f"accuracy {result['accuracy']:.4f}"
    auc = "undefined" if result["macro_roc_auc"] is None else f"{result['macro_roc_auc']:.4f}"
    return f"exact-match accuracy {result['accuracy']:.4f} | macro ROC AUC {auc}"
