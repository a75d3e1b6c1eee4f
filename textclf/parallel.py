"""Data-parallel runs under torchrun: start-up, each process's share of a batch, sums, and the leader (rank 0), the
only process that prints and shows progress."""

import contextlib
import io
import math
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from .settings import RecipeError

TIMEOUT = timedelta(minutes=60)  # a collective's limit: NCCL's default of 10 minutes is less than a first tokenization


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


def cpuinfo():
    """/proc/cpuinfo, where Linux describes the CPU; '' where there is none."""
    return Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""


def cpu_bf16():
    """The CPU's native bf16 instructions (avx512_bf16, amx_bf16), as cpuinfo() names them; '' if none or not known."""
    flags = set(cpuinfo().split())
    return " and ".join(flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags)


def cpu_name():
    """The CPU's model name, as cpuinfo() gives it; '' if not known."""
    return next((line.split(":", 1)[1].strip() for line in cpuinfo().splitlines() if line.startswith("model name")), "")


def choose_precision(device_type, native_bf16):
    """PRECISION=auto's (precision, why), from native_bf16 (true, or the CPU's flags for it): bf16 autocast on a CUDA GPU
    with it (Ampere+; fp16 with the scaler on T4, V100, which emulate bf16) and on such a CPU (as accurate as fp32, 2.2x
    as fast at 128 tokens, 1.2x at 512, measured here); fp32 elsewhere."""
    if device_type == "cuda":
        return ("bf16", "a CUDA GPU with native bf16") if native_bf16 else ("fp16", "a CUDA GPU without native bf16")
    if device_type == "cpu" and native_bf16:
        return "bf16", f"the CPU computes bf16 natively: {native_bf16}"
    return "fp32", "the CPU has no native bf16" if device_type == "cpu" else device_type


def auto_precision(device):
    """PRECISION=auto here: choose_precision() of what the device computes natively (CUDA 8.0+, ROCm, CPU flags)."""
    if device.type == "cuda":
        with torch.cuda.device(device):  # is_bf16_supported() asks the current device
            return choose_precision("cuda", torch.cuda.is_bf16_supported(including_emulation=False))
    return choose_precision(device.type, cpu_bf16() if device.type == "cpu" else "")


def predict_precision(setting, recorded, here):
    """predict.py's (precision, why): --precision where it is not auto; else the precision the run trained in
    (recorded, None for runs from before it was recorded), where this device computes it natively (here: what
    PRECISION=auto would choose on it), else fp32, which loses nothing of a bf16 or fp16 model's numbers."""
    if setting != "auto":
        return setting, "--precision"
    if recorded is None:
        return here, "the run did not record its precision; PRECISION=auto's choice here"
    if recorded == "fp32" or recorded == here:
        return recorded, f"the run trained in {recorded}"
    return "fp32", f"the run trained in {recorded}, which this device does not compute natively"


def run_precision(setting, device, recorded=None, world=1):
    """(precision, why): PRECISION, or auto resolved once when the run begins, alike everywhere, kept by --resume."""
    if setting != "auto":
        return setting, "PRECISION"
    if recorded is None:
        precision, why = auto_precision(device)
        return same_everywhere(gathered((socket.gethostname(), precision), world)), why
    here, _ = auto_precision(device)
    why = "" if here == recorded else f"; {device.type} here would choose {here}, but a resumed run keeps its precision"
    return recorded, "PRECISION=auto when the run began" + why


def same_everywhere(choices):
    """The precision all processes chose ([(host, precision)]); machines that differ (A100, V100) are refused."""
    hosts = {precision: sorted({h for h, p in choices if p == precision}) for _, precision in choices}
    if len(hosts) > 1:
        raise RecipeError(
            "PRECISION=auto chooses differently on these machines' GPUs: "
            + "; ".join(f"{precision} on {', '.join(names)}" for precision, names in sorted(hosts.items()))
            + "; pass the same --precision to all (fp16 runs on every CUDA GPU), or use GPUs of one kind"
        )
    return choices[0][1]


def autocast_for(device, precision):
    """The context that runs a forward pass in precision (bf16, fp16 or fp32: none) on device; reusable."""
    return torch.autocast(
        device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16, enabled=precision != "fp32"
    )


def process_device(setting, local_rank, local_world, cuda_available):
    """One torchrun process's DEVICE: auto and cuda mean cuda:LOCAL_RANK; cuda:N only with one process a machine."""
    if setting in ("auto", "cuda"):
        return f"cuda:{local_rank}" if cuda_available or setting == "cuda" else "cpu"
    if setting.startswith("cuda:") and local_world > 1:
        raise RecipeError(
            f"DEVICE (--device) {setting} would put all {local_world} processes of this machine on one "
            f"GPU; under torchrun use --device cuda (each process takes cuda:LOCAL_RANK), and choose "
            f"the GPUs with CUDA_VISIBLE_DEVICES"
        )
    return setting


TORCHRUN = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # it sets them all


def torchrun_env():
    """{RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE} of a torchrun worker (all of TORCHRUN set), else None."""
    if not all(name in os.environ for name in TORCHRUN):
        return None
    return {name: int(os.environ[name]) for name in TORCHRUN[:4]}


def start_processes(device_setting):
    """(device, rank, world); under torchrun joined (NCCL on each GPU, gloo on CPU) with TIMEOUT; rank 0 prints."""
    given = [name for name in TORCHRUN if name in os.environ]
    if given and len(given) < len(TORCHRUN):
        raise RecipeError(
            f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} set but not "
            f"{', '.join(name for name in TORCHRUN if name not in given)}: a data-parallel run starts "
            f"with torchrun, which sets them all; unset {' '.join(given)} for one process"
        )
    env = torchrun_env()
    world = env["WORLD_SIZE"] if env else 1
    if world == 1:
        return resolve_device(device_setting), 0, 1
    local, local_world = env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]
    device = resolve_device(process_device(device_setting, local, local_world, torch.cuda.is_available()))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    if dist.get_rank() > 0:
        sys.stdout = open(os.devnull, "w")
    return device, dist.get_rank(), world


def leader():
    """True in the process that prints and writes the results: the only one, or rank 0 under torchrun."""
    env = torchrun_env()
    return env is None or env["RANK"] == 0


def local_leader():
    """True in the first process of each machine (LOCAL_RANK 0), which prepares that machine's data."""
    env = torchrun_env()
    return env is None or env["LOCAL_RANK"] == 0


class PeerFailed(RecipeError):
    """Another process failed and said why: this one stops quietly (exit status 1)."""


@contextlib.contextmanager
def agreeing(world):
    """The block in every process, then an agreement: where it failed in one (a folder or file on one machine, Ctrl-C)
    all stop, that one with its error and the others with PeerFailed, instead of waiting in their next collective."""
    if world == 1:
        yield
        return
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    try:
        yield
    except BaseException:
        agreed(True, device, world)  # the others wait for this agreement: they learn of the failure
        raise
    if agreed(False, device, world):
        raise PeerFailed("another process failed")


@contextlib.contextmanager
def leader_first(world):
    """Each machine's first process runs the block (a download, a cache), then the others; a failure stops all."""
    first = local_leader()
    with agreeing(world):
        if first:
            yield
    with agreeing(world):
        if not first:
            yield


def share(batch, rank, world):
    """(this process's part of a batch, weight): every world-th example; none left: the first, weight 0 (a stand-in)."""
    part = batch[rank::world]
    return (part, 1) if len(part) else (batch[:1], 0)


def accumulating(model, ends_step):
    """DDP's no_sync() for a batch that ends no optimizer step: gradients are all-reduced once a step, at its end."""
    syncs = ends_step or not isinstance(model, torch.nn.parallel.DistributedDataParallel)
    return contextlib.nullcontext() if syncs else model.no_sync()


def all_sum(tensor, world):
    """The elementwise sum of tensor over all processes (itself when there is one)."""
    if world > 1:
        dist.all_reduce(tensor)
    return tensor


def agreed(flag, device, world):
    """The largest flag (a signal's number; False is 0) of all processes, in each: a signal may reach one only."""
    if world == 1:
        return int(flag)
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def broadcast_weights(model, world):
    """Every process's model takes rank 0's weights (its copy in memory): nothing needs a file rank 0 wrote."""
    if world > 1:
        with torch.no_grad():
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, 0)


def gathered(value, world):
    """[value of rank 0, value of rank 1, ...] in every process: small Python objects (random states)."""
    if world == 1:
        return [value]
    values = [None] * world
    dist.all_gather_object(values, value)
    return values


class progress(tqdm):
    """A tqdm bar on a terminal; where stderr is not one (nohup, SLURM, CI) a plain line every 10% instead."""

    def __init__(self, *args, **kwargs):
        self.plain, self.shown = not sys.stderr.isatty(), None
        kwargs.setdefault("disable", not leader())
        if self.plain:  # tqdm draws into a sink; display() prints the lines
            kwargs.update(
                file=io.StringIO(),
                mininterval=0,
                miniters=1,
                bar_format="{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, "
                "{rate_fmt}{postfix}]",
            )
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        if not self.plain:
            return super().display(msg, pos)
        step = math.ceil(self.total / 10) if self.total else math.inf
        closing = self.disable  # close() disables the bar, then draws (or clears) it a last time
        if self.n != self.shown and (
            self.shown is None or closing or self.n // step > self.shown // step or self.n == self.total
        ):
            print(self.__str__(), file=sys.stderr, flush=True)
            self.shown = self.n
        return True
