"""TensorBoard curves of a run in OUT_DIR/tensorboard/ (rank 0): what the loop records, every LOG_EVERY batches and
each epoch, and the final scores with the run's settings as hyperparameters. `tensorboard --logdir runs` shows them."""
from .settings import RecipeError


class Board:
    """A SummaryWriter in rank 0 when on (TENSORBOARD), else nothing. x is the optimizer step; a resumed run starts
    at its checkpoint's step, and what the interrupted run wrote after it is purged (no step twice)."""

    def __init__(self, folder, step, on, leader):
        self.writer, self.last_step = None, None
        if not on:
            return
        try:  # in every process: a missing package stops them all alike
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RecipeError("TENSORBOARD needs the tensorboard package: pip install tensorboard, or pass "
                              "--tensorboard false") from None
        if leader:
            self.writer = SummaryWriter(folder, purge_step=step + 1 if step else None)

    def scalars(self, values, step):
        """{tag: number} at step; None values (an undefined ROC AUC) are left out."""
        if self.writer:
            for tag, value in values.items():
                if value is not None:
                    self.writer.add_scalar(tag, value, step)

    def learning_rates(self, groups, step):
        """The optimizer's learning rate, or with layer-wise rates (LR_DECAY) the top and the bottom one."""
        rates = sorted({group["lr"] for group in groups})
        self.scalars({"train/learning_rate": rates[0]} if len(rates) == 1 else
                     {"train/learning_rate_top": rates[-1], "train/learning_rate_bottom": rates[0]}, step)

    def end(self, settings, scores):
        """The run's settings as hyperparameters beside its final scores; then the files are closed."""
        if self.writer:
            hyper = {k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool))}
            self.writer.add_hparams(hyper, {f"hparam/{k}": v for k, v in scores.items() if v is not None},
                                    run_name=".")
        self.close()

    def close(self):
        if self.writer:
            self.writer.close()
            self.writer = None
