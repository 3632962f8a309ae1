"""Damaged chunks are detected and reported (typed error, `nnmd store check`), never read as data."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from store_records import identity, make_record
from zarr.codecs import ZstdCodec
from zarr.core.sync import sync

from orchestrator.cli import main
from services.runtime.errors import DataCorruption, FailedPrecondition
from services.store import integrity, schema
from services.store.store import Store

N_RECORDS = 30


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Small chunks, so a store of a few records has several chunks per array."""
    monkeypatch.setattr(schema, "ATOM_CHUNK", 32)
    monkeypatch.setattr(schema, "STRUCTURE_CHUNK", 8)
    monkeypatch.setattr(schema, "FRAME_CHUNK", 4)


def _write(url, n=N_RECORDS) -> Store:
    store = Store(url)
    with store.writer() as w:
        w.append([make_record(0, s) for s in range(n // 2)])
        w.append([make_record(1, s) for s in range(n - n // 2)])
    return store


def _chunk(store: Store, array: str, k: int) -> Path:
    path = store.local_path / schema.STRUCTURES_GROUP / array / "c" / str(k)
    return path / "0" if path.is_dir() else path


def _flip(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _check(url, capsys, *extra) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["store", "check", str(url), *extra])
    return rc, capsys.readouterr().out


def _atom_rows_of_chunk(store: Store, k: int) -> tuple[int, int]:
    """The records whose atoms live in atom chunk k (read from a clean store)."""
    offsets = store.read().arrays["offsets"]
    lo, hi = k * schema.ATOM_CHUNK, (k + 1) * schema.ATOM_CHUNK
    r0 = int(np.searchsorted(offsets, lo, side="right")) - 1
    r1 = int(np.searchsorted(offsets, hi, side="left"))
    return r0, r1


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_positions_chunk_is_reported(tmp_path, capsys, damage):
    store = _write(tmp_path / "s")
    r0, r1 = _atom_rows_of_chunk(store, 1)
    path = _chunk(store, "positions", 1)
    assert path.is_file()
    if damage == "flip":
        _flip(path)
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.unlink()

    reader = Store(store.url, read_only=True)
    with pytest.raises(DataCorruption) as err:
        reader.read()
    text = str(err.value)
    assert "structures/positions" in text and "structures/positions/c/1/0" in text
    assert f"records {r0}..{r1 - 1}" in text
    assert "backup" in text and "nnmd store check" in text
    assert err.value.code == grpc.StatusCode.DATA_LOSS
    assert isinstance(err.value, FailedPrecondition)  # callers refusing on it refuse here too
    problem = {"flip": "crc32c", "truncate": "crc32c", "delete": "missing"}[damage]
    assert problem in text
    # records whose atoms are in other chunks still read, and are right
    if r0 > 0:
        assert [identity(r) for r in reader.read(0, r0)] == [(0, s) for s in range(r0)]

    rc, out = _check(store.url, capsys)
    assert rc == 1
    assert "structures/positions/c/1/0" in out and problem in out
    assert "DAMAGED" in out and "1 chunk(s)" in out
    rc, out = _check(store.url, capsys, "--json")
    report = json.loads(out)
    assert rc == 1 and not report["ok"]
    assert [d["key"] for d in report["damaged"]] == ["structures/positions/c/1/0"]
    assert report["damaged"][0]["records"] == [r0, r1]


def test_damaged_record_array_chunk_names_records(tmp_path):
    store = _write(tmp_path / "s")
    path = _chunk(store, "energy", 2)  # records 16..23
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataCorruption, match=r"structures/energy/c/2 \(records 16\.\.23\)"):
        Store(store.url, read_only=True).read()
    assert len(Store(store.url).read(0, 16)) == 16
    with pytest.raises(DataCorruption, match="structures/energy"):
        Store(store.url).info()


def test_deleted_chunk_in_object_store(capsys):
    url = f"memory://nnmd-test-{uuid.uuid4().hex}"
    store = _write(url)
    sync(store.zstore.delete("structures/forces/c/0/0"))
    with pytest.raises(DataCorruption, match="structures/forces/c/0/0.*missing"):
        store.read()
    rc, out = _check(url, capsys)
    assert rc == 1 and "structures/forces/c/0/0" in out


def test_all_fill_chunks_are_stored(tmp_path, capsys):
    """A chunk that is all NaN (no velocities, no forces) is a key, so absent = damage."""
    store = Store(tmp_path / "s")
    with store.writer() as w:
        w.append([make_record(0, s) for s in (0, 12, 24)])  # step % 3 == 0: no velocities
    assert np.isnan(store.read().arrays["velocities"]).all()
    assert _chunk(store, "velocities", 0).is_file()
    rc, out = _check(store.url, capsys)
    assert rc == 0, out


def test_clean_store_checks_clean(tmp_path, capsys):
    store = _write(tmp_path / "s")
    with store.writer() as w:
        w.publish_model(b"model bytes " * 1000, {"species": ["Si"]})
        w.append_frames("md", np.array([14, 14]), np.zeros((6, 2, 3)))
        w.write_checkpoint("c", "chain0", {"step": 3})
    rc, out = _check(store.url, capsys)
    assert rc == 0, out
    assert "clean" in out and "no checksums" not in out
    rc, out = _check(store.url, capsys, "--json")
    report = json.loads(out)
    assert rc == 0 and report["ok"] and report["damaged"] == [] and report["chunks"] > 20
    # --store works as well as the positional folder
    capsys.readouterr()
    assert main(["store", "check", "--store", str(store.url)]) == 0


def test_writer_refuses_to_rewrite_a_damaged_partial_chunk(tmp_path):
    """Appending into a chunk whose committed rows are gone would re-checksum fill values."""
    store = _write(tmp_path / "s", n=5)  # 5 records: every array has one partial chunk
    _chunk(store, "energy", 0).unlink()
    with store.writer() as w:
        assert w.append(make_record(2, 0)) == [5]  # appends go to the log (schema 2)
        with pytest.raises(DataCorruption, match="structures/energy/c/0"):
            w.fold()  # folding them into the arrays would rewrite the damaged chunk
    assert Store(store.url)._folded()[0] == 5  # the arrays took nothing
    assert len(Store(store.url)) == 6  # the record is committed, in the log
    assert identity(Store(store.url).read(5).record(0)) == (2, 0)
    with pytest.raises(DataCorruption):
        Store(store.url).read()


def test_corrupted_model_is_refused(tmp_path, capsys):
    store = Store(tmp_path / "s")
    data = np.random.default_rng(0).bytes(3 * schema.MODEL_BYTES_CHUNK // 2)
    with store.writer() as w:
        assert w.publish_model(data, {"k": 1}) == 1
    assert store.load_model(1)[0] == data
    chunk = store.local_path / schema.model_group(1) / "file" / "c" / "1"
    _flip(chunk, 100)
    with pytest.raises(DataCorruption, match=r"models/v000001/file/c/1 \(bytes .*crc32c"):
        store.load_model(1)
    rc, out = _check(store.url, capsys)
    assert rc == 1 and "models/v000001/file/c/1" in out


def test_corrupted_trajectory_is_refused(tmp_path, capsys):
    store = Store(tmp_path / "s")
    with store.writer() as w:
        w.append_frames("md", np.array([1, 8, 1]), np.arange(10 * 9.0).reshape(10, 3, 3))
    key = Path(schema.TRAJECTORIES_GROUP) / "md" / "positions" / "c" / "1" / "0" / "0"
    _flip(store.local_path / key)
    with pytest.raises(DataCorruption, match="trajectories/md/positions/c/1/0/0 \\(frames 4..7\\)"):
        store.read_trajectory("md")
    np.testing.assert_array_equal(store.read_trajectory("md", 0, 4)["positions"].ravel(), np.arange(36.0))
    rc, out = _check(store.url, capsys)
    assert rc == 1 and str(key) in out


def test_garbled_checkpoint_is_reported(tmp_path, capsys):
    store = _write(tmp_path / "s")
    with store.writer() as w:
        w.write_checkpoint("c", "chain0", {"step": 3, "state": list(range(50))})
    path = store.local_path / "checkpoints" / "c" / "chain0.json"
    path.write_bytes(path.read_bytes()[:20])
    rc, out = _check(store.url, capsys)
    assert rc == 1 and "checkpoints/c/chain0.json" in out


@pytest.fixture
def old_format(monkeypatch):
    """Arrays as written before checksums: zstd only, all-fill chunks not stored."""
    monkeypatch.setattr(integrity, "COMPRESSORS", (ZstdCodec(level=0, checksum=False),))
    monkeypatch.setattr(integrity, "ARRAY_CONFIG", {"write_empty_chunks": False})


def test_store_written_before_checksums_still_reads(tmp_path, capsys, old_format, monkeypatch):
    url = tmp_path / "s"
    store = _write(url)
    data = np.random.default_rng(1).bytes(4000)  # incompressible: zstd stores it raw
    with store.writer() as w:
        w.publish_model(data)
        w.append_frames("md", np.array([14]), np.zeros((3, 1, 3)))
    codecs = json.loads((url / "structures" / "positions" / "zarr.json").read_text())["codecs"]
    assert [c["name"] for c in codecs] == ["bytes", "zstd"]
    monkeypatch.undo()  # back to today's code

    reader = Store(url, read_only=True)
    assert [identity(r) for r in reader.read()][:3] == [(0, 0), (0, 1), (0, 2)]
    assert reader.load_model()[0] == data
    rc, out = _check(url, capsys)
    assert rc == 0 and "no checksums" in out and "structures/positions" in out
    report = json.loads(_check(url, capsys, "--json")[1])
    assert "models/v000001/file" in report["without_checksums"]
    # today's writer appends to the old arrays (they stay without checksums)
    with Store(url).writer() as w:
        assert w.append(make_record(3, 0)) == [N_RECORDS]
    assert identity(Store(url).read(N_RECORDS).record(0)) == (3, 0)
    assert _check(url, capsys)[0] == 0

    # without a crc a flipped byte in raw zstd data decodes: the model's sha256 still refuses it
    _flip(url / schema.model_group(1) / "file" / "c" / "0", 2000)
    with pytest.raises(DataCorruption, match="sha256"):
        Store(url).load_model(1)
    rc, out = _check(url, capsys)
    assert rc == 1 and "sha256" in out
    # and an undecodable chunk of an old array is still reported, not read
    path = _chunk(reader, "positions", 0)
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(DataCorruption, match="structures/positions/c/0/0.*cannot be decoded"):
        Store(url).read()
