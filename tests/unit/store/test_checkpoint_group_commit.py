"""A chain step's label and checkpoint in one group commit of the store writer (issue 18):
the checkpoint is written only once its records are durable, a failed commit writes
neither, a kill between them leaves the label without the checkpoint (the resume replays
that step), a caller that gives up cannot break the commit thread, and a fold runs beside
the commits instead of holding them up."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from store_records import make_record

from services.store import log as seglog
from services.store.store import Store, StoreWriter, _checkpoint_key

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def _labels(url: str) -> list[tuple[str, int]]:
    a = Store(url, read_only=True).read().arrays
    return list(zip(a["chain"].tolist(), a["step"].tolist()))


@pytest.mark.parametrize("scheme", ["path", "memory"])
def test_label_and_checkpoint_in_one_commit(tmp_path, scheme):
    url = str(tmp_path / "s") if scheme == "path" else f"memory://ckpt-{os.getpid()}-{id(tmp_path)}"
    store = Store(url)
    with store.writer(campaign="c") as w:
        futs = [w.submit([make_record(k, 1)], checkpoint=("c", f"chain{k}", {"step": 1, "k": k}))
                for k in range(20)]
        ids = [f.result(30) for f in futs]
        # a step without a label (screened out, reference failed): the checkpoint alone
        assert w.submit([], checkpoint=("c", "chain0", {"step": 2, "k": 0})).result(30) == []
    assert sorted(i for got in ids for i in got) == list(range(20))
    assert sorted(_labels(url)) == sorted((f"chain{k}", 1) for k in range(20))
    assert store.read_checkpoint("c", "chain0") == {"step": 2, "k": 0}
    for k in range(1, 20):
        assert store.read_checkpoint("c", f"chain{k}") == {"step": 1, "k": k}


def test_failed_commit_writes_no_checkpoint(tmp_path, monkeypatch):
    url = str(tmp_path / "s")
    store = Store(url)
    with store.writer(campaign="c") as w:
        w.submit([make_record(0, 1)], checkpoint=("c", "chain0", {"step": 1})).result(30)
        real = store.backend.create

        def broken(key, data):
            if key.startswith(seglog.LOG_PREFIX):
                raise OSError("disk full")
            return real(key, data)

        monkeypatch.setattr(store.backend, "create", broken)
        fut = w.submit([make_record(0, 2)], checkpoint=("c", "chain0", {"step": 2}))
        with pytest.raises(OSError, match="disk full"):
            fut.result(30)
        # the label is not durable: its checkpoint must not count it
        assert store.read_checkpoint("c", "chain0") == {"step": 1}
        monkeypatch.setattr(store.backend, "create", real)
        # the writer goes on
        w.submit([make_record(0, 2)], checkpoint=("c", "chain0", {"step": 2})).result(30)
    assert store.read_checkpoint("c", "chain0") == {"step": 2}
    assert sorted(_labels(url)) == [("chain0", 1), ("chain0", 2)]


KILLED = """
import sys
from services.store.store import Store
from store_records import make_record
url = sys.argv[1]
w = Store(url).writer(campaign="c")
w.submit([make_record(0, 1)], checkpoint=("c", "chain0", {"step": 1})).result(30)
w.submit([make_record(0, 2)], checkpoint=("c", "chain0", {"step": 2})).result(30)
print("not killed", flush=True)
"""


def test_kill_between_label_and_checkpoint_keeps_the_label_not_the_checkpoint(tmp_path):
    url = str(tmp_path / "s")
    Store(url)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{HERE}", "NNMD_FAULT": "after_append:2"}
    out = subprocess.run([sys.executable, "-c", KILLED, url], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == -9, out.stdout + out.stderr[-2000:]
    # the second step's label is durable; its chain is still checkpointed at step 1
    assert sorted(_labels(url)) == [("chain0", 1), ("chain0", 2)]
    assert Store(url, read_only=True).read_checkpoint("c", "chain0") == {"step": 1}


def test_same_checkpoint_twice_in_one_commit_keeps_the_later(tmp_path):
    store = Store(str(tmp_path / "s"))
    with store.writer() as w:
        k = _checkpoint_key("c", "chain0")
        w._write_checkpoints([((k, {"step": 1}), True), ((k, {"step": 2}), False)])
    assert store.read_checkpoint("c", "chain0") == {"step": 2}


def test_a_cancelled_waiter_does_not_break_the_commit_thread(tmp_path):
    url = str(tmp_path / "s")
    store = Store(url)
    with store.writer(campaign="c") as w:
        gate = threading.Event()
        real = w._write

        def slow(records):
            gate.wait(30)
            return real(records)

        w._write = slow

        async def main():
            task = asyncio.ensure_future(asyncio.wrap_future(
                w.submit([make_record(0, 1)], checkpoint=("c", "chain0", {"step": 1}))))
            await asyncio.sleep(0.05)
            task.cancel()  # e.g. the campaign's task group ends while the step commits
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        gate.set()
        w._write = real
        # the commit thread survived (the future could not be cancelled under it)
        assert w.submit([make_record(0, 2)], checkpoint=("c", "chain0", {"step": 2})
                        ).result(30) == [1]
    assert sorted(_labels(url)) == [("chain0", 1), ("chain0", 2)]
    assert store.read_checkpoint("c", "chain0") == {"step": 2}


def test_commits_go_on_while_a_fold_runs(tmp_path, monkeypatch):
    url = str(tmp_path / "s")
    store = Store(url)
    monkeypatch.setattr(StoreWriter, "FOLD_EVERY", 4)
    w = store.writer(campaign="c")
    folding, release = threading.Event(), threading.Event()
    real = w._fold

    def held_fold():
        folding.set()
        release.wait(30)
        return real()

    w._fold = held_fold
    try:
        for step in range(4):
            w.append(make_record(0, step))
        assert folding.wait(30), "no fold started after FOLD_EVERY segments"
        # the fold is held: commits must not wait for it
        for step in range(4, 8):
            fut = w.submit([make_record(0, step)], checkpoint=("c", "chain0", {"step": step}))
            fut.result(10)
        assert store.read_checkpoint("c", "chain0") == {"step": 7}
    finally:
        release.set()
        w.close()
    assert sorted(_labels(url)) == [("chain0", k) for k in range(8)]
    assert store._folded()[0] == 8  # the held fold, then the one at close, folded all
