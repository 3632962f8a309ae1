"""The console's aiohttp application: pages, a JSON API, server-sent events, auth.

    app = make_app(lambda: Client("127.0.0.1:50051", token=token), token)
    runner = await start_console(app, host="127.0.0.1", port=8080)   # ...; await runner.cleanup()

Routes (everything but /login, /healthz and /static/ needs the session cookie;
pages redirect to /login, the API answers 401):

    GET  /                                   campaigns (list)
    GET  /new                                new-campaign form
    GET  /campaigns/{name}                   a campaign, live
    GET  /api/campaigns                      Client.list()
    POST /api/campaigns                      multipart form -> Client.start(spec, files=...)
                                             (validate_only=1: Client.start(validate_only=True),
                                             answered 200 {"valid": false, error...} or
                                             {"valid": true})
    GET  /api/campaigns/{name}/history       Client.history(offset, limit, max_points)
    GET  /api/campaigns/{name}/events        text/event-stream fed by Client.watch
    POST /api/campaigns/{name}/stop          Client.stop
    GET  /api/campaigns/{name}/export/{fmt}  Client.export_bytes (nnmd | sannp | lammps)
    GET  /api/campaigns/{name}/report.html   Client.report_html
    GET  /static/plotly.min.js               from the plotly package (MIT)

The Client is synchronous (a gRPC sync channel): unary calls run on the console's own
thread pool (never the loop's default executor, which a coordinator in the same process
uses), and each event stream iterates ``Client.watch`` on a thread of its own that hands
events to the loop through an asyncio.Queue; when the browser goes away, the gRPC stream
is cancelled. gRPC errors become JSON ``{"error", "field", "form_field", "hint", "code"}``
with an HTTP status (INVALID_ARGUMENT 400, NOT_FOUND 404, FAILED_PRECONDITION 409,
UNAVAILABLE 503, ...).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import grpc
from aiohttp import web

from orchestrator.web import forms, pages
from orchestrator.web.auth import COOKIE_NAME, SessionSigner
from services.runtime.convert import json_safe

log = logging.getLogger("nnmd.console")
STATIC = Path(__file__).resolve().parent / "static"
CAMPAIGN_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
EXPORT_FORMATS = {"nnmd": "application/octet-stream", "sannp": "text/plain; charset=utf-8",
                  "lammps": "application/zip"}
_DEFAULT_FILENAMES = {"nnmd": "{c}.nnmd", "sannp": "ffield.sannp", "lammps": "{c}-lammps.zip"}
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409, grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.DATA_LOSS: 500,
}
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; connect-src 'self'; font-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

CLIENT = web.AppKey("client", object)
SETTINGS = web.AppKey("settings", dict)
POOL = web.AppKey("pool", concurrent.futures.ThreadPoolExecutor)
WATCHES = web.AppKey("watches", set)
SIGNER = web.AppKey("signer", SessionSigner)


def plotly_js_path() -> Path:
    """plotly.min.js as the plotly package ships it (plotly/package_data)."""
    import importlib.util

    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("plotly: not installed; pip install 'plotly>=5' (the console "
                                "serves the plotly.min.js it ships)")
    path = Path(list(spec.submodule_search_locations)[0]) / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"plotly: no {path}; reinstall plotly")
    return path


# ---------------------------------------------------------------- JSON and errors


def dumps(obj) -> str:
    try:
        return json.dumps(obj, allow_nan=False, separators=(",", ":"))
    except (ValueError, TypeError):
        return json.dumps(json_safe(obj), allow_nan=False, separators=(",", ":"))


def json_response(obj, status: int = 200) -> web.Response:
    return web.Response(text=dumps(obj), status=status, content_type="application/json")


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, field: str = "", hint: str = "",
                 code: str = "", form_field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.hint = status, message, field, hint
        self.code, self.form_field = code, form_field

    def body(self) -> dict:
        return {"error": self.message, "field": self.field, "form_field": self.form_field,
                "hint": self.hint, "code": self.code}


def rpc_error(exc: grpc.RpcError, coordinator: str,
              submission: forms.Submission | None = None) -> ApiError:
    """An ApiError from a failed gRPC call: its status, message and field (ErrorDetail)."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    message = (exc.details() if callable(getattr(exc, "details", None)) else "") or str(exc)
    field, hint = "", ""
    try:
        from services.runtime.errors import error_detail

        detail = error_detail(exc)
    except Exception:  # noqa: BLE001 - no trailers (e.g. the call never reached a server)
        detail = None
    if detail is not None:
        field, hint = detail.field, detail.hint
    status = _HTTP_STATUS.get(code, 502)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        message = (f"the coordinator at {coordinator} refused the console's token "
                   f"({message}); restart the console with the coordinator's token")
    elif code == grpc.StatusCode.UNAVAILABLE:
        message = f"the coordinator at {coordinator} is unavailable ({message})"
    return ApiError(status, message, field=field, hint=hint, code=code.name,
                    form_field=forms.form_field(field, submission) if field else None)


def _campaign(request: web.Request) -> str:
    name = request.match_info["name"]
    if not CAMPAIGN_NAME.match(name):
        raise ApiError(400, f"campaign: {name!r} is not a campaign name (letters, digits, "
                       "'.', '_' or '-')", field="campaign")
    return name


def _int_param(request: web.Request, key: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{key}: must be a whole number, got {raw!r}", field=key) from None
    if not lo <= value <= hi:
        raise ApiError(400, f"{key}: must be between {lo} and {hi}, got {value}", field=key)
    return value


async def call(request: web.Request, method: str, *args, **kwargs):
    """Client.<method>(*args, **kwargs) on the console's thread pool."""
    app = request.app
    fn = getattr(app[CLIENT], method)
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(app[POOL], lambda: fn(*args, **kwargs))
    except grpc.RpcError as exc:
        raise rpc_error(exc, app[SETTINGS]["coordinator"]) from None


# ---------------------------------------------------------------- middlewares


def _is_public(path: str) -> bool:
    return path in ("/login", "/healthz", "/favicon.ico") or path.startswith("/static/")


@web.middleware
async def errors_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response(exc.body(), exc.status)


@web.middleware
async def security_middleware(request: web.Request, handler):
    # A state-changing request from another site's page is refused (the SameSite=Strict
    # cookie already keeps it unauthenticated; this also covers --no-auth).
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        origin = request.headers.get("Origin")
        if request.headers.get("Sec-Fetch-Site") == "cross-site" or (
                origin and origin != "null" and urlsplit(origin).netloc != request.host):
            return json_response({"error": "cross-site request refused", "code": "FORBIDDEN"},
                                 403)
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # redirects and errors carry the headers too
        _secure_headers(request, exc)
        raise
    _secure_headers(request, response)
    return response


def _secure_headers(request: web.Request, response) -> None:
    response.headers.setdefault("Content-Security-Policy", _CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")


@web.middleware
async def auth_middleware(request: web.Request, handler):
    signer = request.app[SIGNER]
    if signer.enabled and not _is_public(request.path) and \
            not signer.valid(request.cookies.get(COOKIE_NAME)):
        if request.path.startswith("/api/"):
            return json_response({"error": "not logged in: log in at /login with the "
                                  "coordinator's token", "code": "UNAUTHENTICATED"}, 401)
        target = request.path_qs if request.method == "GET" else "/"
        raise web.HTTPFound("/login?next=" + quote(target, safe=""))
    return await handler(request)


# ---------------------------------------------------------------- pages and login


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _safe_next(value: str | None) -> str:
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


async def login_get(request: web.Request) -> web.Response:
    signer = request.app[SIGNER]
    if not signer.enabled or signer.valid(request.cookies.get(COOKIE_NAME)):
        raise web.HTTPFound(_safe_next(request.query.get("next")))
    return _html(pages.login_page(_safe_next(request.query.get("next"))))


async def login_post(request: web.Request) -> web.Response:
    signer = request.app[SIGNER]
    if not signer.enabled:
        raise web.HTTPSeeOther("/")
    form = await request.post()
    token = form.get("token", "")
    next_path = _safe_next(form.get("next") if isinstance(form.get("next"), str) else "/")
    if not isinstance(token, str) or not signer.check_token(token):
        await asyncio.sleep(0.5)  # slows guessing; the loop keeps serving others
        log.warning("console: failed login from %s", request.remote)
        return _html(pages.login_page(next_path, "Wrong token."), status=401)
    response = web.HTTPSeeOther(next_path)
    response.set_cookie(COOKIE_NAME, signer.issue(), max_age=int(signer.ttl_s), path="/",
                        httponly=True, samesite="Strict",
                        secure=request.app[SETTINGS]["secure_cookie"])
    raise response


async def logout(request: web.Request) -> web.Response:
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE_NAME, path="/")
    raise response


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def list_view(request: web.Request) -> web.Response:
    return _html(pages.list_page(request.app[SIGNER].enabled,
                                 request.app[SETTINGS]["coordinator"]))


async def new_view(request: web.Request) -> web.Response:
    return _html(pages.new_page(request.app[SIGNER].enabled, request.app[SETTINGS]["defaults"]))


async def campaign_view(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not CAMPAIGN_NAME.match(name):
        raise web.HTTPNotFound(text=f"{name!r} is not a campaign name")
    return _html(pages.campaign_page(request.app[SIGNER].enabled, name))


async def plotly_js(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(request.app[SETTINGS]["plotly_js"], headers={
        "Content-Type": "application/javascript; charset=utf-8",
        "Cache-Control": "public, max-age=86400"})


# ---------------------------------------------------------------- the API


async def api_list(request: web.Request) -> web.Response:
    return json_response({"campaigns": await call(request, "list")})


async def _read_form(request: web.Request) -> tuple[dict, dict]:
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge:
        mb = request.app[SETTINGS]["max_upload_mb"]
        raise ApiError(413, f"upload: larger than {mb:g} MiB in all; serve the console with "
                       "a higher --max-upload-mb", field="upload") from None
    fields, uploads = {}, {}
    for key, value in form.items():
        if isinstance(value, str):
            fields[key] = value
        elif hasattr(value, "file") and getattr(value, "filename", ""):
            uploads[key] = forms.Upload(value.filename, value.file.read())
    return fields, uploads


async def api_start(request: web.Request) -> web.Response:
    fields, uploads = await _read_form(request)
    validate_only = fields.pop("validate_only", "") in ("1", "true", "yes")
    if not validate_only:
        return await _start(request, fields, uploads, False)
    # Checking is not starting: a spec with an error is a valid answer (200, valid false)
    try:
        return await _start(request, fields, uploads, True)
    except ApiError as exc:
        if exc.status != 400:
            raise
        return json_response({"valid": False, **exc.body()})


async def _start(request: web.Request, fields: dict, uploads: dict,
                 validate_only: bool) -> web.Response:
    app = request.app
    loop = asyncio.get_running_loop()
    try:  # YAML parsing off the loop
        sub = await loop.run_in_executor(app[POOL], forms.build_submission, fields, uploads)
    except forms.FormError as exc:
        raise ApiError(400, str(exc), field=exc.field, form_field=exc.field,
                       code="INVALID_ARGUMENT") from None
    spec = dict(sub.spec)
    if validate_only and "name" not in spec:
        spec["name"] = "console-validate"  # so that checks go on past the missing name
    client = app[CLIENT]
    try:
        name = await loop.run_in_executor(app[POOL], lambda: client.start(
            spec, files=sub.files or None, validate_only=validate_only))
    except grpc.RpcError as exc:
        raise rpc_error(exc, app[SETTINGS]["coordinator"], sub) from None
    if not validate_only:
        log.info("console: started campaign %s from %s", name, request.remote)
    if validate_only:
        return json_response({"campaign": name, "valid": True})
    return json_response({"campaign": name})


async def api_history(request: web.Request) -> web.Response:
    name = _campaign(request)
    offset = _int_param(request, "offset", 0, 0, 10**7)
    limit = _int_param(request, "limit", 20, 1, 200)
    max_points = _int_param(request, "max_points", 2000, 10, 100_000)
    history = await call(request, "history", name, offset=offset, limit=limit,
                         max_points=max_points)
    # up to limit x max_points x 7 numbers: encoded off the loop
    text = await asyncio.get_running_loop().run_in_executor(request.app[POOL], dumps, history)
    return web.Response(text=text, content_type="application/json")


async def api_stop(request: web.Request) -> web.Response:
    name = _campaign(request)
    state = await call(request, "stop", name)
    log.info("console: stop %s from %s -> %s", name, request.remote, state)
    return json_response({"campaign": name, "state": state})


def _attachment(filename: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", filename)[:200] or "download"
    return f'attachment; filename="{safe}"'


async def api_export(request: web.Request) -> web.Response:
    name = _campaign(request)
    fmt = request.match_info["fmt"]
    if fmt not in EXPORT_FORMATS:
        raise ApiError(400, f"format: {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}",
                       field="format")
    version = _int_param(request, "version", 0, 0, 10**9)
    filename, data = await call(request, "export_bytes", name, format=fmt, version=version)
    filename = filename or _DEFAULT_FILENAMES[fmt].format(c=name)
    return web.Response(body=data, headers={
        "Content-Type": EXPORT_FORMATS[fmt],
        "Content-Disposition": _attachment(filename)})


async def api_report(request: web.Request) -> web.Response:
    name = _campaign(request)
    data = await call(request, "report_html", name)
    return web.Response(body=data, headers={
        "Content-Type": "text/html; charset=utf-8",
        "Content-Disposition": _attachment(f"{name}-report.html"),
        "Content-Security-Policy": "sandbox"})


# ---------------------------------------------------------------- server-sent events


class WatchThread(threading.Thread):
    """Iterates ``client.watch(campaign)`` on its own thread; hands each event to the loop.

    Items put on ``queue`` (through the loop): ("event", dict), ("end", None) when the
    campaign ended, ("error", ApiError). ``cancel()`` cancels the gRPC stream (from any
    thread, through the stream's own cancel()), so the thread ends promptly even while
    the stream is idle.
    """

    MAX_QUEUED = 20_000

    def __init__(self, client, campaign: str, loop: asyncio.AbstractEventLoop,
                 coordinator: str) -> None:
        super().__init__(name=f"console-watch-{campaign}", daemon=True)
        self.client, self.campaign, self.loop = client, campaign, loop
        self.coordinator = coordinator
        self.queue: asyncio.Queue = asyncio.Queue()
        self.overflowed = False
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._stream = None  # Client.watch's stream: iterable, cancel() from any thread

    def _put(self, item) -> None:
        def put():
            if self.queue.qsize() >= self.MAX_QUEUED:  # a browser that stopped reading
                self.queue.get_nowait()
                self.overflowed = True
            self.queue.put_nowait(item)

        try:
            self.loop.call_soon_threadsafe(put)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._cancelled.set()

    def run(self) -> None:
        try:
            with self._lock:
                if self._cancelled.is_set():
                    return
                self._stream = self.client.watch(self.campaign)
            for event in self._stream:
                if self._cancelled.is_set():
                    break
                self._put(("event", event))
            else:
                if not self._cancelled.is_set():
                    self._put(("end", None))
        except grpc.RpcError as exc:
            if not self._cancelled.is_set():
                self._put(("error", rpc_error(exc, self.coordinator)))
        except Exception as exc:  # noqa: BLE001 - reported to the browser, and logged
            log.exception("console: watching %s failed", self.campaign)
            self._put(("error", ApiError(500, f"watch failed: {type(exc).__name__}: {exc}")))

    def cancel(self) -> None:
        """Ends the watch from any thread: Client.watch's stream cancels its gRPC call,
        which wakes the thread even while the stream is idle."""
        with self._lock:
            self._cancelled.set()
            stream = self._stream
        if stream is not None:
            stream.cancel()


def _sse(kind: str, data) -> bytes:
    kind = re.sub(r"[^A-Za-z0-9_]", "_", kind or "message")
    return f"event: {kind}\ndata: {dumps(data)}\n\n".encode()


async def api_events(request: web.Request) -> web.StreamResponse:
    name = _campaign(request)
    app = request.app
    settings = app[SETTINGS]
    if len(app[WATCHES]) >= settings["max_streams"]:
        raise ApiError(503, f"too many live pages open ({settings['max_streams']}); close "
                       "some, or serve the console with a higher --max-streams",
                       code="RESOURCE_EXHAUSTED")
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache, no-store",
        "X-Accel-Buffering": "no"})
    await response.prepare(request)
    watch = WatchThread(app[CLIENT], name, asyncio.get_running_loop(), settings["coordinator"])
    app[WATCHES].add(watch)
    watch.start()
    poll_s, heartbeat_s = settings["poll_s"], settings["heartbeat_s"]
    last_write = time.monotonic()
    try:
        await response.write(b"retry: 3000\n\n")
        while True:
            try:
                kind, item = await asyncio.wait_for(watch.queue.get(), poll_s)
            except TimeoutError:
                transport = request.transport
                if transport is None or transport.is_closing():
                    break  # the browser went away
                if time.monotonic() - last_write >= heartbeat_s:
                    await response.write(b": keep-alive\n\n")
                    last_write = time.monotonic()
                continue
            if kind == "event":
                if watch.overflowed:
                    watch.overflowed = False
                    await response.write(_sse("resync", {"reason": "events were dropped"}))
                await response.write(_sse(item.get("kind", "message"), item))
            elif kind == "end":
                await response.write(_sse("end", {"campaign": name}))
                break
            elif kind == "error":
                await response.write(_sse("watch_error", item.body()))
                break
            else:  # "shutdown"
                await response.write(_sse("shutdown", {"reason": "the console is stopping"}))
                break
            last_write = time.monotonic()
    except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
        pass  # the browser went away (or the server stops): nothing to tell anyone
    finally:
        watch.cancel()
        app[WATCHES].discard(watch)
        try:
            await response.write_eof()
        except Exception:  # noqa: BLE001 - the connection is gone already
            pass
    return response


# ---------------------------------------------------------------- the app


def _spec_defaults() -> dict:
    import dataclasses

    try:
        from orchestrator.slhmc import CampaignConfig
    except Exception:  # noqa: BLE001 - placeholders only
        return {}
    out = {}
    for f in dataclasses.fields(CampaignConfig):
        if f.default is not dataclasses.MISSING and isinstance(f.default, (int, float, str)):
            out[f.name] = f.default
    return out


async def _on_startup(app: web.Application) -> None:
    loop = asyncio.get_running_loop()
    app[CLIENT] = await loop.run_in_executor(app[POOL], app[SETTINGS]["client_factory"])


async def _on_shutdown(app: web.Application) -> None:
    for watch in list(app[WATCHES]):
        watch.cancel()
        watch.queue.put_nowait(("shutdown", None))


async def _on_cleanup(app: web.Application) -> None:
    client = app.get(CLIENT)
    if client is not None and hasattr(client, "close"):
        try:
            client.close()
        except Exception:  # noqa: BLE001
            pass
    app[POOL].shutdown(wait=False, cancel_futures=True)


def make_app(client_factory: Callable[[], Any], token: str | None, *,
             no_auth: bool = False, secure_cookie: bool = False,
             session_ttl_s: float = 12 * 3600.0, coordinator: str = "",
             max_upload_mb: float = 16.0, max_streams: int = 64, threads: int = 16,
             heartbeat_s: float = 15.0, poll_s: float = 0.5) -> web.Application:
    """The console as an aiohttp Application.

    client_factory: makes the orchestrator.client.Client (called once, at startup, off
    the loop). token: what users log in with (the coordinator's token); None only with
    no_auth=True. secure_cookie: the console itself serves HTTPS. max_streams: live pages
    open at once (each holds a thread and a Watch stream).
    """
    if token is None and not no_auth:
        raise ValueError("token: none configured; set NNMD_TOKEN or --token-file "
                         "(or --no-auth when the coordinator runs without a token)")
    if not 0 < max_upload_mb <= 4096:
        raise ValueError(f"--max-upload-mb: must be in (0, 4096], got {max_upload_mb}")
    if max_streams < 1:
        raise ValueError(f"--max-streams: must be >= 1, got {max_streams}")
    app = web.Application(
        client_max_size=int(max_upload_mb * 1024 * 1024),
        middlewares=[errors_middleware, security_middleware, auth_middleware])
    app[SIGNER] = SessionSigner(None if no_auth else token, session_ttl_s)
    app[SETTINGS] = {"client_factory": client_factory, "coordinator": coordinator or "?",
                     "secure_cookie": secure_cookie, "max_upload_mb": max_upload_mb,
                     "max_streams": max_streams, "heartbeat_s": heartbeat_s,
                     "poll_s": poll_s, "defaults": _spec_defaults(),
                     "plotly_js": plotly_js_path()}
    app[POOL] = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="console")
    app[WATCHES] = set()
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)
    r = app.router
    r.add_get("/login", login_get)
    r.add_post("/login", login_post)
    r.add_post("/logout", logout)
    r.add_get("/healthz", healthz)
    r.add_get("/", list_view)
    r.add_get("/new", new_view)
    r.add_get("/campaigns/{name}", campaign_view)
    r.add_get("/static/plotly.min.js", plotly_js)
    r.add_static("/static/", STATIC, append_version=False)
    r.add_get("/api/campaigns", api_list)
    r.add_post("/api/campaigns", api_start)
    r.add_get("/api/campaigns/{name}/history", api_history)
    r.add_get("/api/campaigns/{name}/events", api_events)
    r.add_post("/api/campaigns/{name}/stop", api_stop)
    r.add_get("/api/campaigns/{name}/export/{fmt}", api_export)
    r.add_get("/api/campaigns/{name}/report.html", api_report)
    return app


async def start_console(app: web.Application, host: str = "127.0.0.1", port: int = 8080, *,
                        tls_cert: str | None = None, tls_key: str | None = None,
                        shutdown_timeout_s: float = 5.0) -> tuple[web.AppRunner, int]:
    """Serves ``app`` on host:port (HTTPS with tls_cert/tls_key) on the running loop;
    returns the runner (``await runner.cleanup()`` stops it) and the bound port."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls: give both --tls-cert and --tls-key, or neither")
    ssl_context = None
    if tls_cert:
        import ssl

        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(tls_cert, tls_key)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        bound = server.sockets[0].getsockname()[1]
    return runner, bound
