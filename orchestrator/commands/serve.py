"""`nnmd serve <service> --port P`: run one registered service as a gRPC server.

`nnmd serve web --port 8080 --coordinator HOST:PORT` runs the web console instead (an
HTTP server and a client of the coordinator, not a gRPC service), and `nnmd serve
coordinator --web-port 8080` serves the same console next to the coordinator, on its
event loop (orchestrator/web, docs/console.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from services.runtime import registry

# Services that live in the orchestrator layer make themselves known here.
registry.add_module("coordinator", "orchestrator.coordinator.service")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run a service (" + ", ".join(registry.names()) + ") as a gRPC server, or "
        "the web console (web)",
        description="Serve one service with health checking, reflection, bearer-token auth "
        "(NNMD_TOKEN or --token-file) and optional TLS until SIGINT/SIGTERM. "
        "`nnmd serve SERVICE --help` lists the service's own flags. `nnmd serve web` "
        "serves the web console for a coordinator (or give `nnmd serve coordinator` "
        "--web-port).",
    )
    p.add_argument("service", help="one of: " + ", ".join([*registry.names(), "web"]))
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


def _console_flags(p) -> None:
    """The console's own options (both `serve web` and `serve coordinator --web-port`)."""
    p.add_argument("--session-hours", type=float, default=12.0,
                   help="how long a console login lasts (hours)")
    p.add_argument("--max-upload-mb", type=float, default=16.0,
                   help="largest new-campaign form (files and spec), MiB")
    p.add_argument("--max-streams", type=int, default=64,
                   help="live campaign pages open at once (each holds one Watch stream)")


def _serve(args) -> int:
    from services.runtime.auth import load_token
    from services.runtime.server import ServerConfig

    if args.service == "web":
        return _serve_web(args.args)
    spec = registry.get(args.service)
    sp = argparse.ArgumentParser(prog=f"nnmd serve {spec.name}")
    _common_flags(sp)
    if spec.add_arguments is not None:
        spec.add_arguments(sp.add_argument_group(f"{spec.name} options"))
    if spec.name == "coordinator":
        g = sp.add_argument_group("web console (docs/console.md)")
        g.add_argument("--web-port", type=int, default=None,
                       help="also serve the web console on this port (0 = any free port)")
        g.add_argument("--web-host", default=None,
                       help="address the console binds (default: --host)")
        g.add_argument("--web-tls-ca", default=None,
                       help="with --tls-cert: the CA the console checks the coordinator's "
                            "certificate with (default: the certificate itself)")
        g.add_argument("--web-tls-server-name", default=None,
                       help="with --tls-cert: the host name in the coordinator's certificate "
                            "(the console connects to 127.0.0.1)")
        _console_flags(g)
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

    web = None
    if getattr(args, "web_port", None) is not None:
        web = _coordinator_console(args, token)
    asyncio.run(_serve_until_signal(spec.name, options, config, ready, web))
    return 0


def _coordinator_console(args, token: str | None) -> dict:
    """The console's settings for `serve coordinator --web-port`: a client of this very
    coordinator (127.0.0.1 when it binds all interfaces), with its TLS and token."""
    if not 0 <= args.web_port <= 65535:
        raise ValueError(f"--web-port: must be a port number (0-65535), got {args.web_port}")
    host = args.web_host or args.host
    connect_host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    connect_kwargs = {}
    if args.tls_cert:
        connect_kwargs = {"tls": True, "tls_ca": args.web_tls_ca or args.tls_cert,
                          "tls_server_name": args.web_tls_server_name}
    return {"host": host, "port": args.web_port, "connect_host": connect_host,
            "connect_kwargs": connect_kwargs, "token": token, "no_auth": args.no_auth,
            "tls_cert": args.tls_cert, "tls_key": args.tls_key,
            "session_ttl_s": args.session_hours * 3600.0,
            "max_upload_mb": args.max_upload_mb, "max_streams": args.max_streams}


async def _serve_until_signal(name, options, config, ready, web: dict | None) -> None:
    """services.runtime.server.serve_forever, plus the web console on the same loop."""
    import signal

    from services.runtime.server import start_service

    running = await start_service(name, options, config)
    runner = None
    try:
        if web is not None:
            from orchestrator.client import Client
            from orchestrator.web import make_app, start_console

            address = f"{web['connect_host']}:{running.port}"
            app = make_app(lambda: Client(address, token=web["token"], **web["connect_kwargs"]),
                           web["token"], no_auth=web["no_auth"],
                           secure_cookie=bool(web["tls_cert"]), coordinator=address,
                           session_ttl_s=web["session_ttl_s"],
                           max_upload_mb=web["max_upload_mb"], max_streams=web["max_streams"])
            runner, port = await start_console(app, web["host"], web["port"],
                                               tls_cert=web["tls_cert"], tls_key=web["tls_key"])
        ready(running)
        if runner is not None:
            scheme = "https" if web["tls_cert"] else "http"
            print(f"nnmd serve {name}: web console on {scheme}://{_url_host(web['host'])}:"
                  f"{port}/", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        logging.getLogger("nnmd.runtime").info("shutting down %s (grace %.1f s)", name,
                                               config.grace_s)
    finally:
        if runner is not None:
            await runner.cleanup()  # ends the console's Watch streams first
        await running.stop(config.grace_s)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _serve_web(argv: list[str]) -> int:
    """`nnmd serve web`: the console as its own process, a client of --coordinator."""
    from services.runtime.auth import load_token

    p = argparse.ArgumentParser(
        prog="nnmd serve web",
        description="Serve the web console (campaigns list, new-campaign form, live "
        "campaign pages, exports) for a coordinator. Users log in with the coordinator's "
        "token (NNMD_TOKEN or --token-file). docs/console.md.")
    p.add_argument("--coordinator", default=os.environ.get("NNMD_COORDINATOR",
                                                           "127.0.0.1:50051"),
                   help="host:port of `nnmd serve coordinator` (default $NNMD_COORDINATOR "
                        "or 127.0.0.1:50051)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (0.0.0.0 for all interfaces)")
    p.add_argument("--port", type=int, default=8080, help="port (0 = any free port)")
    p.add_argument("--token-file", default=None,
                   help="file whose first line is the coordinator's token (default: "
                        "$NNMD_TOKEN); users log in with it")
    p.add_argument("--no-auth", action="store_true",
                   help="no login (only for a coordinator that runs with --no-auth, on a "
                        "trusted host)")
    g = p.add_argument_group("TLS to the coordinator")
    g.add_argument("--tls", action="store_true",
                   help="connect with TLS, checking the certificate with the system's CAs")
    g.add_argument("--tls-ca", default=None, help="PEM CA of a TLS coordinator (implies --tls)")
    g.add_argument("--tls-server-name", default=None,
                   help="host name to check in the coordinator's certificate")
    h = p.add_argument_group("the console's own HTTPS")
    h.add_argument("--tls-cert", default=None,
                   help="PEM certificate chain: serve HTTPS (needs --tls-key); the login "
                        "cookie is then Secure")
    h.add_argument("--tls-key", default=None, help="PEM private key")
    _console_flags(p)
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port: must be a port number (0-65535), got {args.port}")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert/--tls-key: give both, or neither")
    for flag in ("tls_cert", "tls_key", "tls_ca"):
        path = getattr(args, flag)
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"--{flag.replace('_', '-')}: no file {path}")
    token = None if args.no_auth else load_token(args.token_file)
    if token is None and not args.no_auth:
        raise ValueError("token: none configured; set NNMD_TOKEN or --token-file to the "
                         "coordinator's token (or --no-auth for a coordinator without one)")
    connect_kwargs = {"tls": bool(args.tls or args.tls_ca), "tls_ca": args.tls_ca,
                      "tls_server_name": args.tls_server_name}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(_run_web(args, token, connect_kwargs))
    return 0


async def _run_web(args, token: str | None, connect_kwargs: dict) -> None:
    import signal

    import grpc

    from orchestrator.client import Client
    from orchestrator.web import make_app, start_console

    address = args.coordinator

    def client():
        return Client(address, token=token, **connect_kwargs)

    # One call before serving: a wrong token or --no-auth against a coordinator that
    # wants one is an error now; a coordinator that is not up yet is only a warning.
    loop = asyncio.get_running_loop()
    probe = client()
    try:
        await asyncio.wait_for(loop.run_in_executor(None, probe.list), 15.0)
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        if code == grpc.StatusCode.UNAUTHENTICATED:
            raise ValueError(
                f"--coordinator {address}: refused the token ({exc.details()}); "
                + ("it runs with a token, so drop --no-auth and give it (NNMD_TOKEN or "
                   "--token-file)" if token is None else "give the coordinator's token")) from None
        logging.getLogger("nnmd.console").warning(
            "the coordinator at %s does not answer yet (%s: %s); serving anyway", address,
            code.name if code else type(exc).__name__,
            exc.details() if callable(getattr(exc, "details", None)) else exc)
    except TimeoutError:
        logging.getLogger("nnmd.console").warning(
            "the coordinator at %s did not answer within 15 s; serving anyway", address)
    finally:
        probe.close()
    app = make_app(client, token, no_auth=args.no_auth, secure_cookie=bool(args.tls_cert),
                   coordinator=address, session_ttl_s=args.session_hours * 3600.0,
                   max_upload_mb=args.max_upload_mb, max_streams=args.max_streams)
    runner, port = await start_console(app, args.host, args.port, tls_cert=args.tls_cert,
                                       tls_key=args.tls_key)
    scheme = "https" if args.tls_cert else "http"
    print(f"nnmd serve web: console on {scheme}://{_url_host(args.host)}:{port}/ for the "
          f"coordinator at {address}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
