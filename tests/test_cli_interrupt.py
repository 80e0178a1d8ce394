"""The CLI's Ctrl-C guards (bsipatch.cli.interrupt): a Ctrl-C is never raised inside the
import machinery, and an unwinding that cannot finish is ended by the watchdog, which
removes the temporary outputs listed in bsipatch._partial. Each case runs in a fresh
interpreter that calls ``install()`` as ``bsipatch.__main__.entry()`` does, then does what
a command would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bsipatch import _partial

# Installs the handler and the watchdog as entry() does (install()), then imports a module whose
# body sends the process a Ctrl-C and keeps working: the interrupt must not be raised
# inside the import (Python would leak the import lock there), only after it.
_DEFERRED = """
import _imp, os, signal, sys, time
sys.path.insert(0, sys.argv[1])
import bsipatch.cli.interrupt as m
m.install()
try:
    import interrupts_itself
except KeyboardInterrupt:
    print("raised inside the import")
    raise SystemExit(1)
try:
    time.sleep(5)
    print("never delivered")
except KeyboardInterrupt:
    print("delivered after the import", interrupts_itself.DONE, _imp.lock_held())
"""

_MODULE = """
import os, signal, time
os.kill(os.getpid(), signal.SIGINT)
t = time.monotonic()
while time.monotonic() - t < 0.2:  # bytecode runs: Python checks for signals here
    pass
DONE = True
"""

# A command whose unwinding hangs (a cleanup that waits on a lock nobody will release,
# as a worker blocked on a leaked import lock would): the watchdog ends the process.
_HANGS = """
import os, signal, sys, threading, time
from pathlib import Path
import bsipatch.cli.interrupt as m
from bsipatch import _partial
m.GRACE = float(sys.argv[2])
m.install()
out = Path(sys.argv[1])
(out / ".patch.tmp").write_bytes(b"half")
(out / "build" / "sub").mkdir(parents=True)
(out / "build" / "sub" / "f").write_bytes(b"x")
os.symlink("/", out / "build" / "root-link")
_partial.add(out / ".patch.tmp")
_partial.add(out / "build", tree=True)
(out / "kept").write_bytes(b"not listed")
stuck = threading.Lock()
stuck.acquire()
try:
    print("ready", flush=True)
    time.sleep(30)
finally:
    os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C while unwinding: ignored
    stuck.acquire()  # never returns
"""


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60
    )


def test_ctrl_c_inside_an_import_is_delivered_after_it(tmp_path: Path) -> None:
    (tmp_path / "interrupts_itself.py").write_text(_MODULE)
    r = _run(_DEFERRED, str(tmp_path))
    assert r.stdout == "delivered after the import True False\n", r.stderr
    assert r.returncode == 0


def test_watchdog_ends_an_unwinding_that_hangs_and_removes_listed_outputs(
    tmp_path: Path,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HANGS, str(tmp_path), "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    assert (proc.returncode, out, err) == (130, "", "bsipatch: interrupted\n")
    assert 0.5 <= took < 10, took
    # the listed temporary file and tree are gone (the symlink removed, not followed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert Path("/").is_dir()


def test_partial_listing_add_discard_remove(tmp_path: Path) -> None:
    f = tmp_path / "f.tmp"
    f.write_bytes(b"x")
    before = set(_partial.listed())
    _partial.add(f)
    assert str(f) in _partial.listed()
    _partial.discard(f)
    _partial.discard(f)  # twice is fine
    assert set(_partial.listed()) == before
    assert f.exists()


def test_outputs_are_listed_only_while_being_written(tmp_path: Path) -> None:
    # atomic_write lists its temporary file while the body runs and forgets it after,
    # whether the body succeeds or raises
    from bsipatch._io import atomic_write

    seen = []
    with atomic_write(tmp_path / "out") as fh:
        fh.write(b"data")
        seen = [p for p in _partial.listed() if p.startswith(str(tmp_path))]
    assert len(seen) == 1 and not os.path.exists(seen[0])
    assert not [p for p in _partial.listed() if p.startswith(str(tmp_path))]
    try:
        with atomic_write(tmp_path / "out2") as fh:
            raise RuntimeError("body failed")
    except RuntimeError:
        pass
    assert not [p for p in _partial.listed() if p.startswith(str(tmp_path))]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# A main thread that does nothing but import (a worker thread imports too): a Ctrl-C is
# raised only between imports, never leaks the import lock, and the process ends within
# the grace period even if the main thread is inside an import at every moment.
_IMPORTS_ONLY = """
import _imp, importlib, os, sys, threading
sys.path.insert(0, sys.argv[1])
sys.dont_write_bytecode = True
import bsipatch.cli.interrupt as m
m.GRACE = 2.0
m.install()

def churn(first):
    i = first
    while True:
        importlib.import_module(f"m{i}")
        sys.modules.pop(f"m{i}", None)
        i = first + (i + 1) % 20

threading.Thread(target=churn, args=(20,), daemon=True).start()
print("ready", flush=True)
try:
    churn(0)
except KeyboardInterrupt:
    try:
        _imp.release_lock()
        print("import lock leaked", flush=True)
    except RuntimeError:
        print("caught between imports", flush=True)
    os._exit(0)
"""


def test_ctrl_c_while_only_importing_never_leaks_the_import_lock_or_hangs(
    tmp_path: Path,
) -> None:
    for i in range(40):
        numbers = ", ".join(str(j) for j in range(2000))
        (tmp_path / f"m{i}.py").write_text(f"X = [{numbers}]\n")
    for delay in (0.05, 0.13, 0.21, 0.34):
        proc = subprocess.Popen(
            [sys.executable, "-c", _IMPORTS_ONLY, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert (proc.returncode, out, err) in {
            (0, "caught between imports\n", ""),
            (130, "", "bsipatch: interrupted\n"),  # the watchdog, after 2 s
        }, (delay, proc.returncode, out, err[-500:])
