"""Writing a file the operator names, whole or not at all, keeping what the name stands for.

Here and not among the readers (``documents``) because the host's own code
writes files too (the engine's systemd drop-in, the kernel settings), in
places where only the standard library and the Docker SDK are installed: this
module needs neither YAML nor JSON Schema.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from .errors import UsageError


def write_atomically(path: Path, text: str, new_mode: int | None = None) -> None:
    """Write ``text`` to ``path`` as ``>`` would, but whole or not at all; UsageError if not.

    A stack half written (a full disk, a vanished directory) would be
    deployed by the next command as if it were whole, so a regular file is
    written beside itself and renamed over the old one once complete. What
    the name stands for is kept: a symbolic link is followed and its target
    replaced, in the target's own directory (``cqkd.yml -> envs/prod.yml``
    stays a link, and ``prod.yml`` is the file that changes); a device, a
    FIFO, or an open file named by its descriptor (``/dev/stdout``) is
    written into, never replaced by a regular file. An existing file keeps
    its mode and, where the caller may set it, its owner; a new one gets
    ``new_mode``, by default what the umask leaves of 0666, as ``>`` does.
    The directory is synced after the rename, so the new name survives a
    crash as well as the new bytes.
    """
    try:
        found: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        found = None  # a new file, or a link to one that does not exist yet
    except OSError as exc:  # a loop of links, a parent that is not a directory
        raise _cannot_write(path, exc) from None
    if found is not None and stat.S_ISDIR(found.st_mode):
        raise UsageError(f"{path}: cannot write: is a directory")
    if (found is not None and not stat.S_ISREG(found.st_mode)) or _names_a_descriptor(path):
        _write_into(path, text)
    else:
        _replace(path, Path(os.path.realpath(path)), text, found, new_mode)


def _names_a_descriptor(path: Path) -> bool:
    """``/dev/stdout``, ``/dev/fd/3``, ``/proc/self/fd/1``: a file some process holds open.

    Renaming over what such a link resolves to would swap the file under the
    process (and drop what it appended); the shell writes into it instead.
    """
    absolute = os.path.abspath(path)
    return absolute in ("/dev/stdout", "/dev/stderr") or absolute.startswith(("/dev/fd/", "/proc/"))


def _write_into(path: Path, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:  # /dev/full says ENOSPC on the flush at close
        raise _cannot_write(path, exc) from None


def _replace(
    path: Path, target: Path, text: str, found: os.stat_result | None, new_mode: int | None
) -> None:
    """Write a temporary file beside ``target``, then rename it over ``target``."""
    tmp: Path | None = None
    try:
        tmp, fd = _create_beside(target)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            if found is not None:
                # Owner first: a change of owner clears the set-id bits.
                with contextlib.suppress(PermissionError):
                    os.fchown(handle.fileno(), found.st_uid, found.st_gid)
                os.fchmod(handle.fileno(), stat.S_IMODE(found.st_mode))
            elif new_mode is not None:
                os.fchmod(handle.fileno(), new_mode)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    _sync_directory(path, target.parent)


def _create_beside(target: Path) -> tuple[Path, int]:
    """A new, hidden file in ``target``'s directory, created 0666 so the umask applies.

    ``tempfile.mkstemp`` creates 0600 whatever the umask, and a rename keeps
    that mode: every stack written was private to its writer.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{os.urandom(4).hex()}.tmp")
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(target.parent))


def _sync_directory(path: Path, folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise UsageError(f"{path}: written, but its directory cannot be synced: {exc}") from None
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems (FUSE ones, tmpfs on old kernels) cannot sync a
        # directory; the rename is then as durable as they make anything.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise UsageError(
                f"{path}: written, but its directory cannot be synced: {exc.strerror}"
            ) from None
    finally:
        os.close(fd)


def _cannot_write(path: Path, exc: OSError) -> UsageError:
    return UsageError(f"{path}: cannot write: {exc.strerror or exc}")
