"""textclf.parallel outside torchrun (whole runs under torchrun are in test_distributed.py): each process's share of
a batch, the autocast for a precision, and progress bars (a log's plain lines are checked on a real run in
test_faults.py)."""

import io
import sys

import pytest
import torch

from textclf.parallel import (
    agreed,
    all_sum,
    autocast_for,
    broadcast_weights,
    choose_precision,
    gathered,
    leader,
    local_leader,
    process_device,
    progress,
    run_precision,
    share,
)
from textclf.settings import RecipeError
from textclf.training import own_random_state, stop_check_due


def test_a_batch_smaller_than_the_world_gives_a_weightless_stand_in():
    assert share([7, 8, 9], 1, 2) == ([8], 1)
    assert share([7], 1, 2) == ([7], 0) and share([7], 0, 2) == ([7], 1)


def as_torchrun_worker(monkeypatch, rank=1, local_rank=1, world=2, local_world=2):
    """The variables torchrun sets in a worker, all of them (a process with some is no worker)."""
    for name, value in {
        "RANK": rank,
        "LOCAL_RANK": local_rank,
        "WORLD_SIZE": world,
        "LOCAL_WORLD_SIZE": local_world,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": 29500,
    }.items():
        monkeypatch.setenv(name, str(value))


def test_one_process_is_its_own_leader_and_sum(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert leader() and all_sum(3, 1) == 3 and agreed(2, "cpu", 1) == 2 and agreed(False, "cpu", 1) == 0
    monkeypatch.setenv("RANK", "1")  # by hand, without the rest of torchrun's variables: not a worker
    assert leader()
    as_torchrun_worker(monkeypatch)
    assert not leader()


def test_progress_on_a_terminal_is_a_tqdm_bar(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    for _ in progress(range(50), desc="work", mininterval=0):
        pass
    assert sys.stderr.getvalue().count("\r") >= 10


def test_progress_in_a_process_other_than_rank_0_shows_nothing(monkeypatch, capsys):
    as_torchrun_worker(monkeypatch)
    for _ in progress(range(50), desc="work"):
        pass
    assert capsys.readouterr().err == ""


def test_autocast_for_each_precision():
    layer, x = torch.nn.Linear(4, 2), torch.randn(3, 4)
    for precision, dtype in [("bf16", torch.bfloat16), ("fp32", torch.float32)]:
        with autocast_for(torch.device("cpu"), precision):
            assert layer(x).dtype == dtype
    assert autocast_for(torch.device("cpu"), "fp16").fast_dtype == torch.float16


# ------------------------------------------------------------------------------- decisions only a GPU box shows
def test_each_torchrun_process_takes_its_own_gpu():
    assert process_device("auto", 3, 8, cuda_available=True) == "cuda:3"
    assert process_device("auto", 3, 8, cuda_available=False) == "cpu"
    assert process_device("cuda", 3, 8, cuda_available=True) == "cuda:3"  # set_device(cuda) had no index: ValueError
    assert process_device("cpu", 3, 8, cuda_available=True) == "cpu"
    assert process_device("cuda:1", 0, 1, cuda_available=True) == "cuda:1"  # one process a machine: as given
    with pytest.raises(
        RecipeError,
        match=r"cuda:0 would put all 8 processes of this machine on one GPU; under "
        r"torchrun use --device cuda \(each process takes cuda:LOCAL_RANK\)",
    ):
        process_device("cuda:0", 0, 8, cuda_available=True)


def test_auto_precision_asks_for_native_bf16():
    """is_bf16_supported() counts emulation as support: T4 and V100 ran emulated bf16 instead of fp16."""
    assert choose_precision("cuda", native_bf16=True) == ("bf16", "a CUDA GPU with native bf16")  # A100, H100
    assert choose_precision("cuda", native_bf16=False) == ("fp16", "a CUDA GPU without native bf16")  # T4, V100
    assert choose_precision("cpu", "amx_bf16") == ("bf16", "the CPU computes bf16 natively: amx_bf16")
    assert choose_precision("cpu", "") == ("fp32", "the CPU has no native bf16")
    assert choose_precision("mps", "") == ("fp32", "mps")


def test_a_resumed_run_keeps_its_precision(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr("textclf.parallel.cpu_bf16", lambda: "")
    assert run_precision("fp16", cpu, recorded="bf16") == ("fp16", "PRECISION")
    assert run_precision("auto", cpu) == ("fp32", "the CPU has no native bf16")
    assert run_precision("auto", cpu, recorded="fp32") == ("fp32", "PRECISION=auto when the run began")
    assert run_precision("auto", cpu, recorded="fp16")[0] == "fp16"  # begun on a T4, resumed here: still fp16


def test_each_process_resumes_its_own_random_state():
    states = [{"torch": torch.tensor([0]), "cuda": torch.tensor([10])}, {"torch": torch.tensor([1]), "cuda": None}]
    assert own_random_state(states, 1) is states[1] and own_random_state(states, 0) is states[0]
    assert own_random_state(states, 5) is states[0]  # more processes than the run had
    # before per-process states: the CPU state and one CUDA state per visible GPU (8 here, maybe 1 on resume)
    old = {"torch": torch.tensor([7]), "cuda": [torch.tensor([i]) for i in range(8)]}
    assert own_random_state(old, 0) == {"torch": old["torch"], "cuda": None}


def test_processes_agree_on_a_stop_every_log_every_steps():
    """Agreeing on a stop waits for the GPU: under torchrun only every LOG_EVERY optimizer steps and at the epoch's
    end; one process checks every step, for free."""
    steps = range(2, 101, 2)  # the batches that end an optimizer step, 2 batches each
    assert [b for b in steps if stop_check_due(b, 100, accum=2, every=10, world=2)] == [20, 40, 60, 80, 100]
    assert [b for b in (2, 4, 6, 7) if stop_check_due(b, 7, accum=2, every=10, world=2)] == [7]
    assert all(stop_check_due(b, 100, accum=2, every=10, world=1) for b in steps)


def test_one_process_gathers_and_broadcasts_to_itself(monkeypatch):
    layer = torch.nn.Linear(2, 2)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    broadcast_weights(layer, 1)
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())
    assert gathered({"a": 1}, 1) == [{"a": 1}]
    as_torchrun_worker(monkeypatch, rank=0)
    assert not local_leader()


def test_a_cuda_process_joins_with_nccl_on_its_own_gpu_and_a_long_timeout(monkeypatch):
    """start_processes() on a simulated 8-GPU machine, process 3: NCCL bound to cuda:3 (device_id), and a timeout
    that outlasts a first tokenization (NCCL's default is 10 minutes)."""
    from textclf import parallel

    joined, current = {}, []
    as_torchrun_worker(monkeypatch, rank=3, local_rank=3, world=8, local_world=8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(parallel.dist, "init_process_group", lambda backend, **kw: joined.update(kw, backend=backend))
    monkeypatch.setattr(parallel.dist, "get_rank", lambda: 0)
    device, rank, world = parallel.start_processes("cuda")
    assert device == torch.device("cuda:3") and current == [device] and (rank, world) == (0, 8)
    assert joined == {"backend": "nccl", "timeout": parallel.TIMEOUT, "device_id": device}
    assert parallel.TIMEOUT.total_seconds() == 3600
