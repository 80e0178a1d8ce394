"""The transaction step every preboot operation shares: journal, one atomic commit, end.

:func:`switch` journals an operation, commits ``mutate(state)`` with one atomic
replacement of ``state.json`` and ends the transaction; :func:`abort` leaves what an
error interrupted to recovery; :func:`now_entry` makes a history entry. Callers hold
the preboot lock. No decisions about what to change here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from bsipatch._crashpoints import crashpoint
from bsipatch._io import os_error_to_staging
from bsipatch.device.preboot import Preboot
from bsipatch.errors import BsipatchError, RollbackFailed, SealError, StateError


def now_entry(pb: Preboot, op: str, **data: Any) -> dict[str, Any]:
    """A history entry ``{"time", "op", **data}`` stamped with the preboot's clock."""
    entry = {"time": pb.clock(), "op": op}
    entry.update(data)
    return entry


def abort(pb: Preboot) -> None:
    """Best-effort undo after an error; a failure here is left to the next recovery."""
    # the original error matters more; the next operation's recovery runs again
    with contextlib.suppress(Exception):
        pb.recover_locked()


def switch(
    pb: Preboot, op: str, mutate: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """Journal ``op``, commit ``mutate(state)`` atomically, end, clean up. Lock held."""
    state = pb.read_state()
    try:
        tx = pb.journal.begin(op)
    except OSError as exc:
        raise os_error_to_staging(exc, op) from exc
    try:
        new_state = mutate(dict(state))
        new_state["last_tx"] = tx
        pb.write_state(new_state)
        crashpoint(f"{op}.committed")
        pb.journal.end(tx)
        crashpoint(f"{op}.ended")
        pb.journal.compact()
    except BaseException as exc:
        abort(pb)
        if isinstance(exc, OSError) and not isinstance(exc, BsipatchError):
            raise os_error_to_staging(exc, op) from exc
        raise
    return new_state


def settle(
    pb: Preboot,
    op: str,
    *,
    chain: list[str] | None = None,
    also: Callable[[dict[str, Any]], None] | None = None,
    **entry: Any,
) -> dict[str, Any]:
    """:func:`switch` with the edits every step back or confirmation makes: the chain
    (when given), no tentative release, ``also(state)`` for anything else, and one
    history entry ``op`` with ``entry``'s fields. Lock held."""

    def mutate(s: dict[str, Any]) -> dict[str, Any]:
        if chain is not None:
            s["chain"] = chain
        s["tentative"] = None
        if also is not None:
            also(s)
        s["history"] = [*s.get("history", []), now_entry(pb, op, **entry)]
        return s

    return switch(pb, op, mutate)


def verified_previous(
    pb: Preboot,
    state: dict[str, Any],
    nothing: str,
    failed: Callable[[str | None, str | None, Exception], str],
) -> tuple[list[str], str | None, str | None]:
    """The active chain, its top release id and the one a step back reaches (None: base).

    The images stepped back to are verified first (the base images byte for byte).
    Shared by rollback and the health fallback.

    Raises:
        StateError: no release is installed (``nothing`` is the message).
        RollbackFailed: the earlier images do not verify; ``failed(from_id, to_id, exc)``
            gives the message.
    """
    chain: list[str] = state["chain"]
    if not chain:
        raise StateError(nothing)
    target = chain[-2] if len(chain) > 1 else None
    from_id, to_id = pb.release_id_of(chain[-1]), pb.release_id_of(target)
    try:
        pb.verify_selection(state["os"]["base"], target, exact=target is None)
    except (SealError, OSError, BsipatchError) as exc:
        raise RollbackFailed(failed(from_id, to_id, exc)) from exc
    return chain, from_id, to_id
