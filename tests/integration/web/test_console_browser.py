"""The web console in a real browser against a real coordinator.

`nnmd serve coordinator --executor ray --web-port 0` runs as its own process, joined to
the session's Ray instance (RAY_ADDRESS), so the campaign's EMT reference runs in Ray
actors; Playwright drives Debian's chromium headless through the whole flow: a wrong
token sees nothing, log in, a form error lands beside its field, start a campaign on a
32-atom Cu cell uploaded from the form, watch the acceptance chart gain points live,
stop it with the button, download the model and load it with Potential.load. Every
request that leaves the machine is blocked (the page must still render fully: plotly
is served by the console) and the browser console must show no errors. Screenshots go
to artifacts/console-*.png (or $NNMD_ARTIFACTS); the campaign page's first screen is
copied to docs/console.png when that is missing or NNMD_UPDATE_DOCS_SCREENSHOT=1.

Skips, saying why, only when chromium or Playwright is missing (scripts/install.sh
installs both).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.served import stop_served

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = Path(os.environ.get("NNMD_ARTIFACTS", ROOT / "artifacts"))
TOKEN = "console-browser-test-token"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
# The form's YAML box: a tiny network and a short bootstrap, so that the campaign runs
# its first steps within seconds on 2 cores.
SPEC_YAML = """\
md_steps_min: 2
md_steps_max: 20
dt: 2.0
bootstrap_steps: 6
bootstrap_dt: 2.0
retrain_epochs: 5
seed: 3
train:
  descriptor: {n_radial: 6, n_angular: 3, r_radial: 4.0, r_angular: 3.5}
  hidden: [8]
  max_epochs: 15
  warmup_epochs: 3
  validation_fraction: 0.2
"""
# What chromium may report as an error while the test provokes one on purpose (the
# wrong token's 401 page, the form's 400 answer); anything else fails the test.
EXPECTED_HTTP_ERROR = re.compile(r"status of (400|401) ")


def _skip_reason() -> str | None:
    if CHROMIUM is None:
        return "chromium is not installed (scripts/install.sh installs Debian's chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


@pytest.fixture
def console(ray_session, tmp_path):
    """A coordinator process (Ray executor, token) with its web console; yields the
    console's base URL."""
    ray = ray_session
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("NNMD_TOKEN",)}
    env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "serve", "coordinator", "--port", "0",
         "--token-file", str(token_file), "--store", str(tmp_path / "store"),
         "--upload-dir", str(tmp_path / "uploads"), "--executor", "ray", "--web-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert "listening on" in lines[0], (lines, proc.stderr.read() if proc.poll() else "")
        match = re.search(r"web console on (http://\S+)", lines[1])
        assert match, lines
        yield match.group(1).rstrip("/")
    finally:
        stop_served(proc, TOKEN)


def _cu32(path: Path) -> Path:
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.rattle(0.02, seed=1)
    assert len(atoms) == 32
    atoms.write(path, format="extxyz")
    return path


def _points(page, chart: str) -> int:
    return page.evaluate(
        """(id) => { const d = document.getElementById(id);
                     if (!d || !d.data) return 0;
                     return d.data.reduce((n, t) => n + (t.x ? t.x.length : 0), 0); }""",
        f"chart-{chart}")


def test_console_flow_in_chromium(console, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from nnmd_kernels.potential import Potential

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    structure = _cu32(tmp_path / "cu32.xyz")
    name = "cu-console"
    blocked: list[str] = []
    errors: list[str] = []
    expecting_http_errors = [False]

    def on_console(msg):
        if msg.type == "error":
            if expecting_http_errors[0] and EXPECTED_HTTP_ERROR.search(msg.text):
                return
            errors.append(f"console: {msg.text} ({msg.location})")

    def route(r):
        host = urlsplit(r.request.url).hostname
        if r.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                          accept_downloads=True)
            context.route("**/*", route)
            page = context.new_page()
            page.on("console", on_console)
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))

            # 1. a wrong token sees the login page and nothing else
            expecting_http_errors[0] = True
            page.goto(console + "/")
            expect(page).to_have_url(re.compile(r"/login\?next="))
            page.fill("#token", "not-the-token")
            page.press("#token", "Enter")
            expect(page.locator(".error")).to_contain_text("Wrong token")
            assert "/login" in page.url
            for path in ("/api/campaigns", f"/api/campaigns/{name}/history",
                         f"/api/campaigns/{name}/export/nnmd"):
                assert page.request.get(console + path).status == 401, path
            page.goto(console + "/new")
            expect(page).to_have_url(re.compile(r"/login"))
            page.screenshot(path=str(ARTIFACTS / "console-login.png"))

            # 2. log in (the token in the password field, Enter)
            page.fill("#token", TOKEN)
            page.press("#token", "Enter")
            expect(page).to_have_url(re.compile(r"/new$"))

            # 3. a form error lands beside the field it names
            page.fill("#f-name", name)
            page.select_option("#f-reference-choice", "emt")
            expect(page.locator("#f-reference")).to_have_value("emt")
            page.set_input_files("#f-structure", str(structure))
            page.fill("#f-temperature", "-5")
            page.click("#start-button")
            err = page.locator("#err-temperature")
            expect(err).to_be_visible()
            expect(err).to_contain_text("temperature")
            expect(err).to_contain_text("-5")
            page.screenshot(path=str(ARTIFACTS / "console-form-error.png"), full_page=True)
            expecting_http_errors[0] = False

            # leaving the input re-checks the spec (validate_only): the error goes away
            page.fill("#f-temperature", "600")
            page.press("#f-temperature", "Tab")
            expect(err).to_be_hidden()

            # 4. start the campaign from the form: EMT on the uploaded 32-atom Cu cell
            page.fill("#f-chains", "2")
            page.fill("#f-steps", "5000")  # still running when stopped
            page.fill("#f-md_steps", "5")
            page.fill("#f-burn_in", "12")
            page.fill("#f-retrain_every", "8")
            page.fill("#f-spec_yaml", SPEC_YAML)
            t_start = time.monotonic()
            page.click("#start-button")
            expect(page).to_have_url(re.compile(rf"/campaigns/{name}$"), timeout=30_000)
            page.wait_for_load_state("load")
            assert page.evaluate("typeof Plotly !== 'undefined'"), "plotly did not load"

            # 5. the acceptance chart gains points live (server-sent events)
            page.wait_for_function(
                "() => { const d = document.getElementById('chart-acceptance');"
                " return d && d.data && d.data.some(t => t.x && t.x.length > 0); }",
                timeout=60_000)
            counts = [_points(page, "acceptance")]
            for _ in range(2):
                page.wait_for_function(
                    f"() => document.getElementById('chart-acceptance').data"
                    f".reduce((n, t) => n + (t.x ? t.x.length : 0), 0) > {counts[-1]}",
                    timeout=15_000)
                counts.append(_points(page, "acceptance"))
            assert counts[0] < counts[1] < counts[2], counts
            # each live step reached the screen within 2 s of the coordinator recording it
            lags = page.evaluate("window.nnmdStepLags")
            assert lags and max(lags) < 2.0, lags
            expect(page.locator("#state")).to_have_text("running")
            expect(page.locator("#chains tbody tr")).to_have_count(2)
            assert _points(page, "energy") > 0 and _points(page, "labels") > 0
            expect(page.locator("#export-nnmd")).not_to_have_class(re.compile("disabled"),
                                                                   timeout=30_000)
            page.wait_for_timeout(1500)  # a few more steps in the screenshot
            page.screenshot(path=str(ARTIFACTS / "console-campaign-full.png"), full_page=True)
            shot = ARTIFACTS / "console-campaign.png"
            page.screenshot(path=str(shot))  # the first screen: summary, chains, charts

            # 6. stop it with the button
            state = page.inner_text("#state")
            assert state == "running", (state, page.inner_text("#events")[:2000])
            page.click("#stop-button")
            expect(page.locator("#state")).to_have_text(re.compile("stopping|stopped"))
            expect(page.locator("#state")).to_have_text("stopped", timeout=60_000)
            expect(page.locator("#events")).to_contain_text("stopped")

            # 7. download the model and load it
            with page.expect_download() as info:
                page.click("#export-nnmd")
            download = info.value
            assert download.suggested_filename.endswith(".nnmd")
            model = tmp_path / download.suggested_filename
            download.save_as(model)
            pot = Potential.load(model)
            assert pot.species == ("Cu",)

            # the list shows it, linked to its page
            page.goto(console + "/")
            row = page.locator(f'#campaigns tr[data-campaign="{name}"]')
            expect(row).to_contain_text("stopped")
            expect(row.locator("a")).to_have_attribute("href", f"/campaigns/{name}")
            page.screenshot(path=str(ARTIFACTS / "console-list.png"))
            elapsed = time.monotonic() - t_start
            page.close()
        finally:
            browser.close()

    assert not blocked, f"the console asked for outside resources: {blocked}"
    assert not errors, errors
    print(f"\nconsole: campaign started, watched, stopped, exported in {elapsed:.1f} s; "
          f"acceptance points {counts}; step-to-screen lag max {max(lags):.2f} s over "
          f"{len(lags)} steps; screenshots in {ARTIFACTS}")
    docs_png = ROOT / "docs" / "console.png"
    if os.environ.get("NNMD_UPDATE_DOCS_SCREENSHOT") == "1" or not docs_png.exists():
        shutil.copyfile(shot, docs_png)
