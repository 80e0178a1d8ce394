"""Check that a directory's file system gives what the preboot volume relies on.

The crash safety of :mod:`bsipatch.device` rests on four POSIX behaviours (see
docs/preboot.md, "File-system requirements"): ``rename()`` replaces a file atomically,
``fsync()`` of a directory makes its entries durable, hard links exist (unchanged
components are linked, not copied), and ``flock()`` excludes a second writer.
:func:`check_filesystem` refuses file systems known to lack them (vfat/FAT, exFAT, NFS,
SMB/CIFS, sshfs) by their type in ``/proc/self/mountinfo`` and then probes each
behaviour in a scratch directory, which it removes. Used by ``preboot init``; decides
nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from bsipatch._io import PathLike, fsync_dir
from bsipatch.errors import UnsupportedFilesystem

#: File-system types refused outright, with what they lack.
REFUSED = {
    "vfat": "no hard links, no atomic replacing rename, no flock across mounts",
    "msdos": "no hard links, no atomic replacing rename",
    "fat": "no hard links, no atomic replacing rename",
    "exfat": "no hard links, no atomic replacing rename",
    "nfs": "flock and directory fsync depend on the server; rename is not atomic for readers",
    "nfs4": "flock and directory fsync depend on the server; rename is not atomic for readers",
    "cifs": "no POSIX hard links or flock semantics",
    "smb3": "no POSIX hard links or flock semantics",
    "smbfs": "no POSIX hard links or flock semantics",
    "fuse.sshfs": "no durable fsync, no flock",
}


def mount_type(path: PathLike, *, mountinfo: PathLike = "/proc/self/mountinfo") -> str | None:
    """The file-system type of the mount holding ``path``.

    Args:
        path: any path.
        mountinfo: the mount table to read (``/proc/self/mountinfo`` format).
    """
    target = os.path.realpath(path)
    best, best_type = "", None
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                point = fields[4].replace("\\040", " ")
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, best_type = point, right.split()[0]
    except OSError:
        return None
    return best_type


def check_filesystem(path: PathLike, *, mountinfo: PathLike = "/proc/self/mountinfo") -> str | None:
    """Refuse (UnsupportedFilesystem) a directory the preboot volume cannot live on.

    Args:
        path: an existing directory (the preboot directory).
        mountinfo: the mount table to read (``/proc/self/mountinfo`` format).

    Returns:
        The file-system type found, when known.

    Raises:
        UnsupportedFilesystem: a refused type, or a probe failed (the message says which).
    """
    kind = mount_type(path, mountinfo=mountinfo)
    if kind in REFUSED:
        raise UnsupportedFilesystem(
            f"{path} is on {kind}: {REFUSED[kind]}; the preboot directory needs atomic "
            "rename, directory fsync, hard links and flock (ext4, XFS, btrfs, f2fs, tmpfs)"
        )
    scratch = Path(tempfile.mkdtemp(prefix=".bsipatch-fscheck-", dir=path))
    try:
        _probe(scratch)
    except OSError as exc:
        raise UnsupportedFilesystem(
            f"{path} ({kind or 'unknown file system'}) failed a check: {exc}; the preboot "
            "directory needs atomic rename, directory fsync, hard links and flock"
        ) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return kind


def _probe(d: Path) -> None:
    a, b = d / "a", d / "b"
    a.write_bytes(b"new")
    b.write_bytes(b"old")
    a.replace(b)  # rename over an existing file
    if b.read_bytes() != b"new" or a.exists():
        raise OSError(errno.EIO, "rename() did not replace the target")
    fsync_dir(d)  # EINVAL/EBADF where directories cannot be fsynced
    (d / "c").hardlink_to(b)
    if b.stat().st_nlink != 2 or not b.samefile(d / "c"):
        raise OSError(errno.EPERM, "hard links are not real links")
    lock = d / "lock"
    fd1 = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fd2 = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd1, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            raise OSError(errno.ENOLCK, "flock() does not exclude a second holder")
    finally:
        with contextlib.suppress(OSError):
            os.close(fd2)
        os.close(fd1)
