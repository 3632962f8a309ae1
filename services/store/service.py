"""The Store gRPC service: facts about a store (counts, campaigns, models, trajectories)."""

from __future__ import annotations

import argparse

from services.proto.nnmd.v1 import store_pb2, store_pb2_grpc
from services.runtime import registry
from services.store.store import DEFAULT_STORE_URL, Store, check_store_url


class StoreServicer(store_pb2_grpc.StoreServicer):
    """store_url: the store asked about when a request names none. store_roots: folders
    (or URL prefixes) that requests may name stores in; None = any (trusted clients)."""

    def __init__(self, store_url: str = DEFAULT_STORE_URL,
                 store_roots: list[str] | None = None) -> None:
        self.store_url = store_url
        self.store_roots = list(store_roots) if store_roots is not None else None

    async def Info(self, request, context):
        import asyncio

        url = request.store.url or self.store_url
        if url != self.store_url:
            check_store_url(url, "store.url", self.store_roots)
        else:
            check_store_url(url, "store.url")
        info = await asyncio.to_thread(lambda: Store(url, read_only=True).info())
        return store_pb2.StoreInfo(
            url=info["url"],
            schema=info["schema"],
            structures=info["structures"],
            atoms=info["atoms"],
            campaigns=info.get("campaigns", {}),
            latest_model_version=info["models"][-1] if info["models"] else 0,
            trajectories=info["trajectories"],
        )


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=DEFAULT_STORE_URL, help="store folder or fsspec URL")
    p.add_argument("--store-root", action="append", default=None, metavar="DIR",
                   help="folder (or URL prefix) whose stores requests may name; repeatable "
                        "(default: any store this server can reach)")


registry.register(
    registry.ServiceSpec(
        name="store",
        service_names=("nnmd.v1.Store",),
        build=lambda options: [
            (StoreServicer(**options), store_pb2_grpc.add_StoreServicer_to_server)
        ],
        add_arguments=_add_arguments,
        options_from_args=lambda args: {"store_url": args.store, "store_roots": args.store_root},
    )
)
