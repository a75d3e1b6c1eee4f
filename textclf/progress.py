"""Progress bars: tqdm on a terminal, a plain line every 10% elsewhere, and only in the process that prints."""
import io
import math
import sys

from tqdm import tqdm

from .parallel import leader


class progress(tqdm):
    """A tqdm bar on a terminal; where stderr is not one (nohup, SLURM, CI) a plain line every 10% instead."""

    def __init__(self, *args, **kwargs):
        self.plain, self.shown = not sys.stderr.isatty(), None
        kwargs.setdefault("disable", not leader())
        if self.plain:  # tqdm draws into a sink; display() prints the lines
            kwargs.update(file=io.StringIO(), mininterval=0, miniters=1,
                          bar_format="{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, "
                                     "{rate_fmt}{postfix}]")
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        if not self.plain:
            return super().display(msg, pos)
        step = math.ceil(self.total / 10) if self.total else math.inf
        closing = self.disable  # close() disables the bar, then draws (or clears) it a last time
        if self.n != self.shown and (
                self.shown is None or closing or self.n // step > self.shown // step or self.n == self.total):
            print(self.__str__(), file=sys.stderr, flush=True)
            self.shown = self.n
        return True
