"""Power-cut crash states: record an operation's file-system calls, replay them, enumerate crashes.

Three steps, each usable on its own:

1. **Record** (:func:`record`): run one operation (``tests/crashhelper.py OP ...``) under
   ``strace -f -xx -y`` with every call that can change a file or a directory traced
   (open/creat, write, pwrite, writev, truncate, fallocate, fsync/fdatasync, sync*,
   rename, link, unlink, mkdir, rmdir, copy_file_range, sendfile, splice, clone ioctls,
   chmod, writable shared mmap, lseek, dup, close). Calls outside the preboot directory
   are dropped.
2. **Replay** (:func:`to_ops`): turn the calls into logical operations on an in-memory
   model of the directory (inodes, directory entries, file bytes): ``creat``, ``write``
   (copies and clones become writes of the bytes they copy), ``trunc``, ``link``,
   ``unlink``, ``rename``, ``mkdir``, ``rmdir``, ``fsync``, ``chmod``. A call the model
   does not know, or a writable shared mapping of a preboot file, fails loudly.
   :func:`compare_with_disk` proves the recording complete: the model after replaying
   every operation must equal the real directory afterwards (names, types, hard links,
   modes, every byte).
3. **Crash states** (:func:`crash_states`): for every prefix of the operations (a power
   cut after operation ``c``), the states a file system may leave:

   * ``alice`` (the conservative model of Pillai et al., "All File Systems Are Not
     Created Equal", OSDI 2014): an operation is durable once an fsync of its file (data:
     write, truncate) or of its directory (entries: creat, link, unlink, rename - both
     directories - mkdir, rmdir) followed it; any operation not yet durable may be
     missing, in any combination with the others; a write may persist partially, at
     4096-byte block granularity.
   * ``writeback`` (ext4 ``data=writeback``): metadata (every directory operation and
     every size change) reaches the journal in order, so a prefix of it persists, at
     least up to the last fsync of anything; file data is durable only after an fsync of
     that file and may otherwise read as zeros (never-written blocks) while the new size
     and names persisted.

   Enumerating every subset is exponential, so per crash point the states are: all
   operations persisted (what a SIGKILL leaves), only the durable ones, each non-durable
   operation dropped alone, each non-durable operation persisted alone, and each
   non-durable write torn (its first block only; all but its last block; for
   ``writeback`` its bytes lost). Identical states are kept once.
   This covers every single-operation reordering and tear ALICE's checker reports.

The checks run on each state live in ``tests/test_crash_explore.py``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 4096
STRACE_CALLS = (
    "open,openat,openat2,creat,write,pwrite64,writev,pwritev,pwritev2,lseek,"
    "ftruncate,truncate,fallocate,fsync,fdatasync,sync,syncfs,sync_file_range,"
    "rename,renameat,renameat2,link,linkat,symlink,symlinkat,unlink,unlinkat,"
    "mkdir,mkdirat,rmdir,copy_file_range,sendfile,splice,ioctl,chmod,fchmod,fchmodat,"
    "mmap,msync,close,dup,dup2,dup3,fcntl,mknod,mknodat"
)
HELPER = str(Path(__file__).parent / "crashhelper.py")


# --- recording -----------------------------------------------------------------------------


@dataclass
class Call:
    """One completed system call: name, raw argument texts, result text."""

    name: str
    args: list[str]
    result: str


def record(argv: list[str], trace: Path, env: dict[str, str] | None = None) -> list[Call]:
    """Run ``python tests/crashhelper.py *argv`` under strace; return its calls in order."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("BSIPATCH_CRASH")}
    full.update(env or {})
    cmd = [
        "strace", "-f", "-qq", "-xx", "-y", "-s", str(1 << 24), "-e", f"trace={STRACE_CALLS}",
        "-e", "signal=none", "-o", str(trace), sys.executable, HELPER, *argv,
    ]  # fmt: skip
    r = subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"recorded operation failed ({r.returncode}): {r.stderr[-2000:]}")
    return parse(trace.read_text())


_LINE = re.compile(r"^(\d+) +(.*)$")
_UNFINISHED = " <unfinished ...>"
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")


def parse(text: str) -> list[Call]:
    """Parse ``strace -f -xx -y`` output; calls in completion order."""
    pending: dict[str, str] = {}
    out = []
    for raw in text.splitlines():
        m = _LINE.match(raw)
        if not m:
            continue
        pid, rest = m.groups()
        if rest.startswith("+++") or rest.startswith("---"):
            continue
        if rest.endswith(_UNFINISHED):
            pending[pid] = rest[: -len(_UNFINISHED)]
            continue
        r = _RESUMED.match(rest)
        if r:
            rest = pending.pop(pid) + r.group(2)
        call = _parse_call(rest)
        if call is not None:
            out.append(call)
    return out


def _parse_call(text: str) -> Call | None:
    m = re.match(r"^(\w+)\((.*)\) += (.*)$", text, re.S)
    if not m:
        return None
    name, args, result = m.groups()
    return Call(name, _split_args(args), result)


def _split_args(s: str) -> list[str]:
    out, depth, cur, i = [], 0, [], 0
    while i < len(s):
        c = s[i]
        if c in "{[(<":
            depth += 1
        elif c in "}])>":
            depth -= 1
        if c == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if cur or out:
        out.append("".join(cur).strip())
    return out


def _unhex(s: str) -> bytes:
    return bytes(int(h, 16) for h in re.findall(r"\\x([0-9a-f]{2})", s))


def _string(arg: str) -> bytes:
    if arg.endswith("..."):
        raise AssertionError("strace truncated a buffer; raise -s")
    if not (arg.startswith('"') and arg.endswith('"')):
        raise AssertionError(f"expected a string argument, got {arg[:80]!r}")
    return _unhex(arg[1:-1])


def _fd(arg: str) -> tuple[int | None, str | None]:
    """``3<\\x2f...>`` -> (3, "/..."); ``AT_FDCWD<...>`` -> (None, cwd)."""
    m = re.match(r"^(-?\d+|AT_FDCWD)(?:<(.*)>)?$", arg, re.S)
    if not m:
        return None, None
    num = None if m.group(1) == "AT_FDCWD" else int(m.group(1))
    path = _unhex(m.group(2)).decode("utf-8", "surrogateescape") if m.group(2) else None
    return num, path


def _int(arg: str) -> int:
    m = re.match(r"^\[?(-?\d+)", arg)
    if not m:
        raise AssertionError(f"expected a number, got {arg[:80]!r}")
    return int(m.group(1))


def _ok(result: str) -> int | None:
    m = re.match(r"^(-?\d+)", result)
    if not m or m.group(1).startswith("-"):
        return None
    return int(m.group(1))


# --- the model -----------------------------------------------------------------------------


@dataclass
class Inode:
    """A file (``data``) or directory (``entries``: name -> inode number) with a mode."""

    kind: str
    mode: int
    data: bytearray = field(default_factory=bytearray)
    entries: dict[str, int] = field(default_factory=dict)


class Model:
    """Inodes under one root directory (inode 0)."""

    def __init__(self) -> None:
        self.inodes: dict[int, Inode] = {}
        self.next = 0

    def new(self, kind: str, mode: int) -> int:
        ino = self.next
        self.next += 1
        self.inodes[ino] = Inode(kind, mode)
        return ino

    def copy(self) -> Model:
        m = Model()
        m.next = self.next
        m.inodes = {
            k: Inode(v.kind, v.mode, bytearray(v.data), dict(v.entries))
            for k, v in self.inodes.items()
        }
        return m

    def lookup(self, parts: list[str]) -> int | None:
        ino: int | None = 0
        for p in parts:
            node = self.inodes[ino] if ino is not None else None
            if node is None or node.kind != "d" or p not in node.entries:
                return None
            ino = node.entries[p]
        return ino

    def digest(self) -> str:
        """A hash of what is reachable from the root (names, kinds, modes, bytes, links)."""
        h = hashlib.sha256()
        names: dict[int, str] = {}
        for path, ino in self.walk():
            node = self.inodes[ino]
            link = names.setdefault(ino, path)
            h.update(f"{path}\0{node.kind}\0{node.mode:o}\0{link}\0".encode())
            if node.kind == "f":
                h.update(hashlib.sha256(node.data).digest())
        return h.hexdigest()

    def walk(self, ino: int = 0, prefix: str = "") -> Iterator[tuple[str, int]]:
        for name in sorted(self.inodes[ino].entries):
            child = self.inodes[ino].entries[name]
            path = f"{prefix}{name}"
            yield path, child
            if self.inodes[child].kind == "d":
                yield from self.walk(child, path + "/")


def load(root: Path) -> Model:
    """The model of a directory tree on disk (hard links share an inode)."""
    m = Model()
    m.new("d", stat.S_IMODE(root.stat().st_mode))
    seen: dict[tuple[int, int], int] = {}

    def fill(directory: Path, ino: int) -> None:
        for p in sorted(directory.iterdir()):
            st = p.lstat()
            key = (st.st_dev, st.st_ino)
            if key in seen:
                m.inodes[ino].entries[p.name] = seen[key]
                continue
            if stat.S_ISDIR(st.st_mode):
                child = m.new("d", stat.S_IMODE(st.st_mode))
                m.inodes[ino].entries[p.name] = child
                fill(p, child)
            elif stat.S_ISREG(st.st_mode):
                child = m.new("f", stat.S_IMODE(st.st_mode))
                m.inodes[child].data = bytearray(p.read_bytes())
                m.inodes[ino].entries[p.name] = child
            else:
                raise AssertionError(f"{p}: not a file or directory")
            seen[key] = child

    fill(root, 0)
    return m


def materialise(m: Model, dest: Path) -> None:
    """Write the model as a real directory tree at ``dest`` (hard links kept, modes set)."""
    dest.mkdir()
    first: dict[int, Path] = {}
    dirs: list[tuple[Path, int]] = [(dest, m.inodes[0].mode)]
    for path, ino in m.walk():
        node = m.inodes[ino]
        p = dest / path
        if node.kind == "d":
            p.mkdir()
            dirs.append((p, node.mode))
        elif ino in first:
            os.link(first[ino], p)
        else:
            p.write_bytes(node.data)
            os.chmod(p, node.mode)
            first[ino] = p
    for p, mode in reversed(dirs):
        os.chmod(p, mode)


def compare_with_disk(m: Model, root: Path) -> None:
    """Assert that the model equals the directory on disk (the recording is complete)."""
    real = load(root)
    mine = dict(m.walk())
    theirs = dict(real.walk())
    assert sorted(mine) == sorted(theirs), (
        f"names differ: only in the replay {sorted(set(mine) - set(theirs))}, "
        f"only on disk {sorted(set(theirs) - set(mine))}"
    )
    for path in mine:
        a, b = m.inodes[mine[path]], real.inodes[theirs[path]]
        assert a.kind == b.kind, path
        assert a.mode == b.mode, (path, oct(a.mode), oct(b.mode))
        if a.kind == "f":
            assert bytes(a.data) == bytes(b.data), f"{path}: bytes differ"
    groups_a = sorted(sorted(p for p in mine if mine[p] == i) for i in set(mine.values()))
    groups_b = sorted(sorted(p for p in theirs if theirs[p] == i) for i in set(theirs.values()))
    assert groups_a == groups_b, "hard links differ"


# --- replay: calls -> logical operations ---------------------------------------------------

# A logical operation: (kind, ...) with inode numbers of the model at record time.
#   ("creat", dir, name, ino, kind)   ("link", dir, name, ino)   ("unlink", dir, name, ino)
#   ("rename", sdir, sname, ddir, dname, ino)   ("write", ino, off, bytes)
#   ("trunc", ino, size)   ("fsync", ino)   ("chmod", ino, mode)
Op = tuple[Any, ...]


@dataclass
class _Fd:
    ino: int
    append: bool
    pos: int = 0


class Replayer:
    """Applies recorded calls to a :class:`Model`, emitting logical operations."""

    def __init__(self, root: Path, model: Model) -> None:
        self.root = str(root)
        self.m = model
        self.fds: dict[int, _Fd] = {}
        self.ops: list[Op] = []
        self.calls = 0
        self.umask = _umask()

    # path helpers
    def _rel(self, dirfd: str, path: bytes | str) -> list[str] | None:
        p = path if isinstance(path, str) else path.decode("utf-8", "surrogateescape")
        if not p.startswith("/"):
            num, base = _fd(dirfd)
            if num is not None and num in self.fds:
                inop = self._path_of(self.fds[num].ino)
                if inop is None:
                    return None
                return [*inop, *[x for x in p.split("/") if x and x != "."]]
            if base is None:
                return None
            p = os.path.join(base, p)
        p = os.path.normpath(p)
        if p == self.root:
            return []
        if not p.startswith(self.root + "/"):
            return None
        return p[len(self.root) + 1 :].split("/")

    def _path_of(self, ino: int) -> list[str] | None:
        if ino == 0:
            return []
        for path, i in self.m.walk():
            if i == ino:
                return path.split("/")
        return None

    def _split(self, parts: list[str]) -> tuple[int, str]:
        parent = self.m.lookup(parts[:-1])
        if parent is None:
            raise AssertionError(f"no parent directory for {'/'.join(parts)}")
        return parent, parts[-1]

    def _emit(self, op: Op) -> None:
        self.ops.append(op)
        apply_op(self.m, op)

    # calls
    def feed(self, call: Call) -> None:
        handler = getattr(self, f"_c_{call.name}", None)
        if handler is None:
            raise AssertionError(f"no replay for {call.name}")
        handler(call)

    def _open(self, dirfd: str, path: str, flags: str, mode: int, result: str) -> None:
        fd = _ok(result)
        if fd is None:
            return
        parts = self._rel(dirfd, _string(path))
        if parts is None:
            return
        self.calls += 1
        ino = self.m.lookup(parts)
        if ino is None:
            if "O_CREAT" not in flags:
                raise AssertionError(f"open of missing {parts} succeeded")
            parent, name = self._split(parts)
            ino = self.m.next
            self._emit(("creat", parent, name, ino, "f", mode & 0o7777 & ~self.umask))
        elif "O_TRUNC" in flags and self.m.inodes[ino].data:
            self._emit(("trunc", ino, 0))
        self.fds[fd] = _Fd(ino, "O_APPEND" in flags)

    def _c_openat(self, c: Call) -> None:
        mode = int(c.args[3], 8) if len(c.args) > 3 else 0
        self._open(c.args[0], c.args[1], c.args[2], mode, c.result)

    def _c_open(self, c: Call) -> None:
        mode = int(c.args[2], 8) if len(c.args) > 2 else 0
        self._open("AT_FDCWD", c.args[0], c.args[1], mode, c.result)

    def _c_creat(self, c: Call) -> None:
        self._open("AT_FDCWD", c.args[0], "O_CREAT|O_TRUNC", int(c.args[1], 8), c.result)

    def _c_openat2(self, c: Call) -> None:
        raise AssertionError("openat2 is not replayed")

    def _mine(self, arg: str) -> _Fd | None:
        num, _ = _fd(arg)
        return self.fds.get(num) if num is not None else None

    def _c_write(self, c: Call) -> None:
        f = self._mine(c.args[0])
        n = _ok(c.result)
        if f is None or not n:
            return
        self.calls += 1
        data = _string(c.args[1])[:n]
        off = len(self.m.inodes[f.ino].data) if f.append else f.pos
        self._emit(("write", f.ino, off, data))
        f.pos = off + n

    def _c_pwrite64(self, c: Call) -> None:
        f = self._mine(c.args[0])
        n = _ok(c.result)
        if f is None or not n:
            return
        self.calls += 1
        self._emit(("write", f.ino, _int(c.args[3]), _string(c.args[1])[:n]))

    def _unsupported(self, c: Call) -> None:
        if self._mine(c.args[0]) is not None and _ok(c.result):
            raise AssertionError(f"{c.name} on a preboot file is not replayed")

    _c_writev = _c_pwritev = _c_pwritev2 = _c_sendfile = _unsupported

    def _c_splice(self, c: Call) -> None:
        if self._mine(c.args[2]) is not None and _ok(c.result):
            raise AssertionError("splice into a preboot file is not replayed")

    def _c_lseek(self, c: Call) -> None:
        f = self._mine(c.args[0])
        r = _ok(c.result)
        if f is not None and r is not None:
            f.pos = r

    def _c_ftruncate(self, c: Call) -> None:
        f = self._mine(c.args[0])
        if f is not None and _ok(c.result) is not None:
            self.calls += 1
            self._emit(("trunc", f.ino, _int(c.args[1])))

    def _c_truncate(self, c: Call) -> None:
        parts = self._rel("AT_FDCWD", _string(c.args[0]))
        if parts is not None and _ok(c.result) is not None:
            self.calls += 1
            ino = self.m.lookup(parts)
            assert ino is not None
            self._emit(("trunc", ino, _int(c.args[1])))

    def _c_fallocate(self, c: Call) -> None:
        f = self._mine(c.args[0])
        if f is None or _ok(c.result) is None:
            return
        self.calls += 1
        mode, off, length = c.args[1], _int(c.args[2]), _int(c.args[3])
        size = len(self.m.inodes[f.ino].data)
        if "PUNCH_HOLE" in mode or "ZERO_RANGE" in mode:
            end = min(off + length, size) if "KEEP_SIZE" in mode else off + length
            if end > off:
                self._emit(("write", f.ino, off, bytes(end - off)))
        elif mode == "0" and off + length > size:
            self._emit(("trunc", f.ino, off + length))
        elif mode not in ("0", "FALLOC_FL_KEEP_SIZE"):
            raise AssertionError(f"fallocate mode {mode} is not replayed")

    def _c_fsync(self, c: Call) -> None:
        f = self._mine(c.args[0])
        if f is not None and _ok(c.result) is not None:
            self.calls += 1
            self._emit(("fsync", f.ino))

    _c_fdatasync = _c_fsync

    def _c_sync(self, c: Call) -> None:
        self.calls += 1
        self._emit(("sync",))

    def _c_syncfs(self, c: Call) -> None:
        if _ok(c.result) is not None:
            self.calls += 1
            self._emit(("sync",))

    def _c_sync_file_range(self, c: Call) -> None:
        pass  # starts write-back; promises nothing about durability

    def _rename(self, odir: str, old: str, ndir: str, new: str, result: str) -> None:
        if _ok(result) is None:
            return
        src, dst = self._rel(odir, _string(old)), self._rel(ndir, _string(new))
        if src is None and dst is None:
            return
        if src is None or dst is None:
            raise AssertionError(f"rename across the preboot boundary: {src} -> {dst}")
        self.calls += 1
        ino = self.m.lookup(src)
        assert ino is not None, src
        sdir, sname = self._split(src)
        ddir, dname = self._split(dst)
        self._emit(("rename", sdir, sname, ddir, dname, ino))

    def _c_rename(self, c: Call) -> None:
        self._rename("AT_FDCWD", c.args[0], "AT_FDCWD", c.args[1], c.result)

    def _c_renameat(self, c: Call) -> None:
        self._rename(c.args[0], c.args[1], c.args[2], c.args[3], c.result)

    def _c_renameat2(self, c: Call) -> None:
        if len(c.args) > 4 and c.args[4] not in ("0",):
            raise AssertionError(f"renameat2 flags {c.args[4]} are not replayed")
        self._c_renameat(c)

    def _link(self, odir: str, old: str, ndir: str, new: str, result: str) -> None:
        if _ok(result) is None:
            return
        src, dst = self._rel(odir, _string(old)), self._rel(ndir, _string(new))
        if dst is None:
            return
        assert src is not None, "hard link from outside the preboot"
        self.calls += 1
        ino = self.m.lookup(src)
        assert ino is not None
        ddir, dname = self._split(dst)
        self._emit(("link", ddir, dname, ino))

    def _c_link(self, c: Call) -> None:
        self._link("AT_FDCWD", c.args[0], "AT_FDCWD", c.args[1], c.result)

    def _c_linkat(self, c: Call) -> None:
        self._link(c.args[0], c.args[1], c.args[2], c.args[3], c.result)

    def _c_symlink(self, c: Call) -> None:
        if _ok(c.result) is not None and self._rel("AT_FDCWD", _string(c.args[1])) is not None:
            raise AssertionError("symlinks in the preboot are not replayed")

    def _c_symlinkat(self, c: Call) -> None:
        if _ok(c.result) is not None and self._rel(c.args[1], _string(c.args[2])) is not None:
            raise AssertionError("symlinks in the preboot are not replayed")

    def _remove(self, dirfd: str, path: str, result: str) -> None:
        if _ok(result) is None:
            return
        parts = self._rel(dirfd, _string(path))
        if parts is None:
            return
        self.calls += 1
        ino = self.m.lookup(parts)
        assert ino is not None, parts
        parent, name = self._split(parts)
        self._emit(("unlink", parent, name, ino))

    def _c_unlink(self, c: Call) -> None:
        self._remove("AT_FDCWD", c.args[0], c.result)

    def _c_rmdir(self, c: Call) -> None:
        self._remove("AT_FDCWD", c.args[0], c.result)

    def _c_unlinkat(self, c: Call) -> None:
        self._remove(c.args[0], c.args[1], c.result)

    def _mkdir(self, dirfd: str, path: str, mode: str, result: str) -> None:
        if _ok(result) is None:
            return
        parts = self._rel(dirfd, _string(path))
        if parts is None:
            return
        self.calls += 1
        parent, name = self._split(parts)
        mode_ = int(mode, 8) & 0o7777 & ~self.umask
        self._emit(("creat", parent, name, self.m.next, "d", mode_))

    def _c_mkdir(self, c: Call) -> None:
        self._mkdir("AT_FDCWD", c.args[0], c.args[1], c.result)

    def _c_mkdirat(self, c: Call) -> None:
        self._mkdir(c.args[0], c.args[1], c.args[2], c.result)

    def _c_mknod(self, c: Call) -> None:
        if _ok(c.result) is not None and self._rel("AT_FDCWD", _string(c.args[0])) is not None:
            raise AssertionError("mknod in the preboot is not replayed")

    def _c_mknodat(self, c: Call) -> None:
        if _ok(c.result) is not None and self._rel(c.args[0], _string(c.args[1])) is not None:
            raise AssertionError("mknod in the preboot is not replayed")

    def _copy(self, dst: _Fd, dst_off: int, src: _Fd | None, src_off: int, n: int) -> None:
        if src is None:
            raise AssertionError("copy into a preboot file from outside it")
        data = bytes(self.m.inodes[src.ino].data[src_off : src_off + n])
        assert len(data) == n, "copy past the end of its source"
        self.calls += 1
        self._emit(("write", dst.ino, dst_off, data))

    def _c_copy_file_range(self, c: Call) -> None:
        dst, n = self._mine(c.args[2]), _ok(c.result)
        if dst is None or not n:
            return
        src = self._mine(c.args[0])
        if src is None:
            raise AssertionError("copy_file_range into a preboot file from outside it")
        soff = _int(c.args[1]) if c.args[1] != "NULL" else src.pos
        doff = _int(c.args[3]) if c.args[3] != "NULL" else dst.pos
        self._copy(dst, doff, src, soff, n)
        if c.args[1] == "NULL":
            src.pos += n
        if c.args[3] == "NULL":
            dst.pos += n

    def _c_ioctl(self, c: Call) -> None:
        dst = self._mine(c.args[0])
        if dst is None or _ok(c.result) is None:
            return
        if c.args[1] == "FICLONERANGE":
            fields = dict(re.findall(r"(\w+)=([^,}]+)", c.args[2]))
            src = self._mine(fields["src_fd"])
            n = int(fields["src_length"])
            if n == 0 and src is not None:
                n = len(self.m.inodes[src.ino].data) - int(fields["src_offset"])
            self._copy(dst, int(fields["dest_offset"]), src, int(fields["src_offset"]), n)
        elif c.args[1] == "FICLONE":
            src = self._mine(c.args[2])
            assert src is not None
            data = bytes(self.m.inodes[src.ino].data)
            self._emit(("trunc", dst.ino, 0))
            self._copy(dst, 0, src, 0, len(data))
        elif c.args[1] in ("FIDEDUPERANGE",):
            raise AssertionError(f"ioctl {c.args[1]} is not replayed")

    def _chmod(self, parts: list[str] | None, mode: str, result: str) -> None:
        if parts is None or _ok(result) is None:
            return
        ino = self.m.lookup(parts)
        assert ino is not None
        self.calls += 1
        self._emit(("chmod", ino, int(mode, 8) & 0o7777))

    def _c_chmod(self, c: Call) -> None:
        self._chmod(self._rel("AT_FDCWD", _string(c.args[0])), c.args[1], c.result)

    def _c_fchmodat(self, c: Call) -> None:
        self._chmod(self._rel(c.args[0], _string(c.args[1])), c.args[2], c.result)

    def _c_fchmod(self, c: Call) -> None:
        f = self._mine(c.args[0])
        if f is not None and _ok(c.result) is not None:
            self.calls += 1
            self._emit(("chmod", f.ino, int(c.args[1], 8) & 0o7777))

    def _c_mmap(self, c: Call) -> None:
        if len(c.args) < 5 or self._mine(c.args[4]) is None:
            return
        if "PROT_WRITE" in c.args[2] and "MAP_SHARED" in c.args[3]:
            raise AssertionError("a writable shared mapping of a preboot file is not replayed")

    def _c_msync(self, c: Call) -> None:
        pass  # only shared writable mappings need it, and those fail above

    def _c_close(self, c: Call) -> None:
        num, _ = _fd(c.args[0])
        if num is not None and _ok(c.result) is not None:
            self.fds.pop(num, None)

    def _dup(self, old: str, result: str) -> None:
        num, _ = _fd(old)
        new = _ok(result)
        if num in self.fds and new is not None:
            self.fds[new] = self.fds[num]

    def _c_dup(self, c: Call) -> None:
        self._dup(c.args[0], c.result)

    _c_dup2 = _c_dup3 = _c_dup

    def _c_fcntl(self, c: Call) -> None:
        if c.args[1].startswith("F_DUPFD"):
            self._dup(c.args[0], c.result)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _dir(m: Model, ino: int) -> Inode:
    """Directory ``ino``; an orphan placeholder when its creation did not persist."""
    if ino not in m.inodes:
        m.inodes[ino] = Inode("d", 0o755)
    return m.inodes[ino]


def _file(m: Model, ino: int) -> Inode:
    if ino not in m.inodes:
        m.inodes[ino] = Inode("f", 0o600)
    return m.inodes[ino]


def apply_op(m: Model, op: Op, data: bytes | None = None) -> None:
    """Apply one logical operation to a model (``data`` overrides a write's bytes).

    Operations on inodes whose creation is not part of the state act on orphans
    (unreachable), as a journal replay would leave them.
    """
    kind = op[0]
    if kind == "creat":
        _, parent, name, ino, k, mode = op
        if ino not in m.inodes:
            m.inodes[ino] = Inode(k, mode)
        _dir(m, parent).entries[name] = ino
    elif kind == "link":
        _, parent, name, ino = op
        _file(m, ino)
        _dir(m, parent).entries[name] = ino
    elif kind == "unlink":
        _, parent, name, ino = op
        if _dir(m, parent).entries.get(name) == ino:
            del m.inodes[parent].entries[name]
    elif kind == "rename":
        _, sdir, sname, ddir, dname, ino = op
        if ino not in m.inodes:
            return  # renaming something whose creation did not persist
        if _dir(m, sdir).entries.get(sname) == ino:
            del m.inodes[sdir].entries[sname]
        _dir(m, ddir).entries[dname] = ino
    elif kind == "write":
        _, ino, off, payload = op
        buf = _file(m, ino).data
        payload = payload if data is None else data
        if len(buf) < off:
            buf.extend(bytes(off - len(buf)))
        buf[off : off + len(payload)] = payload
    elif kind == "trunc":
        _, ino, size = op
        buf = _file(m, ino).data
        if size < len(buf):
            del buf[size:]
        else:
            buf.extend(bytes(size - len(buf)))
    elif kind == "chmod":
        if op[1] in m.inodes:
            m.inodes[op[1]].mode = op[2]
    elif kind not in ("fsync", "sync"):
        raise AssertionError(f"unknown operation {op!r}")
    if kind == "creat":
        m.next = max(m.next, op[3] + 1)


def to_ops(calls: list[Call], root: Path, model: Model) -> tuple[list[Op], Model, int]:
    """Replay ``calls`` on a copy of ``model``; return (operations, final model, calls used)."""
    r = Replayer(root, model.copy())
    for c in calls:
        r.feed(c)
    return r.ops, r.m, r.calls


# --- crash states ----------------------------------------------------------------------------


def _dirs_of(op: Op) -> tuple[int, ...]:
    if op[0] in ("creat", "link", "unlink"):
        return (op[1],)
    if op[0] == "rename":
        return (op[1], op[3])
    return ()


def durability(ops: list[Op]) -> list[int]:
    """For each operation, the index of the fsync that makes it durable (len(ops): never)."""
    n = len(ops)
    out = [n] * n
    for j, op in enumerate(ops):
        if op[0] in ("write", "trunc"):
            need = {op[1]}
        elif op[0] in ("fsync", "sync", "chmod"):
            out[j] = j
            continue
        else:
            need = set(_dirs_of(op))
        for k in range(j + 1, n):
            o = ops[k]
            if o[0] == "sync":
                need.clear()
            elif o[0] == "fsync":
                need.discard(o[1])
            if not need:
                out[j] = k
                break
    return out


@dataclass
class CrashState:
    """One possible on-disk state after a power cut: how it was made, and the tree."""

    point: int
    how: str
    model: Model


def _build(base: Model, ops: list[Op], keep: list[int], torn: dict[int, bytes]) -> Model:
    m = base.copy()
    for j in keep:
        apply_op(m, ops[j], torn.get(j))
    return m


def durable_final(base: Model, ops: list[Op]) -> Model:
    """The state a power cut right after the operation returned may leave (only durable ops)."""
    durable_at = durability(ops)
    n = len(ops)
    keep = [j for j in range(n) if ops[j][0] not in ("fsync", "sync") and durable_at[j] < n]
    return _build(base, ops, keep, {})


def _torn_variants(op: Op, model: str) -> list[tuple[str, bytes]]:
    """Partial persistence of a write: block-granular prefixes, or lost data (writeback)."""
    _, _ino, off, data = op
    out = []
    first_end = (off // BLOCK + 1) * BLOCK - off
    if len(data) > first_end:
        out.append(("first-block", data[:first_end]))
        last_start = ((off + len(data) - 1) // BLOCK) * BLOCK - off
        if 0 < last_start < len(data) and last_start != first_end:
            out.append(("all-but-last-block", data[:last_start]))
    if model == "writeback":
        out.append(("data-lost", bytes(len(data))))
    return out


def crash_states(base: Model, ops: list[Op], model: str = "alice") -> Iterator[CrashState]:
    """Every crash state the persistence ``model`` allows (bounded as the module says).

    States are yielded once each (by content); the first way that produced a state names it.
    """
    if model not in ("alice", "writeback"):
        raise ValueError(f"unknown model {model!r}")
    durable_at = durability(ops)
    seen: set[str] = set()
    for c in range(len(ops) + 1):
        for how, keep, torn in _choices(ops, durable_at, c, model):
            m = _build(base, ops, keep, torn)
            d = m.digest()
            if d in seen:
                continue
            seen.add(d)
            yield CrashState(c, how, m)


def _choices(
    ops: list[Op], durable_at: list[int], c: int, model: str
) -> Iterator[tuple[str, list[int], dict[int, bytes]]]:
    changing = [j for j in range(c) if ops[j][0] not in ("fsync", "sync")]
    durable = [j for j in changing if durable_at[j] < c]
    loose = [j for j in changing if durable_at[j] >= c]
    yield f"after {c}: all persisted", changing, {}
    if not loose:
        return
    if model == "alice":
        yield f"after {c}: only durable", durable, {}
        for j in loose:
            yield f"after {c}: {j} lost", [k for k in changing if k != j], {}
            yield f"after {c}: only {j} of the unsynced", sorted([*durable, j]), {}
            if ops[j][0] == "write":
                for name, part in _torn_variants(ops[j], model):
                    yield f"after {c}: {j} torn ({name})", changing, {j: part}
        return
    yield from _writeback_choices(ops, durable_at, c, changing)


def _writeback_choices(
    ops: list[Op], durable_at: list[int], c: int, changing: list[int]
) -> Iterator[tuple[str, list[int], dict[int, bytes]]]:
    # metadata persists as a prefix, at least up to the last fsync of anything
    last_sync = max((k for k in range(c) if ops[k][0] in ("fsync", "sync")), default=-1)
    meta = [j for j in changing if ops[j][0] not in ("write",)]
    cuts = sorted({j for j in meta if j > last_sync} | {c})
    writes = [j for j in changing if ops[j][0] == "write" and durable_at[j] >= c]
    for cut in cuts:
        keep = [j for j in changing if ops[j][0] == "write" or j < cut or j <= last_sync]
        unsynced = [j for j in writes if j in keep]
        yield f"after {c}: metadata up to {cut}", keep, {}
        if unsynced:
            lost = {j: bytes(len(ops[j][3])) for j in unsynced}
            yield f"after {c}: metadata up to {cut}, unsynced data lost", keep, lost
        for j in unsynced:
            yield (
                f"after {c}: metadata up to {cut}, {j} data lost",
                keep,
                {j: bytes(len(ops[j][3]))},
            )


def fresh_dir(parent: Path, name: str) -> Path:
    """``parent/name``, removed first if it exists (read-only directories included)."""
    p = parent / name
    if p.exists():
        for d, _dirs, _files in os.walk(p):
            os.chmod(d, 0o755)
        shutil.rmtree(p)
    return p
