"""textclf.runfolder: files replaced whole or not at all, and what killed runs left behind (kills of real runs are
in test_faults.py)."""
import os
import subprocess
import sys

import pytest

from textclf.runfolder import atomic_write, remove_stale, temporary


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def broken(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_remove_stale_clears_dead_processes_files_and_restores_a_parked_folder(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=False)
    pid = int(dead.stdout)
    (tmp_path / f".checkpoint.pt.{pid}.tmp").write_text("half")
    (tmp_path / f".model.{pid}.old").mkdir()
    (tmp_path / f".model.{pid}.tmp").mkdir()
    mine = temporary(tmp_path / "metrics.json")  # live processes' files stay: this one's, and its parent's
    mine.write_text("{}")
    (tmp_path / f".data.csv.{os.getppid()}.tmp").write_text("still downloading")
    remove_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".data.csv.{os.getppid()}.tmp", mine.name, "model"]
    assert mine.name == f".metrics.json.{os.getpid()}.tmp"
