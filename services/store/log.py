"""The store's record log and writer leases: many writers, no lost or duplicated rows.

Layout (schema 2, next to the Zarr arrays of :mod:`services.store.schema`):

- ``log/<seq:012d>.seg``: one segment per group commit, created with an
  exclusive create (a local file: written to a temporary name, fsynced, then
  ``os.link``-ed to its final name, which fails if the name exists; an fsspec
  store: ``fs.open(path, "xb")``). Writers race for the next sequence number;
  exactly one wins each number, the others move on to the next, so two
  writers never write the same object and every commit is whole or absent.
  Record ids follow the segments' order: the first record of segment ``k``
  is ``S + (records of segments L..k-1)``, where ``S`` and ``L`` come from
  the Zarr arrays' ``committed`` attribute ``{"S", "A", "log": L}``.
- Folding: a writer that holds the fold lock (``locks/fold``, an exclusive
  create with an expiry) copies segments ``L..M-1`` into the Zarr arrays past
  ``S`` and then rewrites ``committed`` to ``{"S": S + n, "A": A + a, "log": M}``
  in one metadata write: readers see every record under the same id before
  and after. Folded segments are deleted by the next fold.
- ``leases/<campaign>.json``: a campaign's writer lease, ``{"owner", "host",
  "pid", "expires", ...}``, created exclusively, renewed every ttl/3, taken over
  once expired (or at once when its owner process on this host is gone).

Backends: local folders (and ``file://``) use O_EXCL / ``os.link`` / atomic
rename; ``memory://`` and fsspec backends whose ``open(mode="xb")`` is an
atomic exclusive create (s3fs with conditional writes, memory within a
process) are safe for several writers. A backend without exclusive create
must have one writer: route writes through the Store writer actor
(``services.store.actor``) or one process.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import struct
import threading
import time
import uuid
import zlib
from pathlib import Path

import numpy as np

from services.runtime.errors import DataCorruption, FailedPrecondition

log = logging.getLogger("nnmd.store")
LOG_PREFIX = "log"
LEASE_PREFIX = "leases"
LOCK_PREFIX = "locks"
_SEG = re.compile(r"^(\d{12})\.seg$")
_MAGIC = b"NNMDSEG1"
_HEAD = struct.Struct("<IQQQ")  # crc32 of payload, payload bytes, records, atom rows
LEASE_TTL_S = float(os.environ.get("NNMD_LEASE_TTL_S", "30"))
_PROCESS = uuid.uuid4().hex  # this process incarnation (a restarted container may reuse a pid)
_PROCESS_LOCK = threading.Lock()  # exclusive creates on in-process fsspec stores (memory://)


def seg_key(seq: int) -> str:
    return f"{LOG_PREFIX}/{seq:012d}.seg"


# ---------------------------------------------------------------- raw key backend



def synced_temp(path: Path, data) -> Path:
    """``data`` in a new temp file beside ``path``, flushed to disk; the caller renames
    (os.replace) or links (os.link: an exclusive create) it into place, then removes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp

class Backend:
    """Exclusive create, read, list and delete of raw keys of one store."""

    def __init__(self, url: str, local_path: Path | None) -> None:
        self.url = url
        self.local = local_path
        self.fs = None
        self.root = ""
        if local_path is None:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(url)
            self.root = self.root.rstrip("/")
            self._memory = "memory" in (self.fs.protocol if isinstance(self.fs.protocol, tuple)
                                         else (self.fs.protocol,))
            self._no_exclusive = False

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def create(self, key: str, data: bytes) -> bool:
        """Creates ``key`` with ``data`` if it does not exist; False if it does. Atomic."""
        if self.local is not None:
            path = self.local / key
            tmp = synced_temp(path, data)
            try:
                try:
                    os.link(tmp, path)  # fails if the name exists: the exclusive create
                except FileExistsError:
                    return False
                _fsync_dir(path.parent)
                return True
            finally:
                tmp.unlink(missing_ok=True)
        path = self._path(key)
        if self._memory:  # exists-then-create is one step only under a lock in this process
            with _PROCESS_LOCK:
                if self.fs.exists(path):
                    return False
                self.fs.pipe_file(path, data)
                return True
        if not self._no_exclusive:
            try:
                with self.fs.open(path, "xb") as f:
                    f.write(data)
                return True
            except FileExistsError:
                return False
            except (ValueError, NotImplementedError, TypeError) as exc:  # no "x" mode here
                self._no_exclusive = True
                log.warning("store %s: the backend has no exclusive create (%s): several "
                            "writer processes are NOT safe on it; send writes through one "
                            "process or the Store writer actor (docs/store.md)", self.url, exc)
        with _PROCESS_LOCK:  # safe between the writers of this process only
            if self.fs.exists(path):
                return False
            self.fs.pipe_file(path, data)
            return True
            return True

    def put(self, key: str, data: bytes) -> None:
        """Replaces ``key`` atomically (last writer wins)."""
        if self.local is not None:
            from services.store.store import _durable_put

            _durable_put(self.local / key, data)
        else:
            self.fs.pipe_file(self._path(key), data)

    def get(self, key: str) -> bytes | None:
        try:
            if self.local is not None:
                return (self.local / key).read_bytes()
            return self.fs.cat_file(self._path(key))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def delete(self, key: str) -> None:
        try:
            if self.local is not None:
                (self.local / key).unlink()
            else:
                self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            pass

    def take_over(self, key: str, seen: bytes) -> bool:
        """Removes ``key`` if it still holds ``seen``; True if this call removed it (only one
        of several racing callers does, on local folders)."""
        if self.local is not None:
            path = self.local / key
            tomb = path.with_name(f".{path.name}.{uuid.uuid4().hex}.stale")
            try:
                os.rename(path, tomb)  # atomic: one racer moves it, the others find nothing
            except FileNotFoundError:
                return False
            ok = tomb.read_bytes() == seen
            if not ok:  # renewed meanwhile: put it back (a fresh lease is never taken)
                try:
                    os.link(tomb, path)
                except FileExistsError:
                    pass
            tomb.unlink(missing_ok=True)
            return ok
        with _PROCESS_LOCK:
            if self.get(key) != seen:
                return False
            self.delete(key)
            return True

    def list(self, prefix: str) -> list[str]:
        """Names directly under folder ``prefix``."""
        try:
            if self.local is not None:
                return os.listdir(self.local / prefix)
            return [p.rsplit("/", 1)[-1] for p in self.fs.ls(self._path(prefix), detail=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------- segments


def encode_segment(columns: dict[str, np.ndarray], n: int, a: int, writer: str) -> bytes:
    buf = io.BytesIO()
    arrays = {}
    for name, col in columns.items():
        if col.dtype.kind == "T":  # StringDType: npz stores fixed-width unicode without pickle
            col = np.array(col.tolist(), dtype=np.str_) if len(col) else np.zeros(0, "U1")
        arrays[name] = col
    arrays["_writer"] = np.array(writer)
    np.savez(buf, **arrays)
    payload = buf.getvalue()
    return _MAGIC + _HEAD.pack(zlib.crc32(payload), len(payload), n, a) + payload


def segment_counts(data: bytes, key: str = "") -> tuple[int, int]:
    """(records, atom rows) of a segment; DataCorruption if torn or damaged."""
    crc, size, n, a = _check(data, key)
    return n, a


def _check(data: bytes, key: str):
    hint = "a crashed writer cannot leave this (segments appear whole); restore it from a backup"
    if len(data) < len(_MAGIC) + _HEAD.size or not data.startswith(_MAGIC):
        raise DataCorruption(key, f"log segment {key} is not a segment (torn or overwritten)", hint)
    crc, size, n, a = _HEAD.unpack_from(data, len(_MAGIC))
    payload = memoryview(data)[len(_MAGIC) + _HEAD.size:]
    if len(payload) != size:
        raise DataCorruption(key, f"log segment {key} is torn ({len(payload)} of {size} bytes)",
                             hint)
    if zlib.crc32(payload) != crc:
        raise DataCorruption(key, f"log segment {key} fails its crc32 (changed bytes)", hint)
    return crc, size, n, a


def decode_segment(data: bytes, key: str = "") -> dict[str, np.ndarray]:
    _check(data, key)
    out = {}
    with np.load(io.BytesIO(data[len(_MAGIC) + _HEAD.size:]), allow_pickle=False) as z:
        for name in z.files:
            if name.startswith("_"):
                continue
            col = z[name]
            out[name] = col.astype(np.dtypes.StringDType()) if col.dtype.kind == "U" else col
    return out


def list_segments(backend: Backend) -> list[int]:
    out = []
    for name in backend.list(LOG_PREFIX):
        m = _SEG.match(name)
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


# ---------------------------------------------------------------- leases


class Lease:
    """An expiring, renewed, exclusive claim on ``key`` (a campaign's writer lease).

    Acquire: exclusive create; an existing lease is taken over only when it has
    expired, or when its owner was a process on this host that is gone.
    ``lost`` turns True when a renewal finds another owner (this writer must stop).
    """

    def __init__(self, backend: Backend, key: str, what: str, ttl: float | None = None) -> None:
        self.backend, self.key, self.what = backend, key, what
        self.ttl = float(ttl if ttl is not None else LEASE_TTL_S)
        self.owner = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._doc: bytes = b""
        self._renewed = time.monotonic()

    def _document(self) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "process": _PROCESS,
                           "what": self.what, "renewed": now, "expires": now + self.ttl,
                           "ttl": self.ttl}, sort_keys=True).encode()

    def acquire(self) -> Lease:
        for _ in range(5):
            doc = self._document()
            if self.backend.create(self.key, doc):
                self._doc = doc
                self._renewed = time.monotonic()
                self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                                name=f"nnmd-lease-{self.what}")
                self._thread.start()
                return self
            seen = self.backend.get(self.key)
            if seen is None:
                continue  # released meanwhile
            holder = parse_lease(seen)
            if holder is not None and not lease_stale(holder):
                raise FailedPrecondition(
                    "campaign",
                    f"{self.what} is being written by another writer (lease {self.key}: owner "
                    f"{holder.get('owner', '?')[:8]} on {holder.get('host')} pid "
                    f"{holder.get('pid')}, expires in {holder['expires'] - time.time():.0f} s)",
                    "stop it there first, or wait for its lease to expire")
            self.backend.take_over(self.key, seen)
        raise FailedPrecondition("campaign", f"could not take the lease {self.key}",
                                 "another writer keeps taking it; try again")

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                cur = self.backend.get(self.key)
                if cur != self._doc:
                    self.lost = True
                    return
                doc = self._document()
                self.backend.put(self.key, doc)
                self._doc = doc
                self._renewed = time.monotonic()
            except Exception:  # noqa: BLE001 - a failed renewal is retried; expiry decides
                continue

    def check(self) -> None:
        """FailedPrecondition once the lease is another writer's (a writer that hung past
        its renewals finds out here, before it writes)."""
        if not self.lost and time.monotonic() - self._renewed > self.ttl * 2 / 3:
            self.lost = self.backend.get(self.key) != self._doc
        if self.lost:
            raise FailedPrecondition("campaign", f"the writer lost its lease {self.key} "
                                     "(another writer took it over)", "stop this writer")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.lost and self.backend.get(self.key) == self._doc:
            self.backend.delete(self.key)


def parse_lease(data: bytes) -> dict | None:
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("owner"), str) or \
            not isinstance(doc.get("expires"), (int, float)):
        return None
    return doc


def lease_stale(doc: dict, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    if doc["expires"] < now:
        return True
    pid = doc.get("pid")
    if doc.get("host") == socket.gethostname() and isinstance(pid, int):
        if pid == os.getpid():  # this process, or an earlier one that had the same pid
            return doc.get("process", _PROCESS) != _PROCESS
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True  # its process is gone
        except PermissionError:
            return False
    return False


class FoldLock(Lease):
    """The store-wide lock of the one writer that folds the log into the arrays."""

    def try_acquire(self) -> bool:
        try:
            self.acquire()
            return True
        except FailedPrecondition:
            return False
