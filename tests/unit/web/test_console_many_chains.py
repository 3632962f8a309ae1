"""The campaign page at 1,000 chains (a fake Client serving a 1,000-chain history):
the aggregate over all chains, the per-chain table and traces of one page of 20,
paging fetches the next 20, and the browser console stays clean. Skips without
chromium or Playwright."""

from __future__ import annotations

import asyncio
import shutil
import threading

import pytest

from orchestrator.web.app import make_app, start_console

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
N_CHAINS, STEPS = 1000, 300


class ManyChains:
    def history(self, campaign, *, offset=0, limit=20, max_points=2000):
        names = [f"chain{i:04d}" for i in range(N_CHAINS)]
        steps = list(range(1, STEPS + 1))
        return {"campaign": campaign, "state": "running", "message": "", "settings": {"steps": 500},
                "chain_names": names, "n_chains": N_CHAINS,
                "chains": {n: {"step": steps, "energy_ref": [-0.1 + 1e-4 * s for s in steps],
                               "volume": [376.0] * STEPS, "accepted": [1] * STEPS,
                               "acceptance_rate": [0.5] * STEPS, "n_md_steps": [10] * STEPS,
                               "phase": ["production"] * STEPS}
                           for n in names[offset:offset + limit]},
                "aggregate": {"step": steps, "acceptance_mean": [0.5] * STEPS,
                              "acceptance_min": [0.2] * STEPS, "acceptance_max": [0.8] * STEPS,
                              "n_md_mean": [10.0] * STEPS, "energy_ref_mean": [-0.1] * STEPS,
                              "volume_mean": [376.0] * STEPS, "n_chains": [N_CHAINS] * STEPS},
                "labels": {"time": [1.7e9 + s for s in steps], "n_labels": steps},
                "models": [], "events": []}

    def watch(self, campaign):  # like Client.watch: an iterable with cancel()
        class Stream(list):
            def cancel(self):
                pass
        return Stream([{"kind": "state", "state": "running", "message": "", "time": 1.7e9}])

    def close(self):
        pass


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install.sh)")
def test_a_thousand_chains_are_aggregated_and_paged():
    sync_api = pytest.importorskip("playwright.sync_api")
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder = {}

    def serve():
        asyncio.set_event_loop(loop)
        app = make_app(ManyChains, None, no_auth=True)
        holder["runner"], holder["port"] = loop.run_until_complete(start_console(app, port=0))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(30)
    errors = []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.on("console", lambda m: m.type == "error" and errors.append(m.text))
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"http://127.0.0.1:{holder['port']}/campaigns/big")
                expect = sync_api.expect
                expect(page.locator("#page-info")).to_have_text(
                    "chains 1–20 of 1000 (page 1 of 50)")
                expect(page.locator("#chains tbody tr")).to_have_count(20)
                page.wait_for_function("() => document.getElementById('chart-acceptance').data")
                # the band and mean over all chains + one trace per chain of the page
                assert page.evaluate(
                    "document.getElementById('chart-acceptance').data.length") == 3 + 20
                page.click("#page-next")
                expect(page.locator("#page-info")).to_have_text(
                    "chains 21–40 of 1000 (page 2 of 50)")
                expect(page.locator("#chains tbody tr").first).to_have_attribute(
                    "data-chain", "chain0020")
            finally:
                browser.close()
    finally:
        asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    assert not errors, errors
