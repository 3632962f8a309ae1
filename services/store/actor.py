"""A store writer inside a Ray actor, so Ray tasks on any node can append.

Several writers may append to one store (docs/store.md, "Many writers"), where the
backend has an atomic exclusive create (local folders, file://, memory://, fsspec
backends with open(mode="xb")); on a backend without one, this actor is the single
writer every task and service must go through.

Ray serialises calls to an actor (max_concurrency 1), and the writer's own
queue keeps submissions in arrival order; a task that waits for each
``append`` before the next keeps its chain in order.
"""

from __future__ import annotations

import hashlib

import ray

from services.store.store import Record, Store


@ray.remote(max_restarts=-1, max_task_retries=0)
class StoreWriterActor:
    def __init__(self, url: str) -> None:
        self._store = Store(url)
        self._writer = self._store.writer()

    def append(self, records: list[Record]) -> list[int]:
        """Returns the record ids once durable."""
        return self._writer.append(records)

    def publish_model(self, data: bytes, metadata: dict | None = None) -> int:
        return self._writer.publish_model(data, metadata)

    def write_checkpoint(self, campaign: str, chain: str, document: dict) -> None:
        self._writer.write_checkpoint(campaign, chain, document)

    def close(self) -> None:
        self._writer.close()


def writer_actor(url: str, *, namespace: str = "nnmd"):
    """The one writer actor of store ``url`` in this Ray cluster: created on first use, shared after.

    A named actor per store URL, so every service and task that appends to a
    store goes through the same writer.
    """
    name = "nnmd-store-writer-" + hashlib.sha256(url.encode()).hexdigest()[:16]
    return StoreWriterActor.options(
        name=name, namespace=namespace, get_if_exists=True, lifetime="detached", num_cpus=0
    ).remote(url)
