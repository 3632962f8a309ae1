"""The web console's handlers against a fake Client (only here: the browser test in
tests/integration/web drives a real coordinator): login and the signed cookie, every
page and API route closed without it, the new-campaign form's spec and its errors
beside the field they name, gRPC errors as HTTP statuses, NaN-free JSON, exports as
attachments, and server-sent events that end with the campaign and cancel the Watch
stream when the browser goes away."""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import grpc
import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer

from orchestrator.web import forms
from orchestrator.web.app import make_app
from orchestrator.web.auth import COOKIE_NAME, SessionSigner
from services.proto.nnmd.v1 import common_pb2
from services.runtime.errors import ERROR_TRAILER_KEY

TOKEN = "console-unit-test-token"


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details, field="", hint=""):
        super().__init__(details)
        self._code, self._details = code, details
        detail = common_pb2.ErrorDetail(field=field, reason=details, hint=hint)
        self._trailers = ((ERROR_TRAILER_KEY, detail.SerializeToString()),) if field else ()

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers


class FakeStream:
    """Stands in for a gRPC response stream: blocks until fed, cancellable."""

    def __init__(self):
        self.items: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if self.cancelled.is_set():
                raise FakeRpcError(grpc.StatusCode.CANCELLED, "cancelled")
            try:
                item = self.items.get(timeout=0.02)
            except queue.Empty:
                continue
            if item is None:
                raise StopIteration
            return item

    def cancel(self):
        self.cancelled.set()


class FakeClient:
    def __init__(self):
        self.started: list = []
        self.streams: dict[str, FakeStream] = {}
        self.stream_ready = threading.Event()
        self.closed = False
        self.loop_thread = None

    def list(self):
        return [{"campaign": "cu", "state": "running", "n_chains": 2, "steps_done": 3,
                 "steps_total": 20, "acceptance": float("nan"), "n_labels": 5,
                 "model_version": 1, "reference": "emt", "store": "/s"}]

    def start(self, spec, *, store=None, name=None, files=None, validate_only=False):
        if spec.get("temperature", 1) <= 0:
            raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"config.temperature: must be > 0, got {spec['temperature']}",
                               field="config.temperature")
        if "name" not in spec:
            raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "config.name: missing",
                               field="config.name")
        if spec.get("store") == "elsewhere":
            raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "config.store: outside",
                               field="config.store", hint="use a store below /data")
        self.started.append((spec, files, validate_only))
        return spec["name"]

    def history(self, campaign, *, offset=0, limit=20, max_points=2000):
        if campaign == "missing":
            raise FakeRpcError(grpc.StatusCode.NOT_FOUND, "campaign: no campaign 'missing'",
                               field="campaign")
        if campaign == "down":
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")
        names = [f"chain{i:03d}" for i in range(45)]
        return {"campaign": campaign, "state": "running", "message": "", "settings": {},
                "chain_names": names, "n_chains": 45, "offset": offset, "limit": limit,
                "chains": {n: {"step": [1], "energy_ref": [float("nan")], "volume": [1.0],
                               "accepted": [1], "acceptance_rate": [1.0],
                               "n_md_steps": [5], "phase": ["burn_in"]}
                           for n in names[offset:offset + limit]},
                "aggregate": {"step": [1], "acceptance_mean": [float("inf")]},
                "labels": {"time": [], "n_labels": []}, "models": [], "events": [],
                "max_points": max_points}

    def watch(self, campaign):  # like Client.watch: an iterable with cancel()
        stream = FakeStream()
        self.streams[campaign] = stream
        self.stream_ready.set()
        return stream

    def stop(self, campaign):
        return "stopping"

    def export_bytes(self, campaign, format="nnmd", version=0):
        if format == "lammps":
            return "nnmd-lammps.zip", b"PK\x03\x04zip"
        return ("model.nnmd" if format == "nnmd" else "ffield.sannp"), b"model-bytes"

    def report_html(self, campaign):
        return b"<html>report</html>"

    def close(self):
        self.closed = True


def run(app_kwargs, body, *, token=TOKEN, fake=None):
    """Runs ``await body(client, fake)`` against a console app on a test server."""
    fake = fake or FakeClient()
    app = make_app(lambda: fake, token, coordinator="fake:1", poll_s=0.05, **app_kwargs)

    async def main():
        async with TestClient(TestServer(app)) as client:
            return await body(client, fake)

    result = asyncio.run(main())
    assert fake.closed, "the console closes its Client at cleanup"
    return result


async def login(client, token=TOKEN):
    r = await client.post("/login", data={"token": token, "next": "/"},
                          allow_redirects=False)
    return r


# ---------------------------------------------------------------- auth


def test_without_login_nothing_answers_but_the_login_page():
    async def body(client, fake):
        for path in ("/", "/new", "/campaigns/cu"):
            r = await client.get(path, allow_redirects=False)
            assert r.status == 302 and r.headers["Location"].startswith("/login?next=")
        for method, path in (("GET", "/api/campaigns"), ("GET", "/api/campaigns/cu/history"),
                             ("GET", "/api/campaigns/cu/events"),
                             ("POST", "/api/campaigns/cu/stop"),
                             ("GET", "/api/campaigns/cu/export/nnmd"),
                             ("GET", "/api/campaigns/cu/report.html"),
                             ("POST", "/api/campaigns")):
            r = await client.request(method, path, allow_redirects=False)
            assert r.status == 401, (method, path)
            assert "cu" not in await r.text() or path.endswith("/cu/stop") is False
        r = await client.get("/login")
        assert r.status == 200
        html = await r.text()
        assert 'type="password"' in html and 'name="token"' in html
        assert "Content-Security-Policy" in r.headers
        # a wrong token: 401, the login page again, no cookie
        r = await login(client, "wrong-token")
        assert r.status == 401 and COOKIE_NAME not in r.cookies
        assert "Wrong token" in await r.text()
        # static assets are public (no campaign data in them)
        for path in ("/static/console.js", "/static/console.css", "/static/plotly.min.js"):
            r = await client.get(path)
            assert r.status == 200, path
        r = await client.get("/static/plotly.min.js")
        assert r.headers["Content-Type"].startswith("application/javascript")
        assert b"plotly.js" in (await r.read())[:200]
        assert fake.started == []

    run({}, body)


def test_login_sets_a_signed_httponly_strict_cookie_and_opens_everything():
    async def body(client, fake):
        r = await login(client)
        assert r.status == 303 and r.headers["Location"] == "/"
        cookie = r.headers["Set-Cookie"]
        assert cookie.startswith(COOKIE_NAME + "=")
        for attr in ("HttpOnly", "SameSite=Strict", "Max-Age=3600", "Path=/"):
            assert attr in cookie, cookie
        assert "Secure" not in cookie
        r = await client.get("/api/campaigns")
        assert r.status == 200
        data = await r.json()
        assert data["campaigns"][0]["acceptance"] is None  # NaN -> null
        r = await client.get("/")
        assert r.status == 200 and "Campaigns" in await r.text()
        # a tampered cookie is refused
        value = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE_NAME].value
        client.session.cookie_jar.clear()
        client.session.cookie_jar.update_cookies({COOKIE_NAME: value[:-2] + "xx"},
                                                 response_url=client.make_url("/"))
        assert (await client.get("/api/campaigns")).status == 401
        # logout drops it
        await login(client)
        r = await client.post("/logout", allow_redirects=False)
        assert r.status == 303
        assert (await client.get("/api/campaigns")).status == 401

    run({"session_ttl_s": 3600}, body)


def test_login_redirects_only_to_local_paths_and_secure_cookie_over_https():
    async def body(client, fake):
        r = await client.post("/login", data={"token": TOKEN, "next": "//evil.example/x"},
                              allow_redirects=False)
        assert r.headers["Location"] == "/"
        assert "Secure" in r.headers["Set-Cookie"]
        r = await client.post("/login", data={"token": TOKEN, "next": "/campaigns/cu"},
                              allow_redirects=False)
        assert r.headers["Location"] == "/campaigns/cu"

    run({"secure_cookie": True}, body)


def test_session_signer_expiry_and_key_from_token():
    signer = SessionSigner("a-token", ttl_s=10)
    value = signer.issue(now=1000.0)
    assert signer.valid(value, now=1005.0)
    assert not signer.valid(value, now=1011.0)
    assert SessionSigner("a-token").valid(value, now=1005.0)  # another replica, same token
    assert not SessionSigner("other-token").valid(value, now=1005.0)
    assert not signer.valid("v1.99999999999.x.y")
    assert signer.check_token("a-token") and not signer.check_token("a-toke")
    assert "a-token" not in repr(signer)


def test_no_auth_needs_asking_for_and_then_has_no_login():
    with pytest.raises(ValueError, match="token"):
        make_app(lambda: FakeClient(), None)

    async def body(client, fake):
        assert (await client.get("/api/campaigns")).status == 200
        r = await client.get("/login", allow_redirects=False)
        assert r.status == 302 and r.headers["Location"] == "/"

    run({"no_auth": True}, body, token=None)


def test_cross_site_posts_are_refused():
    async def body(client, fake):
        await login(client)
        r = await client.post("/api/campaigns/cu/stop", headers={"Origin": "http://evil.example"})
        assert r.status == 403
        r = await client.post("/api/campaigns/cu/stop",
                              headers={"Origin": str(client.make_url("")).rstrip("/")})
        assert r.status == 200 and (await r.json())["state"] == "stopping"

    run({}, body)


# ---------------------------------------------------------------- the form


def form(**fields):
    data = FormData()
    for key, value in fields.items():
        if isinstance(value, tuple):
            data.add_field(key, value[1], filename=value[0])
        else:
            data.add_field(key, str(value))
    return data


def test_form_makes_the_spec_and_uploads_and_errors_land_beside_the_field():
    async def body(client, fake):
        await login(client)
        # the coordinator's error for config.temperature -> the temperature input
        r = await client.post("/api/campaigns", data=form(
            name="cu", reference="emt", temperature="-5", structure=("cu.xyz", b"1\n\nCu 0 0 0\n")))
        assert r.status == 400
        err = await r.json()
        assert err["form_field"] == "temperature" and err["field"] == "config.temperature"
        assert "temperature" in err["error"] and err["code"] == "INVALID_ARGUMENT"
        # a number that does not parse never reaches the coordinator
        r = await client.post("/api/campaigns", data=form(name="cu", chains="two"))
        err = await r.json()
        assert r.status == 400 and err["form_field"] == "chains" and "'two'" in err["error"]
        # a field the form has no input for goes to the general box (with its hint)
        r = await client.post("/api/campaigns", data=form(name="cu", reference="emt",
                                                          store="elsewhere"))
        err = await r.json()
        assert err["form_field"] == "store" and err["hint"] == "use a store below /data"
        # YAML as the starting point, inputs override it; burn-in goes under sampling
        spec_yaml = "name: from-yaml\nreference: emt\nsteps: 5\ntrain: {hidden: [8]}\n"
        r = await client.post("/api/campaigns", data=form(
            spec_yaml=spec_yaml, steps="30", md_steps="5", burn_in="10", ensemble="npt",
            pressure="1 GPa", structure=("cu.xyz", b"xyz-bytes")))
        assert r.status == 200, await r.text()
        assert (await r.json())["campaign"] == "from-yaml"
        spec, files, validate_only = fake.started[-1]
        assert spec == {"name": "from-yaml", "reference": "emt", "steps": 30, "md_steps": 5,
                        "train": {"hidden": [8]}, "sampling": {"burn_in": 10},
                        "ensemble": "npt", "pressure": "1 GPa", "structure": "cu.xyz"}
        assert files == {"cu.xyz": b"xyz-bytes"} and validate_only is False
        # a QE input upload makes the reference qe:<its name>
        r = await client.post("/api/campaigns", data=form(
            name="si", reference="qe", qe_input=("si.pwi", b"&control\n/\n")))
        assert r.status == 200
        spec, files, _ = fake.started[-1]
        assert spec["reference"] == "qe:si.pwi" and files == {"si.pwi": b"&control\n/\n"}
        # validate_only is passed on, and checks go past a missing name
        r = await client.post("/api/campaigns", data=form(reference="emt", validate_only="1"))
        assert r.status == 200 and (await r.json())["valid"] is True
        assert fake.started[-1][2] is True
        # a spec with an error is a valid answer to "check this" (no HTTP error)
        r = await client.post("/api/campaigns", data=form(name="cu", temperature="0",
                                                          validate_only="1"))
        body = await r.json()
        assert r.status == 200 and body["valid"] is False
        assert body["form_field"] == "temperature"
        r = await client.post("/api/campaigns", data=form(chains="x", validate_only="1"))
        body = await r.json()
        assert r.status == 200 and body["valid"] is False and body["form_field"] == "chains"
        # bad YAML names the text box and the line
        r = await client.post("/api/campaigns", data=form(spec_yaml="name: [unclosed"))
        err = await r.json()
        assert err["form_field"] == "spec_yaml" and "line" in err["error"]

    run({}, body)


@pytest.mark.parametrize(("fields", "uploads", "field", "text"), [
    ({"reference": "emt"}, {"qe_input": ("pw.in", b"x")}, "qe_input", "choose the reference qe"),
    ({"reference": "qe"}, {}, "qe_input", "needs a pw.x input"),
    ({}, {"structure": ("../../etc/passwd", b"x")}, None, None),
    ({}, {"structure": ("bad name.xyz", b"x")}, "structure", "file name"),
    ({}, {"structure": ("empty.xyz", b"")}, "structure", "empty"),
    ({"temperature": "1e400x"}, {}, "temperature", "must be a number"),
    ({"steps": "2.5"}, {}, "steps", "whole number"),
    ({"ensemble": "nve"}, {}, "ensemble", "nvt or npt"),
    ({"spec_yaml": "- a list"}, {}, "spec_yaml", "mapping"),
    ({"spec_yaml": "name: x"}, {"spec_file": ("s.yaml", b"name: y")}, "spec_file", "not both"),
])
def test_form_errors_name_their_input(fields, uploads, field, text):
    ups = {k: forms.Upload(*v) for k, v in uploads.items()}
    if field is None:  # a browser's path is cut to the bare name
        sub = forms.build_submission(fields, ups)
        assert sub.spec["structure"] == "passwd"
        return
    with pytest.raises(forms.FormError) as info:
        forms.build_submission(fields, ups)
    assert info.value.field == field and text in str(info.value)
    assert str(info.value).startswith(field)


def test_coordinator_fields_map_to_form_inputs():
    qe = forms.Submission(spec={}, qe_upload=True)
    assert forms.form_field("config.temperature") == "temperature"
    assert forms.form_field("config.sampling.burn_in") == "burn_in"
    assert forms.form_field("config.pressure_gpa") == "pressure"
    assert forms.form_field("config.name") == "name"
    assert forms.form_field("campaign") == "name"
    assert forms.form_field("store.url") == "store"
    assert forms.form_field("config_json") == "spec_yaml"
    assert forms.form_field("config.reference") == "reference"
    assert forms.form_field("config.reference", qe) == "qe_input"
    assert forms.form_field("config.chains[1].temperature") is None
    assert forms.form_field("config.train") is None


# ---------------------------------------------------------------- the API


def test_history_errors_and_parameters():
    async def body(client, fake):
        await login(client)
        r = await client.get("/api/campaigns/cu/history?offset=20&limit=20&max_points=500")
        h = await r.json()
        assert r.status == 200 and sorted(h["chains"]) == [f"chain{i:03d}" for i in range(20, 40)]
        assert h["chains"]["chain020"]["energy_ref"] == [None]  # NaN -> null
        assert h["aggregate"]["acceptance_mean"] == [None]  # inf -> null
        assert h["max_points"] == 500
        r = await client.get("/api/campaigns/cu/history?limit=0")
        assert r.status == 400 and (await r.json())["field"] == "limit"
        r = await client.get("/api/campaigns/cu/history?offset=x")
        assert r.status == 400 and "offset" in (await r.json())["error"]
        r = await client.get("/api/campaigns/missing/history")
        assert r.status == 404 and (await r.json())["code"] == "NOT_FOUND"
        r = await client.get("/api/campaigns/down/history")
        err = await r.json()
        assert r.status == 503 and "fake:1" in err["error"]
        r = await client.get("/api/campaigns/bad%20name/history")
        assert r.status == 400

    run({}, body)


def test_exports_are_attachments():
    async def body(client, fake):
        await login(client)
        for fmt, filename, content_type in (("nnmd", "model.nnmd", "application/octet-stream"),
                                            ("sannp", "ffield.sannp", "text/plain"),
                                            ("lammps", "nnmd-lammps.zip", "application/zip")):
            r = await client.get(f"/api/campaigns/cu/export/{fmt}?version=2")
            assert r.status == 200
            assert r.headers["Content-Disposition"] == f'attachment; filename="{filename}"'
            assert r.headers["Content-Type"].startswith(content_type)
        r = await client.get("/api/campaigns/cu/export/pdf")
        assert r.status == 400 and (await r.json())["field"] == "format"
        r = await client.get("/api/campaigns/cu/report.html")
        assert r.headers["Content-Disposition"] == 'attachment; filename="cu-report.html"'
        assert await r.read() == b"<html>report</html>"

    run({}, body)


# ---------------------------------------------------------------- server-sent events


async def read_events(resp, n, timeout=10.0):
    """The next n (event, data) pairs of an SSE response."""
    import json

    out, event, deadline = [], None, time.monotonic() + timeout
    while len(out) < n:
        line = await asyncio.wait_for(resp.content.readline(), deadline - time.monotonic())
        if not line:
            break
        text = line.decode().rstrip("\n")
        if text.startswith("event: "):
            event = text[7:]
        elif text.startswith("data: "):
            out.append((event, json.loads(text[6:])))
    return out


def test_events_stream_until_the_campaign_ends():
    async def body(client, fake):
        await login(client)
        resp = await client.get("/api/campaigns/cu/events")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        await asyncio.to_thread(fake.stream_ready.wait, 5)
        stream = fake.streams["cu"]
        t0 = time.monotonic()
        stream.items.put({"kind": "step", "chain": "chain000", "step": 1,
                          "acceptance_rate": float("nan")})
        (first,) = await read_events(resp, 1)
        assert time.monotonic() - t0 < 2.0  # pushed, not polled
        assert first == ("step", {"kind": "step", "chain": "chain000", "step": 1,
                                  "acceptance_rate": None})
        stream.items.put({"kind": "state", "state": "finished", "message": ""})
        stream.items.put(None)  # the campaign ended: Watch returns
        events = await read_events(resp, 2)
        assert [e for e, _ in events] == ["state", "end"]
        assert (await resp.content.read()).strip() == b""  # the server closed the stream

    run({}, body)


def test_events_stream_cancels_the_watch_when_the_browser_leaves():
    async def body(client, fake):
        await login(client)
        resp = await client.get("/api/campaigns/cu/events")
        await asyncio.to_thread(fake.stream_ready.wait, 5)
        stream = fake.streams["cu"]
        stream.items.put({"kind": "log", "message": "hello"})
        assert (await read_events(resp, 1))[0][0] == "log"
        resp.close()  # the browser closes the page
        assert await asyncio.to_thread(stream.cancelled.wait, 5), "Watch stream not cancelled"
        app = client.server.app
        from orchestrator.web.app import WATCHES

        for _ in range(100):
            if not app[WATCHES]:
                break
            await asyncio.sleep(0.05)
        assert not app[WATCHES]

    run({}, body)


def test_watch_errors_reach_the_page():
    class Missing(FakeClient):
        def watch(self, campaign):
            class Missing(FakeStream):
                def __next__(self):
                    raise FakeRpcError(grpc.StatusCode.NOT_FOUND, "campaign: no campaign 'x'",
                                       field="campaign")
            return Missing()

    async def body(client, fake):
        await login(client)
        resp = await client.get("/api/campaigns/x/events")
        (event,) = await read_events(resp, 1)
        assert event[0] == "watch_error" and event[1]["code"] == "NOT_FOUND"

    run({}, body, fake=Missing())


def test_too_many_live_pages_is_a_clear_503():
    async def body(client, fake):
        await login(client)
        first = await client.get("/api/campaigns/cu/events")
        await asyncio.to_thread(fake.stream_ready.wait, 5)
        second = await client.get("/api/campaigns/cu/events")
        assert second.status == 503 and "--max-streams" in (await second.json())["error"]
        first.close()

    run({"max_streams": 1}, body)


# ---------------------------------------------------------------- the command line


@pytest.mark.parametrize(("argv", "text"), [
    (["serve", "web"], "token: none configured"),
    (["serve", "web", "--token-file", "/nonexistent/token"], "/nonexistent/token"),
    (["serve", "web", "--no-auth", "--tls-cert", "c.pem"], "--tls-cert/--tls-key"),
    (["serve", "web", "--no-auth", "--port", "70000"], "--port"),
    (["serve", "coordinator", "--no-auth", "--web-port", "-1"], "--web-port"),
])
def test_serve_web_refuses_bad_flags_naming_them(argv, text, monkeypatch, capsys):
    from orchestrator.cli import main

    monkeypatch.delenv("NNMD_TOKEN", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err
