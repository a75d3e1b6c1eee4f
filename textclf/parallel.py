"""Data-parallel runs under torchrun: start-up, each process's share of a batch, sums over processes, and which
process prints and writes (rank 0, the leader)."""
import contextlib
import os
import sys

import torch
import torch.distributed as dist

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


def start_processes(device_setting):
    """Under torchrun (WORLD_SIZE > 1) join the other processes: NCCL on CUDA, gloo on CPU, and DEVICE=auto takes
    this process's own GPU (cuda:LOCAL_RANK). Returns the device, this process's rank and the number of processes.
    Processes other than rank 0 print nothing to stdout and show no progress bars."""
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
    """This process's part of a batch, every world-th example from its rank on, and its weight: 1, or 0 for a
    stand-in (the batch's first example) where the batch has fewer examples than processes, so that every process
    still takes part in the gradient all-reduce."""
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


def device_names(device, world):
    """What each process trained on: the GPU's name, or cpu."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    if world == 1:
        return [name]
    names = [None] * world
    dist.all_gather_object(names, name)
    return names


def barrier(world):
    """Wait for all processes (nothing to wait for when there is one)."""
    if world > 1:
        dist.barrier()
