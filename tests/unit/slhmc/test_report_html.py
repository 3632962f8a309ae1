"""report.html: settings, wall time by phase, production statistics with error bars,
held-out errors per model version, legends, parity by source; one self-contained file.

With Debian's chromium installed (scripts/install.sh), the page is rendered headless
and a full-page screenshot is written to artifacts/report.png (or $NNMD_ARTIFACTS).
"""

import os
import re
import shutil
from pathlib import Path

import pytest
from ase.build import bulk

from orchestrator.commands.slhmc import write_html
from orchestrator.slhmc import Campaign, CampaignConfig
from services.store import Store
from tests.unit.slhmc.conftest import TINY_TRAIN

ARTIFACTS = Path(os.environ.get("NNMD_ARTIFACTS", Path(__file__).parents[3] / "artifacts"))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.write(d / "cu.xyz")
    cfg = CampaignConfig(reference="emt", structure=str(d / "cu.xyz"), campaign="r", chains=4,
                         steps=16, temperature=500.0, md_steps=6, md_steps_min=2, dt=2.0,
                         retrain_every=12, retrain_epochs=4, bootstrap_steps=8,
                         bootstrap_dt=2.0, train=TINY_TRAIN, burn_in=8,
                         holdout_fraction=0.2)
    url = str(d / "store")
    camp = Campaign(cfg, url, log=lambda m: None)
    try:
        camp.run(atoms)
    finally:
        camp.close()
    out = d / "report.html"
    write_html(url, out, "r")
    return url, out


def test_report_has_the_sections_and_is_self_contained(report):
    url, out = report
    html = out.read_text()
    for section in ("<h2>Settings</h2>", "Wall time by phase", "Production statistics",
                    "held-out", "reference</th><td>emt", "burn-in</th><td>8",
                    "on failure</th><td>stop"):
        assert section in html, section
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", html)  # nothing fetched
    # every model version after the first few labels was scored on held-out labels
    from orchestrator.slhmc import campaign_models

    metas = [m for _, m in campaign_models(Store(url, read_only=True), "r")]
    assert all("holdout" in m for m in metas)
    assert any(m["holdout"]["n"] > 0 and m["holdout"]["energy_rmse_mev_per_atom"] >= 0
               for m in metas)
    # the production row has error bars
    assert re.search(r"<td>[-0-9.]+ &plusmn; [0-9.]+</td>", html)


def test_held_out_labels_are_never_trained_on(report):
    from orchestrator.slhmc import is_held_out
    from services.trainer.data import read_store

    url, _ = report
    names = [s.name for s in read_store(url, "r")]
    held = [n for n in names if is_held_out(n, 0.2)]
    assert 0 < len(held) < len(names)
    # the rule is a pure function of the label's id: the same labels every re-training
    assert [is_held_out(n, 0.2) for n in names] == [is_held_out(n, 0.2) for n in names]
    assert max(m["n_structures"] for m in _metas(url)) <= len(names) - len(held)


def _metas(url):
    from orchestrator.slhmc import campaign_models

    return [m for _, m in campaign_models(Store(url, read_only=True), "r")]


def test_report_screenshot_in_chromium(report):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/install.sh installs it as root)")
    sync_api = pytest.importorskip("playwright.sync_api")
    _, out = report
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(out.resolve().as_uri())
            text = page.inner_text("body")
            for section in ("Settings", "Wall time by phase", "Production statistics",
                            "held-out"):
                assert section in text
            # every inlined plot decoded and has a size
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
            assert widths and all(w > 100 for w in widths)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 20_000
    print(f"\nreport.html screenshot: {shot}")


def test_report_piped_into_head_is_clean(report):
    """`nnmd report ... | head -1`: the header line, and no BrokenPipeError traceback."""
    import subprocess
    import sys

    url, _ = report
    root = Path(__file__).parents[3]
    for fmt in ("csv", "stats"):
        out = subprocess.run(
            ["bash", "-c", f"{sys.executable} -m orchestrator.cli report --store {url} "
                           f"--format {fmt} | head -1"],
            capture_output=True, text=True, cwd=root, timeout=120)
        assert out.stdout.strip() in ("campaign,chain,step,phase,move,status,accepted,"
                                      "energy_ref,energy_proposal,n_md_steps,model_version,"
                                      "volume", "[")
        assert out.stderr == "", out.stderr
