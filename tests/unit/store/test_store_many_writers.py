"""Many writers in one store: processes on a folder and on a file:// URL, threads on memory://,
campaign leases; `nnmd store check` finds every row exactly once (issue 18)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from store_records import identity, make_record

from orchestrator.cli import main
from services.runtime.errors import FailedPrecondition
from services.store import log as seglog
from services.store import schema
from services.store.store import Store, StoreWriter

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

CHILD = """
import sys
from services.store.store import Store, StoreWriter
from store_records import make_record
url, chain, n, fold_every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
StoreWriter.FOLD_EVERY = fold_every
ids = []
with Store(url).writer(campaign=f"c{chain}") as w:
    for step in range(n):
        ids += w.append(make_record(chain, step, campaign=f"c{chain}"))
print(" ".join(map(str, ids)), flush=True)
"""


def _check(url, capsys, *extra) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["store", "check", str(url), *extra])
    return rc, capsys.readouterr().out


def _start(url: str, chain: int, n: int, fold_every: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(chain), str(n), str(fold_every)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{HERE}"})


@pytest.mark.parametrize("scheme", ["path", "file://"])
def test_two_processes_append_concurrently(tmp_path, capsys, scheme):
    folder = tmp_path / "s"
    url = str(folder) if scheme == "path" else f"file://{folder}"
    Store(url)
    n = 60
    # fold often, so folds by one writer run while the other appends
    procs = [_start(url, chain, n, 16) for chain in (0, 1)]
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        ids.append([int(x) for x in out.split()])
    store = Store(url, read_only=True)
    assert len(store) == 2 * n
    assert sorted(ids[0] + ids[1]) == list(range(2 * n))  # every id handed out once
    batch = store.read()
    got = [identity(r) for r in batch]
    assert sorted(got) == [(c, s) for c in (0, 1) for s in range(n)]  # every row once
    for chain in (0, 1):  # the id a writer was given is its record's
        for step, rid in enumerate(ids[chain]):
            assert identity(batch.record(rid)) == (chain, step)
        assert [s for c, s in got if c == chain] == list(range(n))  # in order per chain
    assert store.leases() == {}
    rc, out = _check(url, capsys)
    assert rc == 0, out
    assert f"{2 * n} records" in out and "clean" in out


def test_two_writers_in_one_process_on_memory(capsys):
    url = f"memory://nnmd-test-{uuid.uuid4().hex}"
    Store(url)
    n, errors = 40, []

    def produce(chain, fold_every):
        try:
            w = Store(url).writer(campaign=f"c{chain}")
            w.FOLD_EVERY = fold_every
            with w:
                for step in range(n):
                    w.append(make_record(chain, step, campaign=f"c{chain}"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(c, 8 + c)) for c in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    store = Store(url, read_only=True)
    got = sorted(identity(r) for r in store.read())
    assert got == [(c, s) for c in (0, 1) for s in range(n)]
    rc, out = _check(url, capsys)
    assert rc == 0, out


def test_check_finds_duplicates_gaps_torn_segments_and_bad_leases(tmp_path, capsys):
    url = str(tmp_path / "s")
    store = Store(url)
    w = store.writer()
    w.FOLD_EVERY = 10**9
    with w:
        w.append([make_record(0, s) for s in range(3)])
        w.append(make_record(0, 1))  # the same (campaign, chain, step, source) again
        w.append(make_record(0, 7))
        w.append(make_record(0, 8))
    # closing folded the log: write more segments, then damage them
    w = store.writer()
    w.FOLD_EVERY = 10**9
    w.append(make_record(1, 0))
    w.append(make_record(1, 1))
    w.append(make_record(1, 2))
    w._try_fold = lambda: 0  # leave them in the log
    w.close()
    segs = seglog.list_segments(store.backend)
    assert len(segs) >= 3
    seg = store.local_path / seglog.seg_key(segs[-2])
    seg.write_bytes(seg.read_bytes()[:-10])  # torn
    (store.local_path / seglog.seg_key(segs[-1])).rename(tmp_path / "gone")
    (store.local_path / seglog.seg_key(segs[-1] + 1)).write_bytes(
        (tmp_path / "gone").read_bytes())  # a gap
    (store.local_path / "leases").mkdir(exist_ok=True)
    (store.local_path / "leases" / "x.json").write_text("{not json")
    rc, out = _check(url, capsys)
    assert rc == 1
    lines = [line for line in out.splitlines() if line.startswith("PROBLEM")]
    assert any("duplicate row: campaign c chain chain0 step 1 source hmc" in x for x in lines)
    assert any("is torn" in x for x in lines)
    assert any("missing" in x and "unreachable" in x for x in lines)
    assert any("leases/x.json" in x for x in lines)
    report = json.loads(_check(url, capsys, "--json")[1])
    assert not report["ok"] and len(report["problems"]) == len(lines)


def test_stale_lease_is_taken_over(tmp_path):
    url = str(tmp_path / "s")
    store = Store(url)
    w = store.writer(campaign="a", lease_ttl=0.6)
    w._lease._stop.set()  # a writer that hangs: it no longer renews
    time.sleep(0.1)
    with pytest.raises(FailedPrecondition, match="another writer"):
        Store(url).writer(campaign="a")
    time.sleep(0.8)
    assert Store(url).leases()["a"]["stale"]
    with Store(url).writer(campaign="a", lease_ttl=5) as w2:
        assert w2.append(make_record(0, 0, campaign="a")) == [0]
        # the old writer is fenced: it finds its lease gone before it writes
        with pytest.raises(FailedPrecondition, match="lost its lease"):
            w.append(make_record(9, 0, campaign="a"))
    w._lease = None
    w.close()


def test_lease_of_a_dead_process_on_this_host_is_taken_at_once(tmp_path):
    url = str(tmp_path / "s")
    Store(url)
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                       capture_output=True, text=True, check=True)
    dead = int(p.stdout)
    lease = {"owner": "x" * 32, "host": os.uname().nodename, "pid": dead,
             "expires": time.time() + 3600, "ttl": 3600}
    (tmp_path / "s" / "leases").mkdir()
    (tmp_path / "s" / "leases" / "a.json").write_text(json.dumps(lease))
    with Store(url).writer(campaign="a") as w:
        assert w.append(make_record(0, 0, campaign="a")) == [0]


def test_schema_1_store_reads_and_is_upgraded(tmp_path, capsys):
    """A store written before the log (schema 1: arrays only) reads; a writer appends after it."""
    url = str(tmp_path / "s")
    store = Store(url)
    with store.writer() as w:
        w.append([make_record(0, s) for s in range(5)])  # folded into the arrays on close
    import zarr

    root = zarr.open_group(url, mode="a")
    root.attrs[schema.ROOT_ATTR] = {"schema": 1}
    g = root["structures"]
    g.attrs[schema.COMMITTED_ATTR] = {"S": 5, "A": int(g.attrs[schema.COMMITTED_ATTR]["A"])}
    import shutil

    shutil.rmtree(tmp_path / "s" / "log")  # a schema 1 store has no log
    assert [identity(r) for r in Store(url, read_only=True).read()] == [(0, s) for s in range(5)]
    with Store(url).writer() as w:
        assert w.append(make_record(0, 5)) == [5]
    assert Store(url).schema_version == 2
    assert [identity(r) for r in Store(url).read()] == [(0, s) for s in range(6)]
    assert _check(url, capsys)[0] == 0


def test_models_published_by_two_writers_get_two_versions(tmp_path):
    url = str(tmp_path / "s")
    a, b = Store(url).writer(), Store(url).writer()
    with a, b:
        assert a.publish_model(b"one") == 1
        assert b.publish_model(b"two") == 2
        assert a.publish_model(b"three") == 3
    assert Store(url).model_versions() == [1, 2, 3]
    assert Store(url).load_model(2)[0] == b"two"


def test_group_commit_cpu_is_small(tmp_path):
    """Issue 18: at most 10 ms of CPU per group commit (one segment, not 18 arrays)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from store import commit_cpu_ms

    ms = commit_cpu_ms(str(tmp_path / "s"), n_atoms=96, batch=1, commits=60)
    assert ms < 10.0, f"{ms:.1f} ms CPU per commit"
    assert isinstance(StoreWriter.FOLD_EVERY, int)
    assert np.isfinite(ms)


FOLD_CHILD = """
import sys
from services.store.store import Store, StoreWriter
from store_records import make_record
StoreWriter.FOLD_EVERY = 4
with Store(sys.argv[1]).writer() as w:
    for step in range(20):
        w.append(make_record(0, step))
        print(step, flush=True)
"""


def test_writer_killed_inside_a_fold_loses_nothing(tmp_path, capsys):
    """SIGKILL after a fold wrote the arrays' rows, before its commit: the records stay in
    the log under their ids; the next writer folds them."""
    url = str(tmp_path / "s")
    Store(url)
    proc = subprocess.run(
        [sys.executable, "-c", FOLD_CHILD, url], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{HERE}", "NNMD_FAULT": "store_fold:1"},
        timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    acked = [int(x) for x in proc.stdout.split()]
    assert acked == list(range(len(acked))) and len(acked) >= 4
    store = Store(url, read_only=True)
    assert store._folded()[0] == 0  # the fold did not commit
    assert [identity(r) for r in store.read()] == [(0, s) for s in acked]
    assert main(["store", "check", url]) == 0, capsys.readouterr().out
    assert Store(url).leases() == {}
    with Store(url).writer() as w:  # the fold lock of the dead writer is taken over
        assert w.append(make_record(0, 99)) == [len(acked)]
    store = Store(url, read_only=True)
    assert store._folded()[0] == len(acked) + 1  # folded on close
    assert [identity(r) for r in store.read()] == [(0, s) for s in acked] + [(0, 99)]
    capsys.readouterr()
    assert main(["store", "check", url]) == 0, capsys.readouterr().out


def test_first_models_published_at_the_same_moment(tmp_path):
    """Two campaigns of one coordinator publish their first models at once into a store
    with no models group yet: both get a version (zarr's require_group raced here)."""
    import threading

    for attempt in range(5):
        url = str(tmp_path / f"s{attempt}")
        writers = [Store(url).writer(campaign=c) for c in ("a", "b", "c")]
        barrier = threading.Barrier(len(writers))
        got, errors = [], []

        def publish(w, barrier=barrier, got=got, errors=errors):
            barrier.wait()
            try:
                got.append(w.publish_model(b"m"))
            except Exception as exc:  # noqa: BLE001 - collected and reported below
                errors.append(exc)

        threads = [threading.Thread(target=publish, args=(w,)) for w in writers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for w in writers:
            w.close()
        assert not errors, errors
        assert sorted(got) == [1, 2, 3]
        assert Store(url).model_versions() == [1, 2, 3]


def test_require_group_opens_a_group_created_under_its_feet(tmp_path):
    """The race seen in a coordinator with two campaigns: zarr's require_group checks, the
    other writer creates the group, require_group's own create raises ContainsGroupError."""
    import zarr
    from zarr.errors import ContainsGroupError

    from services.store.store import _require_group

    store = Store(str(tmp_path / "s"))
    with store.writer() as w:
        w.publish_model(b"m")  # the models group exists now

    class Racing:  # a root whose require_group lost the race
        def require_group(self, path):
            raise ContainsGroupError(path)

    g = _require_group(store.zstore, Racing(), "models")
    assert isinstance(g, zarr.Group) and g.path == "models"
