"""textclf.progress: a tqdm bar on a terminal (a log's plain lines are checked on a real run in test_faults.py)."""
import io
import sys

from textclf.progress import progress


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
