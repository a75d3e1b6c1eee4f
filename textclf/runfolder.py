"""OUT_DIR and DATA_DIR: one run at a time, files replaced whole or not at all, and what killed runs left removed."""
import contextlib
import errno
import fcntl
import os
import shutil
from pathlib import Path

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
    """write(f) into a temporary file beside path, then renamed to path: a failed write (RecipeError) or an interruption
    leaves the earlier file as it was. The file stale (results about the file replaced) is deleted just before."""
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


def remove_stale(folder):
    """What killed processes left (.NAME.PID.tmp/.old) removed; an .old folder goes back to NAME if that is missing (a
    kill between the two renames that swap in a new folder)."""
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
    """Hold folder for one run; a second is refused. The lock ends with the process, however it ends."""
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
