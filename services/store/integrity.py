"""Chunk integrity: crc32c per chunk on write, typed errors on damaged reads, a full check.

Every array the store creates stores each chunk as zstd-compressed bytes
followed by a crc32c of those bytes (``Crc32cCodec`` after the compressor), and
is written with ``write_empty_chunks`` on, so every chunk that holds committed
rows exists as a key. On read:

- a chunk whose stored bytes fail the crc (a flipped byte, a truncated file)
  or that cannot be decoded at all raises :class:`DataCorruption`;
- a chunk key that is absent although committed rows live in it (a deleted
  file) raises :class:`DataCorruption` too, instead of reading as fill values.

Arrays written before checksums existed (no crc32c codec) still read; for
them an undecodable chunk is reported, but a flipped byte that still
decompresses or a missing chunk cannot be told from data (their writer did
not store all-fill chunks). :func:`check_store` names those arrays.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

import numpy as np
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import sync
from zarr.storage import LocalStore

from services.runtime.errors import DataCorruption, ServiceError

# The stored-bytes pipeline of every new array: the default compressor, then a
# checksum over the compressed bytes (so it covers exactly what is on disk).
COMPRESSORS = (ZstdCodec(level=0, checksum=False), Crc32cCodec())
# Chunks that are all fill value are written too: a missing key is then damage.
ARRAY_CONFIG = {"write_empty_chunks": True}


def recovery_hint(url: str) -> str:
    return (
        "restore the named chunk file(s) from a backup of the store, or re-create the records; "
        f"`nnmd store check {url}` lists every damaged chunk"
    )


def has_checksum(arr) -> bool:
    return any(isinstance(c, Crc32cCodec) for c in getattr(arr.metadata, "codecs", ()))


def writable(arr):
    """The array with the store's write config (``write_empty_chunks``)."""
    return arr.with_config(ARRAY_CONFIG)


@dataclass(frozen=True)
class Damage:
    """One damaged chunk: its array, key, the rows (axis 0) it holds and what is wrong."""

    array: str
    key: str
    rows: tuple[int, int]
    problem: str
    records: tuple[int, int] | None = None  # record range affected, where known
    unit: str = "rows"  # what the rows are: atom rows, frames, bytes

    def describe(self) -> str:
        if self.rows[1] <= self.rows[0]:
            return f"{self.key}: {self.problem}"
        what = f"{self.unit} {self.rows[0]}..{self.rows[1] - 1}"
        if self.records is not None:
            r0, r1 = self.records
            what = f"records {r0}..{r1 - 1}" + ("" if self.records == self.rows else f", {what}")
        return f"{self.key} ({what}): {self.problem}"

    def as_dict(self) -> dict:
        return {
            "array": self.array,
            "key": self.key,
            self.unit.replace(" ", "_"): list(self.rows),
            "records": None if self.records is None else list(self.records),
            "problem": self.problem,
        }


def _chunks(arr, lo: int, hi: int):
    """(key, row_lo, row_hi, selection) of every chunk holding rows [lo, hi) of ``arr``."""
    if hi <= lo:
        return
    c0 = arr.chunks[0]
    tails = [range(n) for n in arr.cdata_shape[1:]]
    prefix = f"{arr.path}/" if arr.path else ""
    for k in range(lo // c0, -(-hi // c0)):
        r0, r1 = max(lo, k * c0), min(hi, (k + 1) * c0)
        for tail in itertools.product(*tails):
            sel = (slice(r0, r1),) + tuple(
                slice(t * c, min((t + 1) * c, n))
                for t, c, n in zip(tail, arr.chunks[1:], arr.shape[1:])
            )
            yield prefix + arr.metadata.encode_chunk_key((k, *tail)), r0, r1, sel


def _missing(zstore, keys: list[str]) -> set[str]:
    if not keys:
        return set()
    if isinstance(zstore, LocalStore):
        root = os.fspath(zstore.root)
        return {k for k in keys if not os.path.isfile(os.path.join(root, k))}
    import asyncio

    async def _exists():
        return await asyncio.gather(*(zstore.exists(k) for k in keys))

    return {k for k, ok in zip(keys, sync(_exists())) if not ok}


def _problem(exc: Exception) -> str:
    text = str(exc)
    if "checksum" in text.lower():
        return "fails its crc32c checksum (changed or truncated bytes)"
    return f"cannot be decoded ({type(exc).__name__}: {text[:200]})"


MISSING = "is missing (deleted chunk file inside the committed range)"


def scan(zstore, arr, lo: int, hi: int, name: str, records=None, unit: str = "rows") -> list[Damage]:
    """Reads every chunk holding rows [lo, hi) one by one; the damaged ones.

    ``records(row_lo, row_hi)`` maps a chunk's rows to the records affected.
    """
    chunks = list(_chunks(arr, lo, hi))
    missing = _missing(zstore, [c[0] for c in chunks]) if has_checksum(arr) else set()
    out = []
    for key, r0, r1, sel in chunks:
        if key in missing:
            problem = MISSING
        else:
            try:
                arr[sel]
                continue
            except (ServiceError, OSError, MemoryError):
                raise
            except Exception as exc:  # zarr/numcodecs raise ValueError, RuntimeError, ...
                problem = _problem(exc)
        rec = None if records is None else records(r0, r1)
        out.append(Damage(name, key, (r0, r1), problem, rec, unit))
    return out


def corruption(url: str, name: str, damage: list[Damage]) -> DataCorruption:
    shown = "; ".join(d.describe() for d in damage[:3])
    more = f"; and {len(damage) - 3} more" if len(damage) > 3 else ""
    return DataCorruption(
        name,
        f"{len(damage)} damaged chunk(s) in store {url}: {shown}{more}",
        recovery_hint(url),
    )


def _require_chunks(zstore, url: str, arr, lo: int, hi: int, name: str, records, unit) -> None:
    """DataCorruption if a chunk holding rows [lo, hi) of a checksummed array is absent."""
    if hi <= lo or not has_checksum(arr):
        return
    chunks = list(_chunks(arr, lo, hi))
    missing = _missing(zstore, [c[0] for c in chunks])
    if missing:
        damage = [
            Damage(name, key, (r0, r1), MISSING, None if records is None else records(r0, r1), unit)
            for key, r0, r1, _ in chunks
            if key in missing
        ]
        raise corruption(url, name, damage)


def read_rows(
    zstore, url: str, arr, lo: int, hi: int, name: str, records=None, unit: str = "rows"
) -> np.ndarray:
    """``arr[lo:hi]``, or :class:`DataCorruption` naming the damaged chunks; never fill values
    in place of a deleted chunk of a checksummed array."""
    _require_chunks(zstore, url, arr, lo, hi, name, records, unit)
    try:
        return arr[lo:hi]
    except (ServiceError, OSError, MemoryError):
        raise
    except Exception as exc:  # a crc mismatch is a ValueError, a bad zstd frame a RuntimeError
        damage = scan(zstore, arr, lo, hi, name, records, unit)
        if not damage:
            raise
        raise corruption(url, name, damage) from exc


def write_rows(zstore, url: str, arr, lo: int, hi: int, value, committed: int, name: str) -> None:
    """``arr[lo:hi] = value`` for an append past ``committed`` rows.

    The chunk that holds both committed rows and new ones is read, merged and
    rewritten by Zarr: if it is damaged or deleted, refuse (DataCorruption)
    instead of rewriting it with fill values and a fresh, valid checksum.
    """
    c0 = arr.chunks[0]
    first = lo - lo % c0  # first row of the chunk the new rows start in
    shared = (first, min(committed, lo)) if committed > first and lo % c0 else None
    if shared is not None:
        _require_chunks(zstore, url, arr, *shared, name, None, "rows")
    try:
        arr[lo:hi] = value
    except (ServiceError, OSError, MemoryError):
        raise
    except Exception as exc:
        damage = [] if shared is None else scan(zstore, arr, *shared, name)
        if not damage:
            raise
        raise corruption(url, name, damage) from exc


def rows_to_records(offsets: np.ndarray | None, base: int = 0):
    """Maps atom rows [a, b) to the records [r0, r1) owning them (``offsets`` absolute,
    of records base, base + 1, ...); None when the offsets are unknown."""
    if offsets is None:
        return None

    def f(a: int, b: int) -> tuple[int, int]:
        r0 = int(np.searchsorted(offsets, a, side="right")) - 1
        r1 = int(np.searchsorted(offsets, b, side="left"))
        return base + max(r0, 0), base + max(r1, r0 + 1)

    return f


def identity_records(base: int = 0):
    return lambda a, b: (base + a, base + b)


# ---------------------------------------------------------------- the full check


@dataclass
class CheckReport:
    """What :func:`check_store` found: damaged chunks, arrays without checksums."""

    url: str
    damage: list[Damage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # duplicates, log gaps, bad leases
    notes: list[str] = field(default_factory=list)  # stale leases (taken over on next start)
    records: int = 0
    segments: int = 0
    unchecksummed: list[str] = field(default_factory=list)  # arrays written before checksums
    arrays: int = 0
    chunks: int = 0

    @property
    def ok(self) -> bool:
        return not self.damage and not self.problems

    def as_dict(self) -> dict:
        return {
            "url": self.url,
            "ok": self.ok,
            "arrays": self.arrays,
            "chunks": self.chunks,
            "damaged": [d.as_dict() for d in self.damage],
            "problems": self.problems,
            "notes": self.notes,
            "records": self.records,
            "log_segments": self.segments,
            "without_checksums": self.unchecksummed,
        }


def check_store(store) -> CheckReport:
    """Reads every committed chunk of every array of ``store`` (a :class:`Store`).

    Structures (up to ``committed``), every model version (chunks, then the
    file's sha256), every trajectory (up to its committed frames) and every
    checkpoint document (must parse as JSON).
    """
    from services.store import schema

    report = CheckReport(store.url)

    def one(group, name: str, rows: int | None, records=None, unit: str = "rows"):
        """Scans rows [0, rows) of ``group[name]`` (rows None = all of it)."""
        path = f"{group.path}/{name}"
        try:
            arr = group[name]
        except Exception as exc:  # noqa: BLE001 - a deleted or garbled zarr.json
            report.damage.append(
                Damage(path, f"{path}/zarr.json", (0, 0), f"array metadata unreadable ({exc})")
            )
            return None
        rows = arr.shape[0] if rows is None else rows
        report.arrays += 1
        if not has_checksum(arr):
            report.unchecksummed.append(path)
        report.chunks += sum(1 for _ in _chunks(arr, 0, rows))
        report.damage.extend(scan(store.zstore, arr, 0, rows, path, records, unit))
        return arr

    g = store._group(schema.STRUCTURES_GROUP)
    if g is not None:
        n, a, _ = store._folded()
        per_record = identity_records()
        offsets = None
        arr = one(g, "offsets", n + 1 if n else 0, per_record, "records")
        if arr is not None and n and not any(d.array == arr.path for d in report.damage):
            offsets = arr[: n + 1]
        per_atom = rows_to_records(offsets)
        for f in schema.STRUCTURE_FIELDS:
            if f.name == "offsets":
                continue
            if f.dims[0] == "A":
                one(g, f.name, a, per_atom, "atom rows")
            else:
                one(g, f.name, n, per_record, "records")

    for version in store.model_versions():
        mg = store._group(schema.model_group(version))
        if mg is None:
            path = schema.model_group(version)
            report.damage.append(Damage(path, f"{path}/zarr.json", (0, 0), "model group missing"))
            continue
        size = int(mg.attrs.get("size", 0))
        before = len(report.damage)
        arr = one(mg, "file", size, None, "bytes")
        if arr is not None and len(report.damage) == before:
            import hashlib

            if hashlib.sha256(arr[:size].tobytes()).hexdigest() != mg.attrs.get("sha256"):
                report.damage.append(
                    Damage(arr.path, arr.path, (0, size), "fails its sha256 checksum", unit="bytes")
                )

    for name in store.trajectories():
        tg = store._group(f"{schema.TRAJECTORIES_GROUP}/{name}")
        if tg is None or schema.COMMITTED_ATTR not in tg.attrs:
            continue  # created by a writer that crashed before its first commit
        frames = int(tg.attrs[schema.COMMITTED_ATTR]["F"])
        for f in schema.TRAJECTORY_FIELDS:
            if f.name == "numbers":
                one(tg, f.name, None, None, "atoms")
            else:
                one(tg, f.name, frames, None, "frames")

    report.damage.extend(_check_checkpoints(store))
    _check_log(store, report)
    _check_leases(store, report)
    _check_rows(store, report)
    return report


def _check_log(store, report: CheckReport) -> None:
    """Every log segment whole, no gap in their numbers after the fold point."""
    from services.store import log as seglog

    _, _, L = store._folded()
    seqs = seglog.list_segments(store.backend)
    live = [s for s in seqs if s >= L]
    report.segments = len(live)
    for k, seq in enumerate(live):
        if seq != L + k:
            missing = L + k
            report.problems.append(f"{seglog.seg_key(missing)}: missing; segments {missing} "
                                   f"and after (from {seglog.seg_key(seq)}) are unreachable")
            break
    for seq in live:
        key = seglog.seg_key(seq)
        data = store.backend.get(key)
        if data is None:
            continue
        try:
            seglog.decode_segment(data, key)
        except ServiceError as exc:
            report.problems.append(f"{key}: {exc.reason if hasattr(exc, 'reason') else exc}")
        except Exception as exc:  # noqa: BLE001 - an npz that does not load
            report.problems.append(f"{key}: cannot be decoded ({type(exc).__name__}: {exc})")


def _check_leases(store, report: CheckReport) -> None:
    import time

    for campaign, doc in store.leases().items():
        key = f"leases/{campaign}.json"
        if doc is None:
            report.problems.append(f"{key}: not a lease (unreadable JSON or no owner/expires)")
        elif doc["stale"]:
            ago = time.time() - doc["expires"]
            report.notes.append(f"{key}: stale (owner {doc['owner'][:8]} on {doc.get('host')} "
                                f"pid {doc.get('pid')}, expired {max(ago, 0):.0f} s ago or its "
                                "process is gone); the next writer of the campaign takes it over")


def _check_rows(store, report: CheckReport) -> None:
    """Every row once: no (campaign, chain, step, source) key twice (over the arrays and
    every readable log segment)."""
    from collections import Counter

    from services.store import log as seglog

    S, _, L = store._folded()
    cols = {"campaign": [], "chain": [], "step": [], "source": []}
    ids = []
    try:
        if S:
            part = store._read_arrays(0, S)
            _check_offsets(part, "structures", report)
            for k in cols:
                cols[k].append(part[k])
            ids.append(np.arange(S))
    except ServiceError as exc:
        report.problems.append(f"records 0..{S - 1}: cannot be read ({exc})")
    first = S
    for seq in seglog.list_segments(store.backend):
        if seq < L:
            continue
        key = seglog.seg_key(seq)
        try:
            seg = seglog.decode_segment(store.backend.get(key) or b"", key)
        except Exception:  # noqa: BLE001 - reported by _check_log
            continue
        n = len(seg["energy"])
        if int(np.sum(seg["sizes"])) != len(seg["numbers"]):
            report.problems.append(f"{key}: atom rows do not add up (torn rows)")
        for k in cols:
            cols[k].append(seg[k])
        ids.append(np.arange(first, first + n))
        first += n
    if not ids:
        return
    report.records = first
    a = {k: np.concatenate([c.astype(np.dtypes.StringDType()) if c.dtype.kind in "TU" else c
                            for c in v])
         for k, v in cols.items()}
    rid = np.concatenate(ids)
    keep = (a["step"] >= 0) & (a["campaign"] != "")
    keys = list(zip(a["campaign"][keep].tolist(), a["chain"][keep].tolist(),
                    a["step"][keep].tolist(), a["source"][keep].tolist()))
    counts = Counter(keys)
    dups: dict = {}
    for r, key in zip(rid[keep].tolist(), keys):
        if counts[key] > 1:
            dups.setdefault(key, []).append(r)
    for (camp, chain, step, source), rows in sorted(dups.items()):
        report.problems.append(f"duplicate row: campaign {camp} chain {chain} step {step} "
                               f"source {source} is records {', '.join(map(str, rows))}")


def _check_offsets(part: dict, where: str, report: CheckReport) -> None:
    off = part["offsets"]
    if len(off) and (off[0] != 0 or np.any(np.diff(off) < 0) or off[-1] != len(part["numbers"])):
        report.problems.append(f"{where}: atom offsets are not increasing (torn rows)")


def _check_checkpoints(store) -> list[Damage]:
    import json

    from services.store import schema

    async def _ls():
        return [k async for k in store.zstore.list_prefix(f"{schema.CHECKPOINTS_PREFIX}/")]

    out = []
    for key in sorted(sync(_ls())) + _document_keys(store):
        if not key.endswith(".json") or "/." in key:
            continue
        try:
            json.loads(store._get_raw(key) or b"")
        except ValueError as exc:
            out.append(Damage(key, key, (0, 0), f"checkpoint is not valid JSON ({exc})", unit="bytes"))
    return out


def _document_keys(store) -> list[str]:
    """documents/<kind>/<name>.json: parsed as JSON like the checkpoints."""
    from services.store import schema

    out = []
    for kind in store.backend.list(schema.DOCUMENTS_PREFIX):
        for name in store.backend.list(f"{schema.DOCUMENTS_PREFIX}/{kind}"):
            if name.endswith(".json") and not name.startswith("."):
                out.append(f"{schema.DOCUMENTS_PREFIX}/{kind}/{name}")
    return out
