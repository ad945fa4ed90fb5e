"""Writing files: every file the project writes (checkpoints, CSV, JSON, PNG, NPZ) goes through
``write_atomically``, so that a failed write is one message naming the file and the cause, and
never leaves a half-written file where a good one was."""
import errno
import os
import shutil
from pathlib import Path


class WriteError(Exception):
    """A file that could not be written: the message names the path and the cause."""


def write_atomically(path, write):
    """Write the file ``path`` by calling ``write(temporary_path)`` (a path in the same folder
    with the same suffix, so that writers which choose the format by suffix still do), then
    renaming it over ``path``. Creates the folder. Returns ``path`` (a Path).

    Any failure of the write or the rename (OSError; torch and others report a failed write as
    RuntimeError, in words that vary) raises WriteError naming ``path`` and the cause; the file
    that was at ``path`` before, if any, is intact and no temporary file is left.
    """
    path = Path(path)
    # short, whatever the name's length (a name near the 255-byte limit stays writable)
    tmp = path.with_name(f".{path.stem[:40]}.tmp{os.getpid()}{path.suffix[:20]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        raise WriteError(f"cannot write {path} ({failure_cause(error, path.parent)})") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return path


def write_text(path, text):
    """``text`` (str) -> the file ``path``, UTF-8, atomically (see ``write_atomically``)."""
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def failure_cause(error, folder):
    """A few words on why a write into ``folder`` failed with ``error``: 'the disk is full'
    where it is, 'a file stands where a folder is needed', the system's words for another
    OSError, else the first line of the message."""
    known = isinstance(error, OSError) and error.errno is not None
    # torch's and PIL's words for a full disk vary: where no errno says, the free space does
    if (known and error.errno == errno.ENOSPC) or (not known and _nearly_full(folder)):
        return "the disk is full"
    if isinstance(error, (FileExistsError, NotADirectoryError)):
        return "a file stands where a folder is needed"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _nearly_full(folder, margin=1 << 20):
    """Whether the file system of ``folder`` (or of its nearest existing parent) has less than
    ``margin`` bytes free."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False
