"""Data-parallel runs under torchrun: start-up, each process's share of a batch, sums, and the leader (rank 0), the
only process that prints and shows progress."""
import contextlib
import io
import math
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from .settings import RecipeError


def resolve_device(name):
    """DEVICE: auto picks cuda when available, else cpu; anything else must exist on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RecipeError(f"DEVICE (--device) must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"DEVICE (--device) is {name!r} but torch sees no CUDA GPU here; use --device cpu")
    return device


def cpu_bf16():
    """The CPU's native bf16 instructions (avx512_bf16, amx_bf16), as Linux names them in /proc/cpuinfo; '' if none
    or not known."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return ""
    return " and ".join(flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags)


def auto_precision(device):
    """PRECISION=auto as (precision, why): bf16 autocast on a CUDA GPU with bf16 (fp16 on one without), and on a CPU
    that computes bf16 natively (measured here: as accurate as fp32, 2.2x as fast at 128 tokens, 1.2x at 512); fp32
    elsewhere."""
    if device.type == "cuda":
        return ("bf16", "a CUDA GPU with bf16") if torch.cuda.is_bf16_supported() else ("fp16", "a GPU without bf16")
    if device.type == "cpu" and (flags := cpu_bf16()):
        return "bf16", f"the CPU computes bf16 natively: {flags}"
    return "fp32", f"{'the CPU has no native bf16' if device.type == 'cpu' else device.type}"


def autocast_for(device, precision):
    """The context that runs a forward pass in precision (bf16, fp16 or fp32: none) on device; reusable."""
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
                          enabled=precision != "fp32")


def start_processes(device_setting):
    """(device, rank, world): under torchrun join the others (NCCL on CUDA, gloo on the CPU; DEVICE=auto takes
    cuda:LOCAL_RANK). Only rank 0 prints to stdout."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return resolve_device(device_setting), 0, 1
    local = int(os.environ["LOCAL_RANK"])
    device = resolve_device(f"cuda:{local}" if device_setting == "auto" and torch.cuda.is_available() else device_setting)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_rank() > 0:
        sys.stdout = open(os.devnull, "w")
    return device, dist.get_rank(), world


def leader():
    """True in the process that prints and writes: the only one, or rank 0 under torchrun."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def leader_first(world):
    """Rank 0 runs the block first (a download, a cache it writes), then the others, which find its result."""
    if world > 1 and not leader():
        dist.barrier()
    yield
    if world > 1 and leader():
        dist.barrier()


def share(batch, rank, world):
    """(this process's part of a batch, its weight): every world-th example from rank on, weight 1; where none is
    left, a stand-in of weight 0 (the first example), as every process takes part in the gradient all-reduce."""
    part = batch[rank::world]
    return (part, 1) if len(part) else (batch[:1], 0)


def all_sum(tensor, world):
    """The elementwise sum of tensor over all processes (itself when there is one)."""
    if world > 1:
        dist.all_reduce(tensor)
    return tensor


def agreed(flag, device, world):
    """True in every process if flag is true in any: a signal can reach the processes at different steps."""
    if world == 1:
        return bool(flag)
    return bool(all_sum(torch.tensor([float(bool(flag))], device=device), world).item())


def barrier(world):
    """Wait for all processes (nothing to wait for when there is one)."""
    if world > 1:
        dist.barrier()


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
