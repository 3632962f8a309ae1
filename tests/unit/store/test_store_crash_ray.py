"""A writer SIGKILLed mid-append; producers in Ray tasks appending through the writer actor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from store_records import identity, make_record

from services.store.store import Store

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

CHILD = """
import sys
from services.store.store import Store
from store_records import make_record
url, chain, first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with Store(url).writer() as w:
    step = first
    while True:
        w.append([make_record(chain, step, n_atoms=2000), make_record(chain, step + 1, n_atoms=2000)])
        print(step + 1, flush=True)
        step += 2
"""


def _run_and_kill(url: str, first: int, acks_before_kill: int, extra_delay: float) -> int:
    """Starts a writer process, waits for some acknowledged appends, SIGKILLs it; returns the last acked step."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, "0", str(first)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{HERE}"},
    )
    last = first - 1
    try:
        for _ in range(acks_before_kill):
            line = proc.stdout.readline()
            assert line, "writer process died early"
            last = int(line)
        time.sleep(extra_delay)  # land somewhere inside the next append
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    return last


def test_sigkill_mid_append_leaves_a_usable_store(tmp_path):
    url = str(tmp_path / "s")
    Store(url)
    next_step = 0
    for delays in (0.0, 0.013, 0.029):
        acked = _run_and_kill(url, next_step, acks_before_kill=3, extra_delay=delays)
        store = Store(url, read_only=True)  # opens
        steps = [identity(r)[1] for r in store.read()]  # every visible record is whole
        assert steps == list(range(len(steps)))  # nothing lost, nothing torn, in order
        assert len(steps) >= acked + 1  # everything acknowledged is there
        next_step = len(steps)
    # a new writer accepts appends after the crashes
    with Store(url).writer() as w:
        assert w.append(make_record(0, next_step, n_atoms=5)) == [next_step]
    steps = [identity(r)[1] for r in Store(url).read()]
    assert steps == list(range(next_step + 1))


def test_ray_task_producers_through_the_writer_actor(ray_session, tmp_path):
    ray = ray_session
    import store_records

    from services.store.actor import writer_actor

    # the test helper module is not importable on Ray workers: ship it by value
    ray.cloudpickle.register_pickle_by_value(store_records)

    url = str(tmp_path / "s")
    writer = writer_actor(url)
    assert writer_actor(url)._actor_id == writer._actor_id  # one writer per store

    @ray.remote(num_cpus=0.25)
    def produce(writer, chain: int, n_steps: int) -> list[int]:
        ids = []
        for step in range(n_steps):
            ids += ray.get(writer.append.remote([make_record(chain, step)]))
        return ids

    n_chains, n_steps = 4, 8
    results = ray.get([produce.remote(writer, c, n_steps) for c in range(n_chains)])
    ray.get(writer.close.remote())
    ray.kill(writer)
    all_ids = sorted(i for ids in results for i in ids)
    assert all_ids == list(range(n_chains * n_steps))  # every ack unique
    got = [identity(r) for r in Store(url, read_only=True).read()]
    assert sorted(got) == [(c, s) for c in range(n_chains) for s in range(n_steps)]
    for c in range(n_chains):
        assert [s for cc, s in got if cc == c] == list(range(n_steps))


@pytest.mark.slow
def test_many_sigkills(tmp_path):
    url = str(tmp_path / "s")
    Store(url)
    next_step = 0
    for k in range(12):
        _run_and_kill(url, next_step, acks_before_kill=1 + k % 3, extra_delay=0.004 * k)
        steps = [identity(r)[1] for r in Store(url, read_only=True).read()]
        assert steps == list(range(len(steps)))
        next_step = len(steps)
