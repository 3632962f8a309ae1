"""`nnmd campaign run|start|status|watch|stop|export`: campaigns from a spec (YAML).

`run` runs a campaign in this process (the chains as asyncio tasks; the reference in
local threads, or on the Ray cluster that RAY_ADDRESS names: `ray job submit ... --
nnmd campaign run SPEC`). SIGTERM or Ctrl-C stops it after each chain's current step;
running it again resumes from the store. The other verbs talk to a coordinator started
with `nnmd serve coordinator` (address: --address or $NNMD_COORDINATOR, token: $NNMD_TOKEN
or --token-file).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from services.runtime.convert import json_safe

DEFAULT_ADDRESS = "127.0.0.1:50051"


def register(sub) -> None:
    p = sub.add_parser("campaign", help="run a campaign from a spec, or drive one on a "
                       "coordinator (start, status, watch, stop, export)", description=__doc__)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    r = verbs.add_parser("run", help="run (or resume) a campaign in this process")
    r.add_argument("spec", help="campaign spec (YAML); see examples/campaigns/")
    r.add_argument("--store", default=None, help="override the spec's store (folder or URL)")
    r.add_argument("--executor", choices=("auto", "local", "ray"), default=None,
                   help="where reference calls run (default: the spec's, else auto: Ray "
                        "when RAY_ADDRESS is set)")
    r.add_argument("-o", "--out", default=None, metavar="DIR",
                   help="export the final model here (model.nnmd, ffield.sannp)")
    r.add_argument("--force", action="store_true",
                   help="replace model.nnmd / ffield.sannp already in --out")
    r.set_defaults(func=cmd_run)

    def remote(name, help_, with_spec=False):
        q = verbs.add_parser(name, help=help_)
        q.add_argument("spec" if with_spec else "campaign",
                       help="campaign spec (YAML)" if with_spec else "campaign id (its name)")
        q.add_argument("--address", default=os.environ.get("NNMD_COORDINATOR", DEFAULT_ADDRESS),
                       help="coordinator host:port (default $NNMD_COORDINATOR or "
                            f"{DEFAULT_ADDRESS})")
        q.add_argument("--token-file", default=None, help="bearer token file (default "
                       "$NNMD_TOKEN)")
        q.add_argument("--tls-ca", default=None, help="PEM CA of a TLS coordinator")
        return q

    s = remote("start", "start (or resume) a campaign on a coordinator", with_spec=True)
    s.add_argument("--store", default=None, help="store URL (default: the spec's)")
    s.add_argument("--name", default=None, help="campaign name (default: the spec's)")
    s.set_defaults(func=cmd_start)
    remote("status", "a campaign's state and its chains (JSON)").set_defaults(func=cmd_status)
    remote("watch", "print a campaign's events until it ends").set_defaults(func=cmd_watch)
    remote("stop", "stop a campaign after each chain's current step").set_defaults(
        func=cmd_stop)
    e = remote("export", "write a campaign's model (latest, or --version)")
    e.add_argument("-o", "--output", required=True, help="path on the coordinator's host")
    e.add_argument("--version", type=int, default=0)
    e.add_argument("--format", choices=("nnmd", "sannp"), default="nnmd")
    e.set_defaults(func=cmd_export)


def cmd_run(args) -> int:
    from orchestrator.coordinator.runner import CampaignRun
    from orchestrator.coordinator.spec import parse_spec

    spec = parse_spec(args.spec, store=args.store)
    if args.out:
        from orchestrator.commands._output import check_out

        out = check_out(args.out, args.force, "--out", directory=True)
        for name in ("model.nnmd", "ffield.sannp") if out.is_dir() else ():
            check_out(out / name, args.force, "--out")
    if args.executor:
        import dataclasses

        spec = dataclasses.replace(spec, executor=args.executor)
    run = CampaignRun(spec, log=lambda m: print(f"[{spec.name}] {m}", flush=True))

    async def main():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, run.stop)
        summary = await run.run()
        if args.out and summary.get("model_version"):
            summary["exported"] = await asyncio.to_thread(_export_local, spec, args.out)
        return summary

    summary = asyncio.run(main())
    print(json.dumps(json_safe(summary), indent=2, allow_nan=False))
    return 0


def _export_local(spec, out_dir):
    from orchestrator.slhmc import Campaign

    camp = Campaign(spec.config, spec.store, log=lambda m: None, make_backends=False)
    try:
        return camp.export_model(out_dir)
    finally:
        camp.close()


def _client(args):
    from orchestrator.client import Client

    token = None
    if args.token_file:
        from services.runtime.auth import load_token

        token = load_token(args.token_file)
    kw = {"tls": True, "tls_ca": args.tls_ca} if args.tls_ca else {}
    return Client(args.address, token=token, **kw)


def _rpc(fn):
    import grpc

    try:
        return fn()
    except grpc.RpcError as exc:
        from services.runtime.errors import error_detail

        d = error_detail(exc)
        where = f" (field {d.field})" if d is not None and d.field else ""
        print(f"nnmd campaign: {exc.code().name}: {exc.details()}{where}", file=sys.stderr)
        return None


def _call(args, fn, show=print) -> int:
    """fn(client) on the coordinator; its result shown, or the RPC error named (exit 2)."""
    with _client(args) as c:
        out = _rpc(lambda: fn(c))
    if out is None:
        return 2
    show(out)
    return 0


def cmd_start(args) -> int:
    return _call(args, lambda c: c.start(args.spec, store=args.store, name=args.name))


def cmd_status(args) -> int:
    return _call(args, lambda c: c.status(args.campaign),
                 show=lambda st: print(json.dumps(json_safe(st), indent=2, allow_nan=False)))


def cmd_watch(args) -> int:
    def follow(c):
        for ev in c.watch(args.campaign):
            if ev["kind"] == "step":
                print(f"{ev['chain']} step {ev['step']}: "
                      f"{'accepted' if ev['accepted'] else 'rejected'} "
                      f"(model v{ev['model_version']})", flush=True)
            elif ev["kind"] == "model_published":
                print(f"model v{ev['model_version']} published", flush=True)
            else:
                print(f"state {ev['state']}: {ev['message']}", flush=True)
        return 0

    return _call(args, follow, show=lambda _: None)


def cmd_stop(args) -> int:
    return _call(args, lambda c: c.stop(args.campaign))


def cmd_export(args) -> int:
    return _call(args, lambda c: c.export_model(args.campaign, args.output,
                                                version=args.version, format=args.format))
