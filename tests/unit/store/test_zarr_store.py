"""The Zarr store: lossless round trips, single writer, snapshots, models, checkpoints, trajectories."""

from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest
from store_records import assert_same, identity, make_record

from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.store.store import Store


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    url = (
        str(tmp_path / "s")
        if request.param == "local"
        else f"memory://nnmd-test-{uuid.uuid4().hex}"
    )
    return Store(url)


def test_write_read_lossless(store):
    records = [make_record(c, s) for c in range(3) for s in range(6)]
    with store.writer() as w:
        ids = w.append(records[:5])
        ids += w.append(records[5:])
    assert ids == list(range(len(records)))
    reread = Store(store.url, read_only=True) if store.local_path else store
    batch = reread.read()
    assert len(batch) == len(records) == len(reread)
    for a, b in zip(records, batch):
        assert_same(a, b)
    assert batch.arrays["positions"].dtype == np.float64
    # a slice is the same records
    part = reread.read(4, 9)
    for k, rec in enumerate(part):
        assert_same(records[4 + k], rec)


def test_reopened_writer_continues(tmp_path):
    url = str(tmp_path / "s")
    with Store(url).writer() as w:
        w.append([make_record(0, 0), make_record(0, 1)])
    with Store(url).writer() as w:
        assert w.append(make_record(0, 2)) == [2]
    assert [identity(r) for r in Store(url).read()] == [(0, 0), (0, 1), (0, 2)]


def test_second_writer_of_a_campaign_refused(tmp_path):
    """Many writers per store, one per campaign (its lease); other campaigns write on."""
    store = Store(tmp_path / "s")
    with store.writer(campaign="a") as wa:
        with pytest.raises(FailedPrecondition, match="another writer"):
            Store(tmp_path / "s").writer(campaign="a")
        with Store(tmp_path / "s").writer(campaign="b") as wb, Store(tmp_path / "s").writer() as w:
            assert wa.append(make_record(0, 0, campaign="a")) == [0]
            assert wb.append(make_record(1, 0, campaign="b")) == [1]
            assert w.append(make_record(2, 0, campaign="c")) == [2]
        assert set(Store(tmp_path / "s").leases()) == {"a"}
    assert Store(tmp_path / "s").leases() == {}  # released on close
    with Store(tmp_path / "s").writer(campaign="a") as wa:  # free again
        assert wa.append(make_record(0, 1, campaign="a")) == [3]


def test_concurrent_thread_producers_with_a_reader(tmp_path):
    store = Store(tmp_path / "s")
    n_chains, n_steps = 4, 15
    stop = threading.Event()
    seen_sizes = []
    errors = []

    def reader():
        snap = Store(store.url, read_only=True)
        while not stop.is_set():
            try:
                batch = snap.read()
                for rec in batch:
                    identity(rec)  # every visible record is whole
                seen_sizes.append(len(batch))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return

    with store.writer() as w:

        def producer(chain):
            for step in range(n_steps):
                w.append(make_record(chain, step))  # waits for the ack: chain order kept

        r = threading.Thread(target=reader)
        r.start()
        threads = [threading.Thread(target=producer, args=(c,)) for c in range(n_chains)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        r.join()
    assert not errors, errors
    assert seen_sizes == sorted(seen_sizes)  # snapshots only grow
    ids = [identity(rec) for rec in store.read()]
    assert sorted(ids) == [(c, s) for c in range(n_chains) for s in range(n_steps)]  # exactly once
    for c in range(n_chains):
        assert [s for cc, s in ids if cc == c] == list(range(n_steps))  # in order per chain


def test_models_checkpoints_trajectories(store):
    with store.writer() as w:
        assert store.model_versions() == []
        with pytest.raises(NotFound):
            store.load_model()
        blob1, blob2 = bytes(range(256)) * 10, b"second model"
        assert w.publish_model(blob1, {"species": ["Si"]}) == 1
        assert w.publish_model(blob2, {"species": ["Si", "O"]}) == 2
        assert store.load_model(1) == (blob1, {"species": ["Si"]})
        assert store.load_model() == (blob2, {"species": ["Si", "O"]})
        with pytest.raises(NotFound, match="versions are 1..2"):
            store.load_model(3)

        w.write_checkpoint("camp", "chain0", {"step": 1})
        w.write_checkpoint("camp", "chain0", {"step": 2, "x": [1.5]})
        w.write_checkpoint("camp", "chain1", {"step": 7})
        assert store.read_checkpoint("camp", "chain0") == {"step": 2, "x": [1.5]}
        assert store.read_checkpoint("camp", "nope") is None
        assert store.list_checkpoints("camp") == ["chain0", "chain1"]

        rng = np.random.default_rng(0)
        numbers = np.array([14, 14, 8])
        frames = rng.normal(size=(5, 3, 3))
        w.append_frames("md-run", numbers, frames[:2], step=[0, 10], time_fs=[0.0, 5.0])
        n = w.append_frames(
            "md-run", numbers, frames[2:], step=[20, 30, 40], energy=[1.0, 2.0, 3.0]
        )
        assert n == 5
        t = store.read_trajectory("md-run")
        np.testing.assert_array_equal(t["positions"], frames)
        np.testing.assert_array_equal(t["step"], [0, 10, 20, 30, 40])
        assert np.isnan(t["energy"][:2]).all() and list(t["energy"][2:]) == [1, 2, 3]
        with pytest.raises(InvalidArgument, match="other atoms"):
            w.append_frames("md-run", np.array([1, 1, 1]), frames[:1])
    info = store.info()
    assert info["models"] == [1, 2] and info["trajectories"] == {"md-run": 5}


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "x" * 200, "a..b"])
def test_names_cannot_escape_the_store(store, bad):
    with store.writer() as w:
        with pytest.raises(InvalidArgument):
            w.write_checkpoint(bad, "chain", {})
        with pytest.raises(InvalidArgument):
            w.write_checkpoint("camp", bad, {})
        with pytest.raises(InvalidArgument):
            w.append_frames(bad, np.array([1]), np.zeros((1, 1, 3)))


def test_bad_records_rejected_before_writing(store):
    rec = make_record(0, 0, n_atoms=3)
    bad = type(rec)(
        rec.structure, type(rec.labels)(rec.labels.energy, np.zeros((2, 3)), None), rec.provenance
    )
    with store.writer() as w:
        with pytest.raises(InvalidArgument, match="forces"):
            w.append(bad)
        assert len(store) == 0
        with pytest.raises(InvalidArgument, match="source"):
            type(rec.provenance)(source="dft")


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(NotFound, match="no nnmd store"):
        Store(tmp_path / "nothing", read_only=True)


def test_docs_show_the_schema():
    from pathlib import Path

    from services.store import schema

    doc = (Path(__file__).resolve().parents[3] / "docs" / "store.md").read_text()
    assert schema.table() in doc, "docs/store.md is stale: paste services.store.schema.table()"


def test_read_one_campaign_and_dataset_ref(store):
    from services.proto.nnmd.v1 import common_pb2

    recs = [make_record(c, s, campaign=("a", "b")[s % 2]) for c in range(2) for s in range(5)]
    with store.writer() as w:
        w.append(recs)
    batch = store.read(campaign="b")
    expected = [k for k, r in enumerate(recs) if r.provenance.campaign == "b"]
    assert list(batch.ids) == expected
    for k, rec in zip(expected, batch):
        assert_same(recs[k], rec)
    ref = common_pb2.DatasetRef(
        store=common_pb2.StoreRef(url=store.url), first_record=2, campaign="a"
    )
    assert list(store.read_dataset(ref).ids) == [k for k in expected_a(recs) if k >= 2]
    assert len(store.read(campaign="zzz")) == 0


def expected_a(recs):
    return [k for k, r in enumerate(recs) if r.provenance.campaign == "a"]


def test_missing_memory_store_is_a_clear_error():
    with pytest.raises(NotFound):
        Store(f"memory://absent-{uuid.uuid4().hex}", read_only=True)
