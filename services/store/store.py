"""The Zarr v3 store: labelled structures, models, chain checkpoints, trajectories.

``Store(url)`` reads; ``Store(url).writer()`` gives the one :class:`StoreWriter`
allowed per store. The layout and units are in :mod:`services.store.schema`.

A URL is a local folder (default; ``file://`` accepted) or any fsspec URL
(``memory://``, ``s3://``, ``gs://`` with the matching fsspec package).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

from services.runtime import faults
from services.runtime.convert import LabelArrays, StructureArrays, stress_3x3
from services.runtime.errors import DataCorruption, FailedPrecondition, InvalidArgument, NotFound
from services.store import integrity, schema

DEFAULT_STORE_URL = os.environ.get("NNMD_STORE", "nnmd-store")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Capacity is grown by doubling so that array metadata is rewritten rarely.
_INITIAL_STRUCTURES = 1024
_INITIAL_ATOMS = 8192


def safe_name(name: str, field: str) -> str:
    """A name used inside store keys (campaign, chain, trajectory): no path tricks."""
    # fullmatch: re.match with "$" would let a trailing newline through ("a\n").
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidArgument(
            field,
            f"{name!r} is not a valid name",
            "use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def check_store_url(url: str, field: str, roots: Sequence[str] | None = None) -> str:
    """A store URL that arrived over the network, checked before anything opens it.

    Always refused: empty, NUL or other control characters, more than 4096 characters.
    With ``roots`` (a server's ``--store-root`` folders or URL prefixes), the URL must
    name a store inside one of them: a local path must resolve (symlinks and ``..``
    followed) to a root or below it, an fsspec URL must start with a root URL
    followed by ``/``. ``roots`` None = any store the server can reach (trusted clients).
    """
    hint = "send the URL of a store on this server"
    if not isinstance(url, str) or not url:
        raise InvalidArgument(field, "is empty", hint)
    if len(url) > 4096:
        raise InvalidArgument(field, f"is {len(url)} characters long (limit 4096)", hint)
    if any(ord(c) < 32 or ord(c) == 127 for c in url):
        raise InvalidArgument(field, "contains a NUL or control character", hint)
    remote = "://" in url and not url.startswith("file://")
    if not remote:
        try:
            path = Path(url.removeprefix("file://")).expanduser().resolve()
        except (RuntimeError, OSError, ValueError) as exc:  # "~nobody", loops, bad names
            raise InvalidArgument(field, f"{url!r} is not a usable path ({exc})", hint) from None
    if roots is None:
        return url
    allowed = ", ".join(str(r) for r in roots) or "none"
    if remote:
        for root in roots:
            root = str(root).rstrip("/")
            if "://" in root and not root.startswith("file://") and (
                url.rstrip("/") == root or url.startswith(root + "/")) and "/../" not in url + "/":
                return url
        raise InvalidArgument(field, f"{url!r} is outside the stores this server serves",
                              f"use a store under {allowed}")
    for root in roots:
        root = str(root)
        if "://" in root and not root.startswith("file://"):
            continue
        base = Path(root.removeprefix("file://")).expanduser().resolve()
        if path == base or path.is_relative_to(base):
            return url
    raise InvalidArgument(field, f"{url!r} is outside the stores this server serves",
                          f"use a store under {allowed}")


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class Provenance:
    campaign: str = ""
    chain: str = ""
    step: int = -1
    source: str = "import"  # aimd | hmc | mc | import
    model_version: int = 0
    accepted: bool = False
    reference_settings_hash: str = ""
    wall_time: float = float("nan")  # s

    def __post_init__(self):
        if self.source not in schema.SOURCE_KINDS:
            raise InvalidArgument(
                "provenance.source",
                f"unknown source {self.source!r}",
                f"use one of {schema.SOURCE_KINDS}",
            )


@dataclass(frozen=True)
class Record:
    """One labelled structure with its provenance."""

    structure: StructureArrays
    labels: LabelArrays = field(default_factory=LabelArrays)
    provenance: Provenance = field(default_factory=Provenance)


@dataclass(frozen=True)
class StructureBatch:
    """A consistent snapshot of records [start, stop) as arrays (see schema for shapes/units).

    ``offsets`` are relative to this batch: atoms of record k are rows
    ``offsets[k]:offsets[k + 1]`` of the atom arrays.
    """

    start: int
    arrays: dict[str, np.ndarray]
    ids: np.ndarray | None = None  # (S,) record ids; None = start, start + 1, ...

    def __post_init__(self):
        if self.ids is None:
            object.__setattr__(
                self, "ids", np.arange(self.start, self.start + len(self), dtype=np.int64)
            )

    def __len__(self) -> int:
        return len(self.arrays["energy"])

    def take(self, keep: np.ndarray) -> StructureBatch:
        """The records at positions ``keep`` (sorted) of this batch, repacked."""
        a = self.arrays
        sizes = np.diff(a["offsets"])[keep]
        rows = np.concatenate(
            [np.arange(a["offsets"][k], a["offsets"][k + 1]) for k in keep] or [np.zeros(0, int)]
        )
        out = {"offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)}
        for f in schema.STRUCTURE_FIELDS:
            if f.name != "offsets":
                out[f.name] = a[f.name][rows] if f.dims[0] == "A" else a[f.name][keep]
        return StructureBatch(self.start, out, self.ids[keep])

    def record(self, k: int) -> Record:
        a = self.arrays
        lo, hi = int(a["offsets"][k]), int(a["offsets"][k + 1])
        vel = a["velocities"][lo:hi]
        forces = a["forces"][lo:hi]
        cell = a["cell"][k]
        stress = a["stress"][k]
        s = StructureArrays(
            positions=a["positions"][lo:hi],
            numbers=a["numbers"][lo:hi],
            cell=None if not cell.any() else cell,
            pbc=a["pbc"][k],
            velocities=None if np.isnan(vel).all() else vel,
            id=str(a["structure_id"][k]),
        )
        labels = LabelArrays(
            energy=float(a["energy"][k]),
            forces=None if np.isnan(forces).all() else forces,
            stress=None if np.isnan(stress).all() else stress,
        )
        prov = Provenance(
            campaign=str(a["campaign"][k]),
            chain=str(a["chain"][k]),
            step=int(a["step"][k]),
            source=str(a["source"][k]),
            model_version=int(a["model_version"][k]),
            accepted=bool(a["accepted"][k]),
            reference_settings_hash=str(a["reference_settings_hash"][k]),
            wall_time=float(a["wall_time"][k]),
        )
        return Record(s, labels, prov)

    def __iter__(self) -> Iterator[Record]:
        return (self.record(k) for k in range(len(self)))


# ---------------------------------------------------------------- the zarr store


class _DurableLocalStore(LocalStore):
    """LocalStore whose writes are fsynced before the atomic rename: acknowledged = on disk."""

    def set_sync(self, key, value) -> None:
        self._ensure_open_sync()
        self._check_writable()
        _durable_put(self.root / key, value.as_buffer_like())

    async def _set(self, key, value, exclusive: bool = False) -> None:
        import asyncio

        if not self._is_open:
            await self._open()
        self._check_writable()
        path = self.root / key
        if exclusive and path.exists():
            raise FileExistsError(path)
        await asyncio.to_thread(_durable_put, path, value.as_buffer_like())


def _durable_put(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _open_zarr_store(url: str, read_only: bool):
    if "://" in url and not url.startswith("file://"):
        try:
            return FsspecStore.from_url(url, read_only=read_only)
        except (ImportError, ValueError) as exc:
            raise InvalidArgument(
                "store.url",
                f"cannot open {url!r}: {exc}",
                "install the fsspec backend (e.g. s3fs, gcsfs)",
            ) from exc
    path = Path(url.removeprefix("file://")).expanduser().resolve()
    if read_only and not (path / "zarr.json").exists():
        raise NotFound(
            "store.url",
            f"no nnmd store at {path}",
            "create one with a writer or `nnmd store import`",
        )
    return _DurableLocalStore(path, read_only=read_only)


class Store:
    """Read access to a store; :meth:`writer` makes the single writer."""

    def __init__(self, url: str | os.PathLike | None = None, *, read_only: bool = False) -> None:
        self.url = str(url if url is not None else DEFAULT_STORE_URL)
        self.zstore = _open_zarr_store(self.url, read_only)
        self.read_only = read_only
        if read_only:
            try:
                root = zarr.open_group(store=self.zstore, mode="r")
            except FileNotFoundError:
                raise NotFound(
                    "store.url", f"no nnmd store at {self.url}", "check the URL"
                ) from None
        else:
            root = zarr.open_group(store=self.zstore, mode="a")
            if schema.ROOT_ATTR not in root.attrs:
                root.attrs[schema.ROOT_ATTR] = {"schema": schema.SCHEMA_VERSION}
        meta = root.attrs.get(schema.ROOT_ATTR)
        if meta is None:
            raise NotFound("store.url", f"{self.url} is a Zarr group but not an nnmd store")
        if meta.get("schema") != schema.SCHEMA_VERSION:
            raise FailedPrecondition("store.url", f"schema {meta.get('schema')} not supported")

    @property
    def local_path(self) -> Path | None:
        return Path(self.zstore.root) if isinstance(self.zstore, LocalStore) else None

    def writer(self) -> StoreWriter:
        return StoreWriter(self)

    # ------------------------------------------------------------ structures
    def _group(self, path: str):
        try:
            return zarr.open_group(store=self.zstore, path=path, mode="r")
        except FileNotFoundError:
            return None

    def committed(self) -> tuple[int, int]:
        """(records, atom rows) committed; read fresh on every call."""
        g = self._group(schema.STRUCTURES_GROUP)
        if g is None:
            return 0, 0
        c = g.attrs.get(schema.COMMITTED_ATTR, {"S": 0, "A": 0})
        return int(c["S"]), int(c["A"])

    def __len__(self) -> int:
        return self.committed()[0]

    def read(
        self, start: int = 0, stop: int | None = None, campaign: str | None = None
    ) -> StructureBatch:
        """Records [start, stop) of the committed snapshot (stop None = all committed).

        With ``campaign``, only that campaign's records (``batch.ids`` holds their record ids).
        """
        batch = self._read_range(start, stop)
        if campaign is None or len(batch) == 0:
            return batch
        keep = np.flatnonzero(batch.arrays["campaign"] == campaign)
        return batch.take(keep)

    def read_dataset(self, ref) -> StructureBatch:
        """The records a ``nnmd.v1.DatasetRef`` names (end_record 0 = all committed)."""
        return self.read(ref.first_record, ref.end_record or None, ref.campaign or None)

    def _read_range(self, start: int, stop: int | None) -> StructureBatch:
        n, _ = self.committed()
        stop = n if stop is None else min(int(stop), n)
        start = max(0, min(int(start), stop))
        g = self._group(schema.STRUCTURES_GROUP)
        if g is None or stop == start:
            return StructureBatch(start, _empty_arrays())
        per_record = integrity.identity_records()
        offsets = self._rows(g["offsets"], start, stop + 1, per_record)
        lo, hi = int(offsets[0]), int(offsets[-1])
        per_atom = integrity.rows_to_records(offsets, start)
        arrays = {"offsets": offsets - lo}
        for f in schema.STRUCTURE_FIELDS:
            if f.name == "offsets":
                continue
            if f.dims[0] == "A":
                arrays[f.name] = self._rows(g[f.name], lo, hi, per_atom, "atom rows")
            else:
                arrays[f.name] = self._rows(g[f.name], start, stop, per_record)
        return StructureBatch(start, arrays)

    def _rows(self, arr, lo: int, hi: int, records=None, unit: str = "rows") -> np.ndarray:
        """Rows [lo, hi) of ``arr``; DataCorruption if a chunk holding them is damaged."""
        return integrity.read_rows(self.zstore, self.url, arr, lo, hi, arr.path, records, unit)

    def check(self) -> integrity.CheckReport:
        """Reads every committed chunk of every array; see :func:`integrity.check_store`."""
        return integrity.check_store(self)

    # ------------------------------------------------------------ models
    def model_versions(self) -> list[int]:
        g = self._group(schema.MODELS_GROUP)
        latest = 0 if g is None else int(g.attrs.get("latest", 0))
        return list(range(1, latest + 1))

    def load_model(self, version: int = 0) -> tuple[bytes, dict]:
        """(bytes of the model file, metadata); version 0 = latest."""
        versions = self.model_versions()
        if not versions:
            raise NotFound(
                "model.version", "the store has no models yet", "train or import a model first"
            )
        version = versions[-1] if version == 0 else int(version)
        if version not in versions:
            raise NotFound(
                "model.version", f"no model version {version}", f"versions are 1..{versions[-1]}"
            )
        g = self._group(schema.model_group(version))
        meta = dict(g.attrs)
        data = self._rows(g["file"], 0, int(meta["size"]), unit="bytes").tobytes()
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise DataCorruption(
                "model.version",
                f"model {version} fails its sha256 checksum",
                integrity.recovery_hint(self.url) + ", or publish the model again",
            )
        return data, meta["metadata"]

    # ------------------------------------------------------------ checkpoints
    def _get_raw(self, key: str) -> bytes | None:
        buf = sync(self.zstore.get(key, prototype=default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def read_checkpoint(self, campaign: str, chain: str) -> dict | None:
        key = _checkpoint_key(campaign, chain)
        raw = self._get_raw(key)
        return None if raw is None else json.loads(raw)

    def list_checkpoints(self, campaign: str) -> list[str]:
        prefix = f"{schema.CHECKPOINTS_PREFIX}/{safe_name(campaign, 'campaign')}/"

        async def _ls():
            return [k async for k in self.zstore.list_prefix(prefix)]

        keys = sync(_ls())
        return sorted(
            k[len(prefix) : -5] for k in keys if k.endswith(".json") and "/" not in k[len(prefix) :]
        )

    # ------------------------------------------------------------ trajectories
    def trajectories(self) -> list[str]:
        g = self._group(schema.TRAJECTORIES_GROUP)
        return [] if g is None else sorted(name for name, _ in g.groups())

    def read_trajectory(
        self, name: str, start: int = 0, stop: int | None = None
    ) -> dict[str, np.ndarray]:
        g = self._group(f"{schema.TRAJECTORIES_GROUP}/{safe_name(name, 'trajectory.name')}")
        if g is None:
            raise NotFound(
                "trajectory.name", f"no trajectory {name!r}", f"known: {self.trajectories()}"
            )
        n = int(g.attrs.get(schema.COMMITTED_ATTR, {"F": 0})["F"])
        stop = n if stop is None else min(int(stop), n)
        start = max(0, min(int(start), stop))
        numbers = g["numbers"]
        out = {"numbers": self._rows(numbers, 0, numbers.shape[0], unit="atoms")}
        for f in schema.TRAJECTORY_FIELDS:
            if f.name != "numbers":
                out[f.name] = self._rows(g[f.name], start, stop, unit="frames")
        return out

    # ------------------------------------------------------------ summary
    def info(self) -> dict:
        n, a = self.committed()
        out = {"url": self.url, "schema": schema.SCHEMA_VERSION, "structures": n, "atoms": a}
        if n:
            g = self._group(schema.STRUCTURES_GROUP)
            per_record = integrity.identity_records()
            campaigns = self._rows(g["campaign"], 0, n, per_record)
            out["campaigns"] = dict(sorted(Counter(campaigns.tolist()).items()))
            out["labelled_energy"] = int(np.isfinite(self._rows(g["energy"], 0, n, per_record)).sum())
        out["models"] = self.model_versions()
        out["trajectories"] = {t: len(self.read_trajectory(t)["step"]) for t in self.trajectories()}
        return out


def _checkpoint_key(campaign: str, chain: str) -> str:
    return f"{schema.CHECKPOINTS_PREFIX}/{safe_name(campaign, 'campaign')}/{safe_name(chain, 'chain')}.json"


def _empty_arrays() -> dict[str, np.ndarray]:
    counts = {"S": 0, "A": 0}
    return {
        f.name: np.empty(schema.shape_of(f, counts), dtype=_np_dtype(f))
        for f in schema.STRUCTURE_FIELDS
    }


def _np_dtype(f: schema.Field):
    return np.dtypes.StringDType() if f.dtype == "str" else np.dtype(f.dtype)


def _zarr_dtype(f: schema.Field):
    return str if f.dtype == "str" else f.dtype


# ---------------------------------------------------------------- the writer


class StoreWriter:
    """The single writer of a store. Thread-safe.

    Producers (threads, or Ray tasks through :class:`services.store.actor.StoreWriterActor`)
    call :meth:`append`; a background thread drains all pending submissions
    into one write and one commit (group commit), then acknowledges each.
    :meth:`append` returns the record ids only once the records are durable.
    For a local store an exclusive lock file keeps a second writer out.
    """

    def __init__(self, store: Store) -> None:
        if store.read_only:
            raise FailedPrecondition(
                "store", "opened read-only", "open the Store without read_only"
            )
        self.store = store
        self._lock_file = None
        if store.local_path is not None:
            import fcntl

            self._lock_file = open(store.local_path / ".writer.lock", "a+")  # noqa: SIM115
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock_file.close()
                raise FailedPrecondition(
                    "store",
                    f"another writer holds {store.local_path}",
                    "send records to that writer",
                ) from None
        self._write_lock = threading.Lock()  # models, checkpoints, trajectories
        self._queue: queue.Queue = queue.Queue()
        self._open_structures()
        self._closed = False
        from concurrent.futures import ThreadPoolExecutor

        self._write_pool = ThreadPoolExecutor(len(schema.STRUCTURE_FIELDS),
                                              thread_name_prefix="nnmd-store-chunks")
        self._thread = threading.Thread(target=self._drain, name="nnmd-store-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ structures
    def _open_structures(self) -> None:
        root = zarr.open_group(store=self.store.zstore, mode="a")
        g = root.require_group(schema.STRUCTURES_GROUP)
        self._arrays = {}
        for f in schema.STRUCTURE_FIELDS:
            if f.name in g:
                self._arrays[f.name] = integrity.writable(g[f.name])
                continue
            counts = {"S": _INITIAL_STRUCTURES, "A": _INITIAL_ATOMS}
            shape = schema.shape_of(f, counts)
            chunk0 = schema.ATOM_CHUNK if f.dims[0] == "A" else schema.STRUCTURE_CHUNK
            self._arrays[f.name] = g.create_array(
                f.name,
                shape=shape,
                chunks=(chunk0, *shape[1:]),
                dtype=_zarr_dtype(f),
                fill_value=f.fill,
                compressors=integrity.COMPRESSORS,
                config=integrity.ARRAY_CONFIG,
                attributes={"unit": f.unit, "doc": f.doc, "dims": list(map(str, f.dims))},
            )
        self._group = g
        if schema.COMMITTED_ATTR not in g.attrs:
            g.attrs[schema.COMMITTED_ATTR] = {"S": 0, "A": 0}
        c = g.attrs[schema.COMMITTED_ATTR]
        self._n, self._a = int(c["S"]), int(c["A"])

    def submit(self, records: Sequence[Record]) -> Future:
        """Queues records; the future resolves to their record ids once durable."""
        if self._closed:
            raise FailedPrecondition("store", "writer is closed")
        records = list(records)
        for k, r in enumerate(records):
            _check_record(r, f"records[{k}]")
        fut: Future = Future()
        self._queue.put((records, fut))
        return fut

    def append(self, records: Sequence[Record] | Record, timeout: float | None = None) -> list[int]:
        """Appends and waits until durable; returns the record ids in order."""
        if isinstance(records, Record):
            records = [records]
        return self.submit(records).result(timeout)

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while True:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            records = [r for recs, _ in batch for r in recs]
            try:
                first = self._write(records)
            except BaseException as exc:  # every waiting producer sees the failure
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            for recs, fut in batch:
                fut.set_result(list(range(first, first + len(recs))))
                first += len(recs)

    def _write(self, records: list[Record]) -> int:
        if not records:
            return self._n
        n0, a0 = self._n, self._a
        sizes = np.array([r.structure.n_atoms for r in records], dtype=np.int64)
        n1, a1 = n0 + len(records), a0 + int(sizes.sum())
        cols = _columns(records, a0)
        writes = []
        for f in schema.STRUCTURE_FIELDS:
            arr = self._arrays[f.name]
            if f.name == "offsets":  # offsets[0] is written with the first record
                need, lo, hi, done = n1 + 1, n0 + 1, n1 + 1, n0 + 1 if n0 else 0
            elif f.dims[0] == "A":
                need, lo, hi, done = a1, a0, a1, a0
            else:
                need, lo, hi, done = n1, n0, n1, n0
            if arr.shape[0] < need:
                arr.resize((max(need, 2 * arr.shape[0]), *arr.shape[1:]))
            writes.append((arr, lo, hi, cols[f.name], done))
        # The arrays' chunk writes (each one fsync'ed) go out side by side: an append
        # costs about one durable write, not one per array. Nothing is visible before the
        # commit below, so their order does not matter.
        list(self._write_pool.map(lambda w: integrity.write_rows(
            self.store.zstore, self.store.url, w[0], w[1], w[2], w[3], w[4], w[0].path),
            writes))
        faults.point("store_write")
        # Commit last: readers see the new rows only now.
        self._group.attrs[schema.COMMITTED_ATTR] = {"S": n1, "A": a1}
        self._n, self._a = n1, a1
        return n0

    # ------------------------------------------------------------ models
    def publish_model(self, data: bytes, metadata: dict | None = None) -> int:
        """Stores a model file as the next version; returns the version (>= 1)."""
        with self._write_lock:
            root = zarr.open_group(store=self.store.zstore, mode="a")
            models = root.require_group(schema.MODELS_GROUP)
            version = int(models.attrs.get("latest", 0)) + 1
            g = root.create_group(schema.model_group(version), overwrite=True)
            raw = np.frombuffer(bytes(data), dtype=np.uint8)
            arr = g.create_array(
                "file",
                shape=(max(1, raw.size),),
                chunks=(schema.MODEL_BYTES_CHUNK,),
                dtype="uint8",
                fill_value=0,
                compressors=integrity.COMPRESSORS,
                config=integrity.ARRAY_CONFIG,
            )
            if raw.size:
                arr[: raw.size] = raw
            g.attrs.update(
                {
                    "size": int(raw.size),
                    "sha256": hashlib.sha256(raw.tobytes()).hexdigest(),
                    "created": time.time(),
                    "metadata": json.loads(json.dumps(metadata or {})),
                    "complete": True,
                }
            )
            models.attrs["latest"] = version
            return version

    # ------------------------------------------------------------ checkpoints
    def write_checkpoint(self, campaign: str, chain: str, document: dict) -> None:
        """Replaces the chain's checkpoint atomically (one key, latest wins)."""
        key = _checkpoint_key(campaign, chain)
        raw = json.dumps(document, sort_keys=True).encode()
        with self._write_lock:
            sync(self.store.zstore.set(key, default_buffer_prototype().buffer.from_bytes(raw)))

    # ------------------------------------------------------------ trajectories
    def append_frames(
        self,
        name: str,
        numbers: np.ndarray,
        positions: np.ndarray,
        *,
        cell: np.ndarray | None = None,
        step: np.ndarray | None = None,
        time_fs: np.ndarray | None = None,
        energy: np.ndarray | None = None,
        temperature: np.ndarray | None = None,
        velocities: np.ndarray | None = None,
    ) -> int:
        """Appends frames (F, N, 3) to trajectory ``name`` (created on first use); returns frames committed."""
        safe_name(name, "trajectory.name")
        numbers = np.asarray(numbers, np.int32)
        positions = np.asarray(positions, np.float64)
        if positions.ndim == 2:
            positions = positions[None]
        nf, na = positions.shape[0], numbers.shape[0]
        if positions.shape[1:] != (na, 3):
            raise InvalidArgument("positions", f"shape {positions.shape}, expected (F, {na}, 3)")
        given = {
            "positions": positions,
            "velocities": velocities,
            "cell": cell,
            "step": step,
            "time": time_fs,
            "energy": energy,
            "temperature": temperature,
        }
        with self._write_lock:
            root = zarr.open_group(store=self.store.zstore, mode="a")
            path = f"{schema.TRAJECTORIES_GROUP}/{name}"
            if path in root:
                g = root[path]
            else:
                g = root.create_group(path)
                for f in schema.TRAJECTORY_FIELDS:
                    shape = schema.shape_of(f, {"F": schema.FRAME_CHUNK, "N": na})
                    chunks = shape if f.dims[0] == "N" else (schema.FRAME_CHUNK, *shape[1:])
                    g.create_array(
                        f.name,
                        shape=shape,
                        chunks=chunks,
                        dtype=f.dtype,
                        fill_value=f.fill,
                        compressors=integrity.COMPRESSORS,
                        config=integrity.ARRAY_CONFIG,
                        attributes={"unit": f.unit, "doc": f.doc},
                    )
                integrity.writable(g["numbers"])[:] = numbers
                g.attrs[schema.COMMITTED_ATTR] = {"F": 0}
            old = g["numbers"]
            if not np.array_equal(self.store._rows(old, 0, old.shape[0], unit="atoms"), numbers):
                raise InvalidArgument(
                    "numbers", f"trajectory {name!r} has other atoms", "use a new trajectory name"
                )
            f0 = int(g.attrs[schema.COMMITTED_ATTR]["F"])
            f1 = f0 + nf
            for f in schema.TRAJECTORY_FIELDS:
                if f.name == "numbers":
                    continue
                arr = integrity.writable(g[f.name])
                if arr.shape[0] < f1:
                    arr.resize((max(f1, 2 * arr.shape[0]), *arr.shape[1:]))
                value = given[f.name]
                if value is None:
                    value = np.full((nf, *arr.shape[1:]), f.fill, dtype=f.dtype)
                value = np.asarray(value, dtype=f.dtype).reshape((nf, *arr.shape[1:]))
                integrity.write_rows(
                    self.store.zstore, self.store.url, arr, f0, f1, value, f0, arr.path
                )
            g.attrs[schema.COMMITTED_ATTR] = {"F": f1}
            return f1

    # ------------------------------------------------------------ lifetime
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        self._write_pool.shutdown(wait=True)
        if self._lock_file is not None:
            self._lock_file.close()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_record(r: Record, field: str) -> None:
    s = r.structure
    n = s.n_atoms
    if np.asarray(s.positions).shape != (n, 3):
        raise InvalidArgument(
            f"{field}.structure.positions", f"shape {np.shape(s.positions)}, expected ({n}, 3)"
        )
    if r.labels.forces is not None and np.asarray(r.labels.forces).shape != (n, 3):
        raise InvalidArgument(
            f"{field}.labels.forces", f"shape {np.shape(r.labels.forces)}, expected ({n}, 3)"
        )
    if r.provenance.campaign:
        safe_name(r.provenance.campaign, f"{field}.provenance.campaign")


def _columns(records: list[Record], a0: int) -> dict[str, np.ndarray]:
    """The new rows of every array, in schema order."""
    n = len(records)
    sizes = np.array([r.structure.n_atoms for r in records], dtype=np.int64)

    def atoms(get, width=3):
        parts = [get(r) for r in records]
        return np.concatenate(
            [
                np.full((k, width), np.nan)
                if p is None
                else np.asarray(p, np.float64).reshape(k, width)
                for p, k in zip(parts, sizes)
            ]
        )

    def per(get, dtype):
        return np.array([get(r) for r in records], dtype=dtype)

    def mat(get):
        out = np.full((n, 3, 3), np.nan)
        for k, r in enumerate(records):
            v = get(r)
            if v is not None:
                out[k] = stress_3x3(v)
        return out

    cell = np.zeros((n, 3, 3))
    for k, r in enumerate(records):
        if r.structure.cell is not None:
            cell[k] = np.asarray(r.structure.cell, np.float64).reshape(3, 3)
    s_str = np.dtypes.StringDType()
    return {
        "offsets": a0 + np.cumsum(sizes),
        "positions": atoms(lambda r: r.structure.positions),
        "numbers": np.concatenate([np.asarray(r.structure.numbers, np.int32) for r in records]),
        "velocities": atoms(lambda r: r.structure.velocities),
        "forces": atoms(lambda r: r.labels.forces),
        "cell": cell,
        "pbc": per(
            lambda r: (
                np.zeros(3, bool) if r.structure.pbc is None else np.asarray(r.structure.pbc, bool)
            ),
            bool,
        ),
        "energy": per(lambda r: r.labels.energy, np.float64),
        "stress": mat(lambda r: r.labels.stress),
        "campaign": per(lambda r: r.provenance.campaign, s_str),
        "chain": per(lambda r: r.provenance.chain, s_str),
        "step": per(lambda r: r.provenance.step, np.int64),
        "source": per(lambda r: r.provenance.source, s_str),
        "model_version": per(lambda r: r.provenance.model_version, np.int64),
        "accepted": per(lambda r: r.provenance.accepted, bool),
        "reference_settings_hash": per(lambda r: r.provenance.reference_settings_hash, s_str),
        "wall_time": per(lambda r: r.provenance.wall_time, np.float64),
        "structure_id": per(lambda r: r.structure.id, s_str),
    }
