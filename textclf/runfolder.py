"""OUT_DIR and DATA_DIR: one run at a time, files replaced whole or not at all, and what killed runs left removed."""

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import socket
from pathlib import Path

from .settings import RecipeError

STALE = re.compile(r"\.(?P<name>.+)\.textclf-(?P<host>.+)-(?P<pid>\d+)\.(?P<kind>tmp|old)")  # temporary()'s names


def temporary(path, kind="tmp"):
    """A hidden name beside path for this process: .NAME.textclf-HOST-PID.tmp (NAME hashed past 255 bytes)."""
    suffix = f".textclf-{socket.gethostname()}-{os.getpid()}.{kind}"
    name = path.name if len(f".{path.name}{suffix}".encode()) <= 255 else hashlib.sha256(path.name.encode()).hexdigest()
    return path.with_name(f".{name}{suffix}")


def usable_folder(path, setting):
    """A RecipeError unless path is a folder or can become one: no file in its place or above it."""
    for above in [Path(path), *Path(path).parents]:
        if above.exists():
            if above.is_dir():
                return
            where = "is a file" if above == Path(path) else f"lies under {above}, which is a file"
            raise RecipeError(f"{setting} {path} {where}; give a folder")


def inside(path, tool):
    """A RecipeError where path is a part of a finished run (its model/ or adapter/ folder, or model.pt) rather than
    the run: it names the run folder to give tool instead."""
    path = Path(path)
    run = path.parent
    part = path.name in ("model", "adapter", "model.pt")
    if part and not (path / "metrics.json").exists() and (run / "metrics.json").is_file():
        raise RecipeError(
            f"{path} is a part of the run in {run}; {tool} takes the run folder (the OUT_DIR, which holds "
            f"metrics.json): {tool} {run}"
        )


def write_error(path, e, needed=None):
    """A failed write (full disk, read-only, no permission) as one line that names the path and the cause."""
    space = ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(next(p for p in [path, *path.parents] if p.exists())).free
        space = (
            f" (the file needs {needed:,} bytes; " if needed else " ("
        ) + f"{free:,} bytes are free there); free some space or write elsewhere"
    return RecipeError(f"could not write {path}: {e.strerror or e}{space}; an earlier {path.name}, if any, is intact")


def atomic_write(path, write, stale=None):
    """write(f) into a temporary file, then renamed to path: a failure leaves the earlier file; stale deleted before."""
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
        with contextlib.suppress(NotADirectoryError):  # no folder there: nothing was written
            tmp.unlink(missing_ok=True)


def remove_stale(folder):
    """What this project's killed processes on this machine left in folder (temporary() names of a gone process) removed;
    an .old folder goes back to NAME where that is missing (a kill between the renames that swap in a new folder)."""
    for stale in sorted(Path(folder).glob(".*.textclf-*")):
        match = STALE.fullmatch(stale.name)
        if (
            not match
            or match["host"] != socket.gethostname()
            or int(match["pid"]) == os.getpid()
            or alive(int(match["pid"]))
        ):
            continue
        name, kind = match["name"], match["kind"]
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
    """Hold folder for one run (a second is refused) while the process lives; at the end removed if made and empty."""
    folder = Path(folder)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RecipeError(
                f"another run is writing to {folder} right now; wait for it to finish, or choose another --out-dir"
            ) from None
        yield
    finally:
        os.close(handle)
        if made:
            with contextlib.suppress(OSError):  # not empty: the run's files stay
                folder.rmdir()
