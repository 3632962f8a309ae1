"""Fault injection for the fault suite (tests/integration/faults): inert unless asked.

``NNMD_FAULT=POINT[:N]`` makes this process SIGKILL itself the N-th time (default 1st) it
reaches ``point(POINT)``: a crash at an exact place of a step, with no chance to clean
up, as a power cut or the OOM killer would leave it. Points in the code:
``before_reference``, ``after_reference`` (a chain's reference call),
``store_write`` (inside a store append, after the commit's segment is encoded and before
it is created: nothing acknowledged is lost), ``after_append`` (a label durable, its chain
not yet checkpointed), ``training`` (a re-training done, its model not yet published),
``trainer_task`` (the same, inside the Ray task that trains when the campaign runs on
Ray), ``md_executor`` (an MD executor actor, after a proposal's trajectory and before it
answers: the pool re-sends the proposal, which gives the same result).
``NNMD_FAULT_ONCE=PATH`` makes the fault fire only while PATH does not exist (it is
created just before the kill), so a process that Ray restarts or a task it retries, which
inherits the same environment, is not killed again. The coordinator passes both variables
on to the Ray tasks it starts (the trainer), so the suite can kill those too.
"""

from __future__ import annotations

import os
import signal
import threading

_lock = threading.Lock()
_counts: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get("NNMD_FAULT", "").strip()
    if not spec:
        return None
    name, _, n = spec.partition(":")
    return name, int(n or 1)


_TARGET = _target()


def point(name: str) -> None:
    """A place where the fault suite may kill this process."""
    if _TARGET is None or _TARGET[0] != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] >= _TARGET[1]:
            once = os.environ.get("NNMD_FAULT_ONCE")
            if once:
                try:
                    with open(once, "x"):
                        pass
                except FileExistsError:
                    return  # fired already (in this process or an earlier one)
            os.kill(os.getpid(), signal.SIGKILL)


def environment() -> dict[str, str]:
    """The fault-injection variables of this process, for the workers it starts."""
    return {k: os.environ[k] for k in ("NNMD_FAULT", "NNMD_FAULT_ONCE") if k in os.environ}
