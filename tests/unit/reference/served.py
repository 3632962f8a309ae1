"""Test helper: a Reference servicer on a private event loop in a thread, so
synchronous gRPC clients in a test can call it."""

from __future__ import annotations

import asyncio
import threading

from services.proto.nnmd.v1 import reference_pb2_grpc
from services.runtime.channel import connect
from services.runtime.server import ServerConfig, start_server


class Served:
    """The servicer on a private event loop in a thread; sync clients call it."""

    def __init__(self, servicer):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servicer = servicer
        self.running = self.run(start_server(
            [(servicer, reference_pb2_grpc.add_ReferenceServicer_to_server)],
            ("nnmd.v1.Reference",), ServerConfig(allow_no_auth=True)))
        self.channel = connect(f"localhost:{self.running.port}", timeout_s=120)
        self.stub = reference_pb2_grpc.ReferenceStub(self.channel)

    def run(self, coro, timeout=60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        self.channel.close()
        self.run(self.running.stop(0.5))
        self.servicer.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
