"""textclf.runfolder: files replaced whole or not at all, and what killed runs left behind (kills of real runs are
in test_faults.py)."""

import os
import socket
import subprocess
import sys

import pytest

from textclf.runfolder import atomic_write, remove_stale, temporary, usable_folder
from textclf.settings import RecipeError


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
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=False
    )
    host, pid = socket.gethostname(), int(dead.stdout)
    (tmp_path / f".checkpoint.pt.textclf-{host}-{pid}.tmp").write_text("half")
    (tmp_path / f".model.textclf-{host}-{pid}.old").mkdir()
    (tmp_path / f".model.textclf-{host}-{pid}.tmp").mkdir()
    mine = temporary(tmp_path / "metrics.json")  # live processes' files stay: this one's, and its parent's
    mine.write_text("{}")
    (tmp_path / f".data.csv.textclf-{host}-{os.getppid()}.tmp").write_text("still downloading")
    (tmp_path / f".data.csv.textclf-other-machine-{pid}.tmp").write_text("another machine's download")
    remove_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            f".data.csv.textclf-{host}-{os.getppid()}.tmp",
            f".data.csv.textclf-other-machine-{pid}.tmp",
            mine.name,
            "model",
        ]
    )
    assert mine.name == f".metrics.json.textclf-{host}-{os.getpid()}.tmp"


def test_remove_stale_never_touches_what_this_project_did_not_write(tmp_path):
    """Names like a killed run's leftovers, but the user's: .NAME.DIGITS.tmp and .old were deleted, renamed or
    emptied before the temporary names said whose they are."""
    (tmp_path / ".notes.2024.tmp").write_text("my notes")
    (tmp_path / ".photos.1999.old").mkdir()
    (tmp_path / ".photos.1999.old" / "summer.jpg").write_text("a photo")
    (tmp_path / ".thesis.12345.old").write_text("chapter 1")
    (tmp_path / ".draft.textclf-tmp").write_text("not ours either")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    remove_stale(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / ".photos.1999.old" / "summer.jpg").read_text() == "a photo"


def test_a_folder_setting_that_is_a_file_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for path, message in [
        (tmp_path / "notes.txt", "is a file; give a folder"),
        (tmp_path / "notes.txt" / "runs", f"lies under {tmp_path / 'notes.txt'}, which is a file"),
    ]:
        with pytest.raises(RecipeError, match=message):
            usable_folder(path, "OUT_DIR (--out-dir)")
    usable_folder(tmp_path / "new" / "deeper", "OUT_DIR (--out-dir)")  # missing folders are made later
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
