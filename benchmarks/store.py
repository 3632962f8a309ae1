"""Store append and read throughput (local folder, fsync on), printed as a table.

.venv/bin/python benchmarks/store.py
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from services.runtime.convert import LabelArrays, StructureArrays
from services.store.store import Provenance, Record, Store


def record(n_atoms: int, step: int, rng) -> Record:
    return Record(
        StructureArrays(
            rng.normal(size=(n_atoms, 3)),
            np.full(n_atoms, 14, np.int32),
            np.eye(3) * 20,
            np.ones(3, bool),
        ),
        LabelArrays(float(rng.normal()), rng.normal(size=(n_atoms, 3)), rng.normal(size=(3, 3))),
        Provenance("bench", "chain0", step, "hmc", 1, True, "h", 1.0),
    )


def commit_cpu_ms(url: str, n_atoms: int = 96, batch: int = 1, commits: int = 100) -> float:
    """CPU (all threads of this process) per group commit of ``batch`` records, in ms."""
    rng = np.random.default_rng(1)
    recs = [record(n_atoms, k, rng) for k in range(batch * (commits + 1))]
    with Store(url).writer() as w:
        w.append(recs[:batch])  # arrays created, threads started
        c0 = time.process_time()
        for k in range(1, commits + 1):
            w.append(recs[k * batch:(k + 1) * batch])
        cpu = time.process_time() - c0
    return 1e3 * cpu / commits


def main() -> None:
    rng = np.random.default_rng(0)
    print(
        f"{'atoms':>6} {'batch':>6} {'records':>8} {'append ms/record':>17} {'read records/s':>15}"
    )
    for n_atoms, batch, n_records in [
        (8, 1, 100),
        (96, 1, 100),
        (96, 32, 640),
        (1000, 1, 50),
        (1000, 16, 320),
    ]:
        with tempfile.TemporaryDirectory() as d:
            store = Store(d + "/s")
            recs = [record(n_atoms, k, rng) for k in range(n_records)]
            with store.writer() as w:
                t0 = time.perf_counter()
                for k in range(0, n_records, batch):
                    w.append(recs[k : k + batch])
                t_write = time.perf_counter() - t0
            t0 = time.perf_counter()
            got = len(Store(d + "/s", read_only=True).read())
            t_read = time.perf_counter() - t0
            assert got == n_records
            print(
                f"{n_atoms:>6} {batch:>6} {n_records:>8} {1e3 * t_write / n_records:>17.2f} {n_records / t_read:>15.0f}"
            )
    print(f"\n{'atoms':>6} {'batch':>6} {'CPU ms/commit':>14}")
    for n_atoms, batch in [(8, 1), (96, 1), (96, 8), (1000, 1)]:
        with tempfile.TemporaryDirectory() as d:
            print(f"{n_atoms:>6} {batch:>6} {commit_cpu_ms(d + '/s', n_atoms, batch):>14.2f}")


if __name__ == "__main__":
    main()
