"""textclf.parallel outside torchrun (whole runs under torchrun are in test_distributed.py): each process's share of
a batch, the autocast for a precision, and progress bars (a log's plain lines are checked on a real run in
test_faults.py)."""
import io
import sys

import torch

from textclf.parallel import agreed, all_sum, autocast_for, leader, progress, share


def test_a_batch_smaller_than_the_world_gives_a_weightless_stand_in():
    assert share([7, 8, 9], 1, 2) == ([8], 1)
    assert share([7], 1, 2) == ([7], 0) and share([7], 0, 2) == ([7], 1)


def test_one_process_is_its_own_leader_and_sum(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert leader() and all_sum(3, 1) == 3 and agreed(2, "cpu", 1) is True and agreed(0, "cpu", 1) is False
    monkeypatch.setenv("RANK", "1")
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
    monkeypatch.setenv("RANK", "1")
    for _ in progress(range(50), desc="work"):
        pass
    assert capsys.readouterr().err == ""


def test_autocast_for_each_precision():
    layer, x = torch.nn.Linear(4, 2), torch.randn(3, 4)
    for precision, dtype in [("bf16", torch.bfloat16), ("fp32", torch.float32)]:
        with autocast_for(torch.device("cpu"), precision):
            assert layer(x).dtype == dtype
    assert autocast_for(torch.device("cpu"), "fp16").fast_dtype == torch.float16
