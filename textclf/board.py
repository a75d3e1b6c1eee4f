"""TensorBoard curves of a run in OUT_DIR/tensorboard/ (rank 0): what the loop records, every LOG_EVERY batches and
each epoch, and the final scores with the run's settings as hyperparameters. `tensorboard --logdir runs` shows them."""

import sys
import threading

from .settings import RecipeError


class Board:
    """A SummaryWriter in rank 0 (TENSORBOARD), x the optimizer step; a write failure is one line, the run goes on."""

    def __init__(self, folder, step, on, leader):
        self.writer, self.last_step, self.folder = None, None, folder
        if on and leader:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = self.write(SummaryWriter, folder, purge_step=step + 1 if step else None)

    @staticmethod
    def check(on):
        """In every process, before the data: a missing package stops them all alike, at once."""
        try:
            if on:
                import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise RecipeError(
                "TENSORBOARD needs the tensorboard package: pip install tensorboard, or pass --tensorboard false"
            ) from None

    def write(self, action, *args, **kwargs):
        """action(*args, **kwargs)'s result, or where it cannot write, one line, None and no more curves."""
        try:
            return action(*args, **kwargs)
        except OSError as e:
            self.writer = None
            print(
                f"TensorBoard: could not write {self.folder} ({e.strerror or e}); the run goes on without its curves",
                file=sys.stderr,
            )

    def scalars(self, values, step):
        """{tag: number} at step; None values (an undefined ROC AUC) are left out."""
        for tag, value in values.items():
            if value is not None and self.writer:
                self.write(self.writer.add_scalar, tag, value, step)

    def learning_rates(self, groups, step):
        """The optimizer's learning rate, or with layer-wise rates (LR_DECAY) the top and the bottom one."""
        rates = sorted({group["lr"] for group in groups})
        self.scalars(
            {"train/learning_rate": rates[0]}
            if len(rates) == 1
            else {"train/learning_rate_top": rates[-1], "train/learning_rate_bottom": rates[0]},
            step,
        )

    def end(self, settings, scores):
        """The run's settings as hyperparameters beside its final scores; then the files are closed."""
        if self.writer:
            hyper = {k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool))}
            self.write(
                self.writer.add_hparams,
                hyper,
                {f"hparam/{k}": v for k, v in scores.items() if v is not None},
                run_name=".",
            )
        self.close()

    def close(self):
        if self.writer:
            self.write(self.writer.close)
            self.writer = None


def quiet_writer_thread(args, previous=threading.excepthook):
    """The writer thread's failure reaches the run at its next write, as one line: not also as the thread's traceback."""
    if type(args.thread).__name__ != "_AsyncWriterThread":
        previous(args)


threading.excepthook = quiet_writer_thread
