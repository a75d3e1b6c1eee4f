"""OUT_DIR and DATA_DIR: one run at a time, files replaced whole or not at all, what killed runs left removed, and
the stop requests (Ctrl-C, SIGTERM) that end a run with a checkpoint."""
import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import torch

from .parallel import leader
from .settings import RecipeError


def temporary(path, kind="tmp"):
    """A hidden name beside path for this process alone: .NAME.PID.tmp (remove_stale() finds it after a kill)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{kind}")


def write_error(path, e, needed=None):
    """A failed write (full disk, read-only, no permission) as one line that names the path and the cause."""
    space = ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(next(p for p in [path, *path.parents] if p.exists())).free
        space = (f" (the file needs {needed:,} bytes; " if needed else " (") + f"{free:,} bytes are free there); " \
                "free some space or write elsewhere"
    return RecipeError(f"could not write {path}: {e.strerror or e}{space}; an earlier {path.name}, if any, is intact")


def atomic_write(path, write, stale=None):
    """Call write(f) on a temporary binary file beside path, then rename it to path: readers never see half a
    file, and a failed write (RecipeError) or an interruption leaves the earlier file as it was. The file stale,
    if given (results that describe the file being replaced), is deleted just before the rename."""
    path = Path(path)
    tmp = temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
        if stale:
            Path(stale).unlink(missing_ok=True)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        cause = e if isinstance(e, OSError) else e.__context__  # torch.save wraps a failed write in a RuntimeError
        if not isinstance(cause, OSError):
            raise
        tmp.unlink(missing_ok=True)  # before write_error() measures the free space
        raise write_error(path, cause, getattr(cause, "needed", None)) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path, value):
    atomic_write(path, lambda f: f.write((json.dumps(value, indent=2) + "\n").encode()))


def swap_folder(path, write, stale):
    """write(folder) into a fresh folder, then swap it in: the old folder stays until the new one is whole. A failed
    write (OSError: a full disk) leaves the old folder; a kill between the renames is undone by remove_stale().
    The file stale (an earlier run's results) is deleted once the new folder is whole."""
    path = Path(path)
    tmp, old = temporary(path), temporary(path, "old")
    try:
        write(tmp)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(path, e) from None
    Path(stale).unlink(missing_ok=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale(folder):
    """Temporary files and folders left by a killed process (.NAME.PID.tmp/.old): removed, except that an .old
    folder is renamed back to NAME if NAME is missing (a kill between the two renames of swap_folder)."""
    for stale in sorted(Path(folder).glob(".*.*.*")):
        name, pid, kind = (stale.name[1:].rsplit(".", 2) + ["", ""])[:3]
        if kind not in ("tmp", "old") or not pid.isdigit() or int(pid) == os.getpid() or alive(int(pid)):
            continue
        if kind == "old" and not (stale.parent / name).exists():
            os.replace(stale, stale.parent / name)
            print(f"restored {stale.parent / name} from {stale.name}, left by a process that was killed")
        elif stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


@contextlib.contextmanager
def locked(folder):
    """Hold folder for one run: a second run into it is refused. The operating system also releases the lock
    when the process ends, however it ends, so a killed run never blocks the next one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RecipeError(f"another run is writing to {folder} right now; wait for it to finish, or choose "
                              f"another --out-dir") from None
        yield
    finally:
        os.close(handle)


def rng_state():
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM: main() stops with one line and exit status 128 + the signal's number."""

    def __init__(self, signum=signal.SIGINT):
        super().__init__(signum)
        self.signum = signal.Signals(signum)


def stop_now(signum, frame):
    """Ctrl-C or SIGTERM outside the training loop (which saves a checkpoint first) stops the run at once, also
    where the shell started it with SIGINT ignored (a background job)."""
    raise Interrupted(signum)


class StopRequest:
    """While active, Ctrl-C (SIGINT) and SIGTERM (a preempted machine) only raise a flag, so training
    stops at the end of an optimizer step and saves a checkpoint. A second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False

    def _handle(self, signum, frame):
        if self.requested:
            raise Interrupted(signum)
        self.requested = signum
        if leader():
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step (Ctrl-C again to quit now)",
                  file=sys.stderr)

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
