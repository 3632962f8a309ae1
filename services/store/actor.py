"""The store's single writer inside a Ray actor, so Ray tasks on any node can append.

Ray serialises calls to an actor (max_concurrency 1), and the writer's own
queue keeps submissions in arrival order; a task that waits for each
``append`` before the next keeps its chain in order.
"""

from __future__ import annotations

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
