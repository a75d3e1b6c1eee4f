"""textclf.parallel: each process's share of a batch, outside torchrun (whole runs under torchrun are in
test_distributed.py)."""
from textclf.parallel import agreed, all_sum, leader, share


def test_a_batch_smaller_than_the_world_gives_a_weightless_stand_in():
    assert share([7, 8, 9], 1, 2) == ([8], 1)
    assert share([7], 1, 2) == ([7], 0) and share([7], 0, 2) == ([7], 1)


def test_one_process_is_its_own_leader_and_sum(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert leader() and all_sum(3, 1) == 3 and agreed(2, "cpu", 1) is True and agreed(0, "cpu", 1) is False
    monkeypatch.setenv("RANK", "1")
    assert not leader()
