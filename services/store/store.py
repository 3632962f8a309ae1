"""The Zarr v3 store: labelled structures, models, chain checkpoints, trajectories.

``Store(url)`` reads; ``Store(url).writer(campaign=NAME)`` gives a :class:`StoreWriter`.
Many writers (threads, processes, coordinators) may append to one store at once: each
group commit is one log segment created exclusively (:mod:`services.store.log`); a
campaign's writer also holds that campaign's lease, so one campaign has one writer.
The layout and units are in :mod:`services.store.schema`.

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
from services.store import log as seglog

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


def _require_group(zstore, root, path: str):
    """root.require_group(path), safe when another writer (another campaign of the same
    process, or another process) creates the group at the same moment."""
    from zarr.errors import ContainsGroupError

    try:
        return root.require_group(path)
    except ContainsGroupError:  # created between zarr's check and its write: open it
        return zarr.open_group(store=zstore, path=path, mode="a")


def _durable_put(path: Path, data) -> None:
    tmp = seglog.synced_temp(path, data)
    try:
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
        if meta.get("schema") not in schema.READABLE_SCHEMAS:
            raise FailedPrecondition("store.url", f"schema {meta.get('schema')} not supported")
        self.schema_version = int(meta["schema"])
        self.backend = seglog.Backend(self.url, self.local_path)
        # segments are immutable once created: counts and contents are cached (per Store:
        # a store deleted and made again under the same URL starts its numbers again)
        self._seg_counts: dict[int, tuple[int, int]] = {}
        self._seg_cache: dict[int, dict] = {}

    @property
    def local_path(self) -> Path | None:
        return Path(self.zstore.root) if isinstance(self.zstore, LocalStore) else None

    def writer(self, campaign: str | None = None, *, lease_ttl: float | None = None) -> StoreWriter:
        """A writer; with ``campaign``, holding that campaign's lease (FailedPrecondition while
        another live writer holds it)."""
        return StoreWriter(self, campaign=campaign, lease_ttl=lease_ttl)

    # ------------------------------------------------------------ structures
    def _group(self, path: str):
        try:
            return zarr.open_group(store=self.zstore, path=path, mode="r")
        except FileNotFoundError:
            return None

    def _folded(self) -> tuple[int, int, int]:
        """(records, atom rows, next log segment) held by the Zarr arrays; read fresh."""
        g = self._group(schema.STRUCTURES_GROUP)
        if g is None:
            return 0, 0, 0
        c = g.attrs.get(schema.COMMITTED_ATTR, {"S": 0, "A": 0})
        return int(c["S"]), int(c["A"]), int(c.get("log", 0))

    def _state(self):
        """(S, A, L, [(seq, records, atom rows), ...]): the arrays' part and the log's
        segments L, L+1, ... (contiguous) after it."""
        S, A, L = self._folded()
        segs = []
        k = L
        for seq in seglog.list_segments(self.backend):
            if seq < L:
                continue
            if seq != k:
                break  # a gap cannot be filled later by a writer: report it in `check`
            n, a = self._segment_counts(seq)
            segs.append((seq, n, a))
            k += 1
        return S, A, L, segs

    def _segment_counts(self, seq: int) -> tuple[int, int]:
        got = self._seg_counts.get(seq)
        if got is None:
            data = self.backend.get(seglog.seg_key(seq))
            if data is None:
                raise _Refolded(seq)
            got = self._seg_counts[seq] = seglog.segment_counts(data, seglog.seg_key(seq))
        return got

    def _segment(self, seq: int) -> dict[str, np.ndarray]:
        got = self._seg_cache.get(seq)
        if got is None:
            data = self.backend.get(seglog.seg_key(seq))
            if data is None:
                raise _Refolded(seq)
            got = seglog.decode_segment(data, seglog.seg_key(seq))
            if len(self._seg_cache) >= 1024:
                self._seg_cache.pop(next(iter(self._seg_cache)))
            self._seg_cache[seq] = got
        return got

    def committed(self) -> tuple[int, int]:
        """(records, atom rows) committed; read fresh on every call."""
        for _ in range(10):
            try:
                S, A, _, segs = self._state()
                return S + sum(n for _, n, _ in segs), A + sum(a for _, _, a in segs)
            except _Refolded:
                continue
        raise FailedPrecondition("store", "the log kept moving under this reader", "retry")

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

    def read_columns(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Per-record columns (``campaign``, ``energy``, ...) of every committed record,
        without reading the atom arrays."""
        names = tuple(names)
        for name in names:
            if name not in _RECORD_FIELDS:
                raise InvalidArgument("columns", f"{name!r} is not a per-record array",
                                      f"use some of {sorted(_RECORD_FIELDS)}")
        return self._read_range(0, None, names).arrays

    def _read_range(self, start: int, stop: int | None, fields=None) -> StructureBatch:
        for _ in range(10):
            try:
                return self._read_range_once(start, stop, fields)
            except _Refolded:  # a fold removed a segment this read was about to open
                continue
        raise FailedPrecondition("store", "the log kept moving under this reader", "retry")

    def _read_range_once(self, start: int, stop: int | None, fields=None) -> StructureBatch:
        S, A, L, segs = self._state()
        n = S + sum(k for _, k, _ in segs)
        stop = n if stop is None else min(int(stop), n)
        start = max(0, min(int(start), stop))
        if stop == start:
            empty = _empty_arrays()
            return StructureBatch(start, empty if fields is None else
                                  {k: empty[k] for k in fields})
        parts = []
        if start < S:
            parts.append(self._read_arrays(start, min(stop, S), fields))
        first = S
        for seq, k, _ in segs:
            lo, hi = max(start, first), min(stop, first + k)
            if lo < hi:
                parts.append(_slice_segment(self._segment(seq), lo - first, hi - first,
                                            fields))
            first += k
            if first >= stop:
                break
        if fields is not None:  # columns only: a plain dict (no offsets, no records)
            return StructureBatch(start, {k: np.concatenate([p[k] for p in parts])
                                          for k in fields}, np.arange(start, stop))
        return StructureBatch(start, _concat(parts))

    def _read_arrays(self, start: int, stop: int, fields=None) -> dict[str, np.ndarray]:
        g = self._group(schema.STRUCTURES_GROUP)
        per_record = integrity.identity_records()
        if fields is not None:
            return {k: self._rows(g[k], start, stop, per_record) for k in fields}
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
        return arrays

    def _rows(self, arr, lo: int, hi: int, records=None, unit: str = "rows") -> np.ndarray:
        """Rows [lo, hi) of ``arr``; DataCorruption if a chunk holding them is damaged."""
        return integrity.read_rows(self.zstore, self.url, arr, lo, hi, arr.path, records, unit)

    def check(self) -> integrity.CheckReport:
        """Reads every committed chunk of every array; see :func:`integrity.check_store`."""
        return integrity.check_store(self)

    # ------------------------------------------------------------ models
    def model_versions(self) -> list[int]:
        """Complete model versions, ascending (several writers may publish at once, so a
        version is listed once its group says complete, not by a shared counter)."""
        g = self._group(schema.MODELS_GROUP)
        if g is None:
            return []
        out = []
        for name, mg in g.groups():
            if re.fullmatch(r"v\d{6}", name) and mg.attrs.get("complete"):
                out.append(int(name[1:]))
        return sorted(out)

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
            a = self.read_columns(("campaign", "energy"))
            out["campaigns"] = dict(sorted(Counter(a["campaign"].tolist()).items()))
            out["labelled_energy"] = int(np.isfinite(a["energy"]).sum())
        out["leases"] = self.leases()
        out["models"] = self.model_versions()
        out["trajectories"] = {t: len(self.read_trajectory(t)["step"]) for t in self.trajectories()}
        return out


    # ------------------------------------------------------------ leases
    def leases(self) -> dict[str, dict]:
        """Campaign -> its writer lease (owner, host, pid, expires, stale); None if unreadable."""
        out = {}
        for name in sorted(self.backend.list(seglog.LEASE_PREFIX)):
            if not name.endswith(".json") or name.startswith("."):
                continue
            doc = seglog.parse_lease(self.backend.get(f"{seglog.LEASE_PREFIX}/{name}") or b"")
            if doc is not None:
                doc = {**doc, "stale": seglog.lease_stale(doc)}
            out[name[:-5]] = doc
        return out

    # ------------------------------------------------------------ documents
    def read_document(self, kind: str, name: str) -> dict | None:
        """A small JSON document ``documents/<kind>/<name>.json`` (e.g. a coordinator's
        record of a campaign); None if absent."""
        raw = self._get_raw(_document_key(kind, name))
        return None if raw is None else json.loads(raw)

    def put_document(self, kind: str, name: str, document: dict) -> None:
        """Replaces ``documents/<kind>/<name>.json`` atomically (no writer needed: documents
        are single keys, last writer wins)."""
        if self.read_only:
            raise FailedPrecondition("store", "opened read-only", "open the Store without read_only")
        key = _document_key(kind, name)
        raw = json.dumps(document, sort_keys=True).encode()
        sync(self.zstore.set(key, default_buffer_prototype().buffer.from_bytes(raw)))

    def list_documents(self, kind: str) -> list[str]:
        names = self.backend.list(f"{schema.DOCUMENTS_PREFIX}/{safe_name(kind, 'kind')}")
        return sorted(n[:-5] for n in names if n.endswith(".json") and not n.startswith("."))


class _Refolded(Exception):
    """A log segment vanished under a reader (folded into the arrays meanwhile): re-read."""




_RECORD_FIELDS = {f.name for f in schema.STRUCTURE_FIELDS if f.dims[0] == "S"}


def _slice_segment(cols: dict[str, np.ndarray], lo: int, hi: int,
                   fields=None) -> dict[str, np.ndarray]:
    if fields is not None:
        return {k: cols[k][lo:hi] for k in fields}
    sizes = cols["sizes"]
    ends = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    a0, a1 = int(ends[lo]), int(ends[hi])
    out = {"offsets": ends[lo:hi + 1] - a0}
    for f in schema.STRUCTURE_FIELDS:
        if f.name != "offsets":
            out[f.name] = cols[f.name][a0:a1] if f.dims[0] == "A" else cols[f.name][lo:hi]
    return out


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    out = {}
    base = 0
    offs = [np.zeros(1, np.int64)]
    for p in parts:
        offs.append(p["offsets"][1:] + base)
        base += int(p["offsets"][-1])
    out["offsets"] = np.concatenate(offs).astype(np.int64)
    for f in schema.STRUCTURE_FIELDS:
        if f.name != "offsets":
            cols = [p[f.name] for p in parts]
            if f.dtype == "str":
                cols = [c.astype(np.dtypes.StringDType()) for c in cols]
            out[f.name] = np.concatenate(cols)
    return out


def _document_key(kind: str, name: str) -> str:
    return f"{schema.DOCUMENTS_PREFIX}/{safe_name(kind, 'kind')}/{safe_name(name, 'name')}.json"


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
    """One writer of a store (there may be many, in many processes). Thread-safe.

    Producers (threads, or Ray tasks through :class:`services.store.actor.StoreWriterActor`)
    call :meth:`append`; a background thread drains all pending submissions
    into one log segment (group commit: one exclusive create), then acknowledges each.
    :meth:`append` returns the record ids only once the records are durable.
    With ``campaign`` the writer holds that campaign's lease (one writer per
    campaign); every ``FOLD_EVERY`` segments (and on close) a writer that gets the
    fold lock folds the log into the Zarr arrays.
    """

    FOLD_EVERY = 256

    def __init__(self, store: Store, campaign: str | None = None,
                 lease_ttl: float | None = None) -> None:
        if store.read_only:
            raise FailedPrecondition(
                "store", "opened read-only", "open the Store without read_only"
            )
        self.store = store
        self.id = uuid.uuid4().hex[:12]
        self.campaign = campaign
        self._lease = None
        if campaign is not None:
            safe_name(campaign, "campaign")
            self._lease = seglog.Lease(store.backend, f"{seglog.LEASE_PREFIX}/{campaign}.json",
                                       f"campaign {campaign!r}", lease_ttl).acquire()
        try:
            self._upgrade()
            self._write_lock = threading.Lock()  # models, checkpoints, trajectories
            self._queue: queue.Queue = queue.Queue()
            self._open_structures()
            S, _, L, segs = store._state()
            self._base = (L, S)  # (segment, its first record id): where id sums start
            self._next_seq = max(seglog.list_segments(store.backend), default=L - 1) + 1
            self._next_seq = max(self._next_seq, L)
            self._last_fold_check = L
        except BaseException:
            if self._lease is not None:
                self._lease.release()
            raise
        self._closed = False
        self._folder: threading.Thread | None = None  # a fold under way
        from concurrent.futures import ThreadPoolExecutor

        self._write_pool = ThreadPoolExecutor(len(schema.STRUCTURE_FIELDS),
                                              thread_name_prefix="nnmd-store-chunks")
        self._thread = threading.Thread(target=self._drain, name="nnmd-store-writer", daemon=True)
        self._thread.start()

    def _upgrade(self) -> None:
        """Marks a schema 1 store as schema 2 (its arrays stay the part before the log), so
        a writer of schema 1, which would append to the arrays, refuses it from now on."""
        if self.store.schema_version == schema.SCHEMA_VERSION:
            return
        root = zarr.open_group(store=self.store.zstore, mode="a")
        meta = dict(root.attrs.get(schema.ROOT_ATTR) or {})
        meta["schema"] = schema.SCHEMA_VERSION
        meta["upgraded_from"] = self.store.schema_version
        root.attrs[schema.ROOT_ATTR] = meta
        self.store.schema_version = schema.SCHEMA_VERSION

    # ------------------------------------------------------------ structures
    def _open_structures(self):
        """Opens (creates) the arrays, fresh: another writer may have grown them."""
        root = zarr.open_group(store=self.store.zstore, mode="a")
        g = _require_group(self.store.zstore, root, schema.STRUCTURES_GROUP)
        arrays = {}
        for f in schema.STRUCTURE_FIELDS:
            if f.name in g:
                arrays[f.name] = integrity.writable(g[f.name])
                continue
            counts = {"S": _INITIAL_STRUCTURES, "A": _INITIAL_ATOMS}
            shape = schema.shape_of(f, counts)
            chunk0 = schema.ATOM_CHUNK if f.dims[0] == "A" else schema.STRUCTURE_CHUNK
            try:
                arrays[f.name] = g.create_array(
                    f.name,
                    shape=shape,
                    chunks=(chunk0, *shape[1:]),
                    dtype=_zarr_dtype(f),
                    fill_value=f.fill,
                    compressors=integrity.COMPRESSORS,
                    config=integrity.ARRAY_CONFIG,
                    attributes={"unit": f.unit, "doc": f.doc, "dims": list(map(str, f.dims))},
                )
            except Exception:  # noqa: BLE001 - another writer created it just now
                arrays[f.name] = integrity.writable(
                    zarr.open_array(store=self.store.zstore,
                                    path=f"{schema.STRUCTURES_GROUP}/{f.name}", mode="r+"))
        if schema.COMMITTED_ATTR not in g.attrs:
            g.attrs[schema.COMMITTED_ATTR] = {"S": 0, "A": 0, "log": 0}
        c = g.attrs[schema.COMMITTED_ATTR]
        return g, arrays, int(c["S"]), int(c["A"]), int(c.get("log", 0))

    def submit(self, records: Sequence[Record],
               checkpoint: tuple[str, str, dict] | None = None) -> Future:
        """Queues records; the future resolves to their record ids once durable.

        checkpoint: ``(campaign, chain, document)``, a chain checkpoint to replace in the
        same group commit, after the records (of this and every submission of the batch)
        are durable: a crash leaves the records without the checkpoint, never the
        checkpoint without its records. The many checkpoints of one group commit are
        written together by the commit thread (their fsyncs side by side), with no
        thread or lock round trip of the caller's each. The document is serialised in
        that thread: the caller must not change it until the future is done.
        """
        if self._closed:
            raise FailedPrecondition("store", "writer is closed")
        records = list(records)
        for k, r in enumerate(records):
            _check_record(r, f"records[{k}]")
        if checkpoint is not None:
            campaign, chain, document = checkpoint
            checkpoint = (_checkpoint_key(campaign, chain), document)
        fut: Future = Future()
        # running from now on: a caller that gives up (an asyncio task cancelled while it
        # awaits asyncio.wrap_future(fut)) cannot cancel it under the commit thread
        fut.set_running_or_notify_cancel()
        self._queue.put((records, fut, checkpoint))
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
            records = [r for recs, _, _ in batch for r in recs]
            try:
                first = self._write(records) if records else 0
                # the records are durable: now the checkpoints that count them
                self._write_checkpoints([(ck, bool(recs)) for recs, _, ck in batch
                                         if ck is not None])
            except BaseException as exc:  # every waiting producer sees the failure
                for _, fut, _ in batch:
                    fut.set_exception(exc)
                continue
            for recs, fut, _ in batch:
                fut.set_result(list(range(first, first + len(recs))))
                first += len(recs)
            if self._next_seq - self._last_fold_check >= self.FOLD_EVERY and \
                    (self._folder is None or not self._folder.is_alive()):
                # in a thread of its own: commits go on while the log is folded (other
                # writers' commits always could; a fold reads only whole segments)
                self._last_fold_check = self._next_seq
                self._folder = threading.Thread(target=self._try_fold, daemon=True,
                                                name="nnmd-store-fold")
                self._folder.start()

    def _write_checkpoints(self, items: list[tuple[tuple[str, dict], bool]]) -> None:
        """The checkpoints of one group commit, each replaced atomically (and fsynced on a
        local store); items: ((key, document), whether records came with it)."""
        if not items:
            return
        latest = {key: doc for (key, doc), _ in items}  # one key twice: the later one wins
        raw = [(key, json.dumps(doc, sort_keys=True).encode()) for key, doc in latest.items()]
        for (_, with_records) in items:
            if with_records:  # a label durable, its chain not yet checkpointed
                faults.point("after_append")
        local = self.store.local_path
        with self._write_lock:
            if local is not None:
                # side by side: the file system joins concurrent fsyncs into one journal
                # commit (one by one, a commit of hundreds of chains waits for each)
                list(self._write_pool.map(lambda kv: _durable_put(local / kv[0], kv[1]),
                                          raw))
            else:
                for key, data in raw:
                    sync(self.store.zstore.set(key, default_buffer_prototype().buffer.from_bytes(
                        data)))

    def _write(self, records: list[Record]) -> int:
        """One segment with ``records``; the id of the first."""
        if not records:
            return self.store.committed()[0]
        if self._lease is not None:
            self._lease.check()
        cols = _columns(records, 0)
        sizes = np.diff(np.concatenate([[0], cols.pop("offsets")])).astype(np.int64)
        cols["sizes"] = sizes
        data = seglog.encode_segment(cols, len(records), int(sizes.sum()), self.id)
        faults.point("store_write")  # encoded, not yet created: a kill here loses nothing acked
        seq = self._next_seq
        while not self.store.backend.create(seglog.seg_key(seq), data):
            seq += 1  # another writer won this number: the next one
        self.store._seg_counts[seq] = (len(records), int(sizes.sum()))
        self._next_seq = seq + 1
        return self._first_id(seq)

    def _first_id(self, seq: int) -> int:
        """The record id of the first record of segment ``seq`` (committed)."""
        for _ in range(10):
            base_seq, base_id = self._base
            if base_seq <= seq:
                try:
                    first = base_id + sum(self.store._segment_counts(k)[0]
                                          for k in range(base_seq, seq))
                    self._base = (seq, first)
                    return first
                except _Refolded:
                    pass
            S, _, L = self.store._folded()  # folded meanwhile: sum from the fold point
            if L > seq:
                break
            self._base = (L, S)
        raise FailedPrecondition("store", f"log segment {seq} was folded before its record ids "
                                 "were known", "read the records back by campaign/chain/step")

    # ------------------------------------------------------------ folding
    def _try_fold(self) -> int:
        """Folds the log into the arrays if no other writer is folding; records folded.
        A damaged array chunk stops the fold (the records stay readable in the log)."""
        try:
            return self.fold()
        except DataCorruption:
            return 0

    def fold(self) -> int:
        """Folds every committed segment into the Zarr arrays now, unless another writer is
        folding (then 0). DataCorruption if a chunk the fold must extend is damaged (the
        fold is refused, rather than re-checksum fill values; the log keeps the records)."""
        lock = seglog.FoldLock(self.store.backend, f"{seglog.LOCK_PREFIX}/fold.json", "fold",
                               ttl=max(60.0, seglog.LEASE_TTL_S))
        if not lock.try_acquire():
            return 0
        try:
            return self._fold()
        finally:
            lock.release()

    def _fold(self) -> int:
        g, arrays, n0, a0, L = self._open_structures()
        segs = []
        k = L
        for seq in seglog.list_segments(self.store.backend):
            if seq < L:
                continue
            if seq != k:
                break
            segs.append(seq)
            k += 1
        if not segs:
            return 0
        parts = [self.store._segment(seq) for seq in segs]
        cols = {}
        for f in schema.STRUCTURE_FIELDS:
            if f.name != "offsets":
                cols[f.name] = np.concatenate([p[f.name] for p in parts])
        sizes = np.concatenate([p["sizes"] for p in parts]).astype(np.int64)
        cols["offsets"] = a0 + np.cumsum(sizes)
        n1, a1 = n0 + len(sizes), a0 + int(sizes.sum())
        writes = []
        for f in schema.STRUCTURE_FIELDS:
            arr = arrays[f.name]
            if f.name == "offsets":  # offsets[0] is written with the first record
                need, lo, hi, done = n1 + 1, n0 + 1, n1 + 1, n0 + 1 if n0 else 0
            elif f.dims[0] == "A":
                need, lo, hi, done = a1, a0, a1, a0
            else:
                need, lo, hi, done = n1, n0, n1, n0
            if arr.shape[0] < need:
                arr.resize((max(need, 2 * arr.shape[0]), *arr.shape[1:]))
            value = cols[f.name]
            if f.dtype == "str":
                value = value.astype(np.dtypes.StringDType())
            writes.append((arr, lo, hi, value, done))
        # every chunk write is fsync'ed; they go out side by side. Nothing is visible
        # before the commit below, so their order does not matter.
        list(self._write_pool.map(lambda w: integrity.write_rows(
            self.store.zstore, self.store.url, w[0], w[1], w[2], w[3], w[4], w[0].path),
            writes))
        faults.point("store_fold")
        # Commit last: the same records, the same ids, now from the arrays.
        g.attrs[schema.COMMITTED_ATTR] = {"S": n1, "A": a1, "log": segs[-1] + 1}
        # segments folded by an earlier fold (below L) are no longer read by anyone current
        for seq in seglog.list_segments(self.store.backend):
            if seq < L:
                self.store.backend.delete(seglog.seg_key(seq))
        return n1 - n0

    # ------------------------------------------------------------ models
    def publish_model(self, data: bytes, metadata: dict | None = None) -> int:
        """Stores a model file as the next version; returns the version (>= 1)."""
        with self._write_lock:
            root = zarr.open_group(store=self.store.zstore, mode="a")
            models = _require_group(self.store.zstore, root, schema.MODELS_GROUP)
            version = max([int(models.attrs.get("latest", 0)), *self.store.model_versions()]) + 1
            # the version number is claimed by an exclusive create: two writers publishing
            # at once get two versions
            while not self.store.backend.create(
                    f"{seglog.LOCK_PREFIX}/{schema.model_group(version)}", self.id.encode()):
                version += 1
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
            models = zarr.open_group(store=self.store.zstore, path=schema.MODELS_GROUP, mode="a")
            models.attrs["latest"] = max(version, int(models.attrs.get("latest", 0)))
            return version

    # ------------------------------------------------------------ checkpoints
    def write_checkpoint(self, campaign: str, chain: str, document: dict) -> None:
        """Replaces the chain's checkpoint atomically (one key, latest wins)."""
        key = _checkpoint_key(campaign, chain)
        raw = json.dumps(document, sort_keys=True).encode()
        with self._write_lock:
            sync(self.store.zstore.set(key, default_buffer_prototype().buffer.from_bytes(raw)))

    def write_document(self, kind: str, name: str, document: dict) -> None:
        """Replaces ``documents/<kind>/<name>.json`` atomically (see Store.read_document)."""
        key = _document_key(kind, name)
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
        if self._folder is not None:
            self._folder.join()
        try:
            self._try_fold()
        except Exception:  # noqa: BLE001 - the records are safe in the log; a later writer folds
            pass
        self._write_pool.shutdown(wait=True)
        if self._lease is not None:
            self._lease.release()

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
