"""SHA-256 of the old and the new image during an apply, on one thread, two at once.

SHA-NI runs one stream at the speed of its round latency; two independent streams
interleaved on one core go about 1.7x as fast (:func:`bsipatch.hashing.update_two`).
An apply into a path hashes both images anyway, so one thread does both: each output
chunk the applier hands over is hashed together with as many bytes of the old image,
and while no chunk waits, the old image goes on alone. That leaves the other core to
the applier. Memory: a ring of output buffers. Images of at most INLINE_BELOW bytes
(old and new together) are hashed by :class:`InlineHasher` on the applier's own thread
as chunks come: starting a thread costs more than it saves there. This module only
hashes; the checks against the patch header are the callers' (oldimage.py, apply.py).
"""

from __future__ import annotations

import mmap

from bsipatch._buffers import MappedFile, holes
from bsipatch._lite import suppress
from bsipatch.hashing import Sha256, update_two

TYPE_CHECKING = False  # not typing's: importing typing is start-up time (bsipatch._lite)
if TYPE_CHECKING:
    import queue
    from typing import Any

    from bsipatch._buffers import Buffer

#: Output buffers between the applier and the hashing thread, CHUNK bytes each.
RING = 4
CHUNK = 1 << 20
#: While the output is hashed too, the old image runs at most this far ahead of it.
LEAD = 4 << 20
#: Old bytes hashed alone per step while no output chunk waits.
OLD_STEP = 1 << 20
#: A large old image's mapped pages are dropped every this many bytes hashed.
DROP_STEP = 8 << 20
_ZEROS = memoryview(bytes(OLD_STEP))
_DONE, _SHUTDOWN = object(), object()


class OldStream:
    """The old image's bytes in order, as views: slices of its map, file holes as zeros
    (their pages are never touched); a large image's pages are dropped behind."""

    def __init__(self, buf: Buffer, drop_above: int) -> None:
        self.buf = buf
        self.view = memoryview(buf).cast("B") if len(buf) else memoryview(b"")
        self.size = len(buf)
        self.pos = 0
        self.holes = holes(buf) if isinstance(buf, MappedFile) else []
        self.drop = isinstance(buf, mmap.mmap) and self.size > drop_above
        self.dropped = 0

    def take(self, n: int) -> memoryview:
        """Up to ``n`` next bytes (fewer at a hole's edge; empty at the end)."""
        pos = self.pos
        n = min(n, self.size - pos)
        while self.holes and self.holes[0][1] <= pos:
            self.holes.pop(0)
        if self.holes and self.holes[0][0] <= pos:
            out = _ZEROS[: min(n, self.holes[0][1] - pos, len(_ZEROS))]
        else:
            if self.holes:
                n = min(n, self.holes[0][0] - pos)
            out = self.view[pos : pos + n]
        self.pos = pos + len(out)
        if self.drop and self.pos - self.dropped >= DROP_STEP:
            step = self.pos - self.pos % mmap.PAGESIZE
            with suppress(OSError, ValueError):
                self.buf.madvise(mmap.MADV_DONTNEED, self.dropped, step - self.dropped)  # type: ignore[union-attr]
            self.dropped = step
        return out

    def close(self) -> None:
        """Let go of the view of the map (idempotent)."""
        self.view.release()


class PairHasher:
    """One thread hashing the old image (from an :class:`OldStream`, optional) and the
    new image's chunks as the applier hands them over (optional), two at once.

    The applier takes a free buffer (:meth:`buffer`), fills it and hands it over
    (:meth:`put`); :meth:`new_digest` waits until every chunk is hashed. The old
    image's digest is :meth:`old_digest` (``b""`` when stopped). :meth:`shutdown` ends
    the thread.
    """

    def __init__(self, old: OldStream | None, *, ring: int, chunk: int) -> None:
        import queue  # here: small images are hashed inline (InlineHasher), without threads
        import threading

        self.old = old
        self.old_h: Any = Sha256() if old is not None else None
        self.h: Any = None  # the new image's hash, when :meth:`hash_new` was called
        self.new_pos = 0  # output bytes hashed
        self.free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        for _ in range(ring):
            self.free.put(mmap.mmap(-1, chunk))
        self.todo: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.old_done = threading.Event()
        self.new_done = threading.Event()
        self.old_result = b""
        if old is None:
            self.old_done.set()
        self.thread = threading.Thread(target=self._run, name="bsipatch-sha256", daemon=True)
        self.thread.start()

    # ---- the applier's side ------------------------------------------------------------

    def hash_new(self) -> None:
        """Hash the chunks handed over from now on (before the first :meth:`put`)."""
        self.h = Sha256()

    def buffer(self) -> mmap.mmap:
        """A free output buffer (waits for the thread to release one)."""
        buf = self.free.get()
        if self.error is not None:
            raise self.error
        return buf

    def put(self, chunk: memoryview) -> None:
        """Hand over a filled chunk (a view over the start of a :meth:`buffer`)."""
        self.todo.put((chunk.obj, len(chunk)))

    def sync(self) -> None:
        """Wait until every chunk handed over is hashed."""
        import threading

        done = threading.Event()
        self.todo.put(done)
        done.wait()
        if self.error is not None:
            raise self.error

    def finish_new(self) -> None:
        """No more chunks: wait until those handed over are hashed; raise the thread's error."""
        self.todo.put(_DONE)
        self.new_done.wait()
        if self.error is not None:
            raise self.error

    def old_digest(self) -> bytes:
        """The old image's SHA-256 (waits for it; ``b""`` when stopped first)."""
        self.old_done.wait()
        if self.error is not None:
            raise self.error
        return self.old_result

    def shutdown(self) -> None:
        """Stop hashing the old image and end the thread."""
        self.stop.set()
        self.todo.put(_SHUTDOWN)
        self.thread.join()
        if self.old is not None:  # stopped before its end: the map must not stay exported
            self.old.close()

    # ---- the thread ----------------------------------------------------------------

    def _run(self) -> None:
        import queue
        import threading

        try:
            while True:
                if not self.old_done.is_set() and not self._wait_for_new():
                    try:
                        item = self.todo.get_nowait()
                    except queue.Empty:
                        self._old_alone()
                        continue
                else:
                    item = self.todo.get()
                if item is _SHUTDOWN:
                    return
                if item is _DONE:
                    self.new_done.set()
                elif isinstance(item, threading.Event):
                    item.set()
                else:
                    self._chunk(*item)
        except BaseException as exc:  # handed to the waiters
            self.error = exc
            self.old_done.set()
            self.new_done.set()
            while True:  # keep releasing buffers and syncs so that nobody waits forever
                item = self.todo.get()
                if item is _SHUTDOWN:
                    return
                if isinstance(item, threading.Event):
                    item.set()
                elif isinstance(item, tuple):
                    self.free.put(item[0])

    def _wait_for_new(self) -> bool:
        """Wait for the next output chunk rather than hash the old image alone: while the
        output is coming and the old image is LEAD bytes ahead of it (hashed together,
        both go at the pair's speed; alone, each at the slower single-stream speed)."""
        assert self.old is not None
        return (
            self.h is not None
            and not self.new_done.is_set()
            and self.old.pos >= self.new_pos + LEAD
        )

    def _old_alone(self) -> None:
        assert self.old is not None
        piece = self.old.take(OLD_STEP) if not self.stop.is_set() else memoryview(b"")
        if len(piece):
            self.old_h.update(piece)
            return
        if not self.stop.is_set():
            self.old_result = self.old_h.digest()
        self.old.close()
        self.old_done.set()

    def _chunk(self, buf: mmap.mmap, n: int) -> None:
        try:
            if self.h is None:
                return
            data = memoryview(buf)[:n]
            done = 0
            while done < n and not self.old_done.is_set() and not self.stop.is_set():
                assert self.old is not None
                piece = self.old.take(n - done)
                if not len(piece):
                    self._old_alone()  # the old image ends here: finish its digest
                    break
                update_two(self.old_h, piece, self.h, data[done : done + len(piece)])
                done += len(piece)
            if done < n:
                self.h.update(data[done:])
            self.new_pos += n
            data.release()
        finally:
            self.free.put(buf)


#: Old and new images of at most this many bytes together are hashed inline.
INLINE_BELOW = 16 << 20


class InlineHasher:
    """:class:`PairHasher`'s interface without a thread: each chunk handed over is hashed
    at once, with as many bytes of the old image; the rest of the old image is hashed
    when its digest is asked for. For small images (see :func:`new_hasher`)."""

    def __init__(self, old: OldStream | None, *, chunk: int) -> None:
        self.old = old
        self.old_h: Any = Sha256() if old is not None else None
        self.h: Any = None
        self.new_pos = 0
        self._chunk = chunk
        self._buf: mmap.mmap | None = None
        self._old_result: bytes | None = None if old is not None else b""

    def hash_new(self) -> None:
        """Hash the chunks handed over from now on (before the first :meth:`put`)."""
        self.h = Sha256()

    def buffer(self) -> mmap.mmap:
        """The output buffer (one: a chunk is hashed before the next is made)."""
        if self._buf is None:
            self._buf = mmap.mmap(-1, self._chunk)
        return self._buf

    def put(self, chunk: memoryview) -> None:
        """Hash a filled chunk now (with as many bytes of the old image, two at once)."""
        n = len(chunk)
        if self.h is not None:
            done = 0
            while done < n and self.old is not None and self._old_result is None:
                piece = self.old.take(n - done)
                if not len(piece):
                    self._finish_old()
                    break
                update_two(self.old_h, piece, self.h, chunk[done : done + len(piece)])
                done += len(piece)
            if done < n:
                self.h.update(chunk[done:])
        self.new_pos += n

    def sync(self) -> None:
        """Every chunk handed over is hashed already."""

    def finish_new(self) -> None:
        """No more chunks (nothing waits)."""

    def old_digest(self) -> bytes:
        """The old image's SHA-256 (hashing what is left of it now)."""
        if self._old_result is None:
            assert self.old is not None
            while True:
                piece = self.old.take(OLD_STEP)
                if not len(piece):
                    break
                self.old_h.update(piece)
            self._finish_old()
        assert self._old_result is not None
        return self._old_result

    def _finish_old(self) -> None:
        assert self.old is not None
        self._old_result = self.old_h.digest()
        self.old.close()

    def shutdown(self) -> None:
        """Let go of the old image's map."""
        if self.old is not None:
            self.old.close()


def new_hasher(old: OldStream | None, total: int) -> PairHasher | InlineHasher:
    """The hasher for images of ``total`` bytes (old and new): inline when small."""
    if total <= INLINE_BELOW:
        return InlineHasher(old, chunk=CHUNK)
    return PairHasher(old, ring=RING, chunk=CHUNK)
