"""`nnmd serve <service> --port P`: run one registered service as a gRPC server."""

from __future__ import annotations

import argparse
import asyncio
import logging

from services.runtime import registry

# Services that live in the orchestrator layer make themselves known here.
registry.add_module("coordinator", "orchestrator.coordinator.service")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run a service (" + ", ".join(registry.names()) + ") as a gRPC server",
        description="Serve one service with health checking, reflection, bearer-token auth "
        "(NNMD_TOKEN or --token-file) and optional TLS until SIGINT/SIGTERM. "
        "`nnmd serve SERVICE --help` lists the service's own flags.",
    )
    p.add_argument("service", help="one of: " + ", ".join(registry.names()))
    p.add_argument("args", nargs=argparse.REMAINDER, help="server and service flags")
    p.set_defaults(func=_serve)


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (0.0.0.0 for all interfaces)"
    )
    p.add_argument("--port", type=int, default=50051, help="port (0 = any free port)")
    p.add_argument(
        "--token-file",
        default=None,
        help="file whose first line is the bearer token (default: $NNMD_TOKEN)",
    )
    p.add_argument(
        "--no-auth", action="store_true", help="serve without a token (trusted hosts only)"
    )
    p.add_argument(
        "--tls-cert", default=None, help="PEM certificate chain (enables TLS, needs --tls-key)"
    )
    p.add_argument("--tls-key", default=None, help="PEM private key")
    p.add_argument("--max-message-mb", type=float, default=64.0, help="message size limit, MiB")
    p.add_argument(
        "--grace", type=float, default=5.0, help="seconds to finish running calls on shutdown"
    )


def _serve(args) -> int:
    from services.runtime.auth import load_token
    from services.runtime.server import ServerConfig, serve_forever

    spec = registry.get(args.service)
    sp = argparse.ArgumentParser(prog=f"nnmd serve {spec.name}")
    _common_flags(sp)
    if spec.add_arguments is not None:
        spec.add_arguments(sp.add_argument_group(f"{spec.name} options"))
    ns = sp.parse_args(args.args)
    options = spec.options_from_args(ns) if spec.options_from_args else {}
    args = ns
    token = None if args.no_auth else load_token(args.token_file)
    config = ServerConfig(
        host=args.host,
        port=args.port,
        token=token,
        allow_no_auth=args.no_auth,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        grace_s=args.grace,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def ready(running) -> None:
        print(f"nnmd serve {spec.name}: listening on {running.address}", flush=True)

    asyncio.run(serve_forever(spec.name, options, config, ready))
    return 0
