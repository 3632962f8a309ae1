"""Learning phase, then production: frozen kernels, phases in every record, statistics
from production only; the failure policy (stop a chain / reject, biased); sampling specs.

EMT copper with tiny networks, so that the campaigns run in seconds.
"""

import asyncio
import csv
import io
import json

import numpy as np
import pytest
from ase.build import bulk

from orchestrator.commands.slhmc import production_stats, report_rows, write_csv
from orchestrator.coordinator.runner import status_from_store
from orchestrator.coordinator.spec import SpecError, parse_spec
from orchestrator.slhmc import Campaign, CampaignConfig, LocalReference, chain_name
from services.reference.types import Failure, FailureReason
from services.store import Store
from tests.unit.slhmc.conftest import TINY_TRAIN


def config(path, **kw):
    base = dict(reference="emt", structure=path, campaign="p", chains=2, steps=24,
                temperature=500.0, md_steps=6, md_steps_min=2, md_steps_max=40, dt=2.0,
                retrain_every=6, retrain_epochs=4, bootstrap_steps=6, bootstrap_dt=2.0,
                train=TINY_TRAIN)
    return CampaignConfig(**{**base, **kw})


def run(cfg, url, atoms, reference=None):
    camp = Campaign(cfg, url, log=lambda m: None)
    try:
        if reference is None:
            return camp.run(atoms)
        return asyncio.run(camp.run_async(atoms, reference=reference(camp)))
    finally:
        camp.close()


def test_burn_in_then_a_frozen_kernel(cu, tmp_path):
    atoms, path = cu
    url = str(tmp_path / "store")
    summary = run(config(path, burn_in=10), url, atoms)
    rows = report_rows(url, "p")
    assert len(rows) == 48
    for c in range(2):
        rs = [r for r in rows if r["chain"] == chain_name(c)]
        assert [r["phase"] for r in rs] == ["burn_in"] * 10 + ["production"] * 14
        prod = [r for r in rs if r["phase"] == "production"]
        # one model version and one trajectory length for the whole production phase
        assert len({r["model_version"] for r in prod}) == 1
        assert len({r["n_md_steps"] for r in prod}) == 1
        doc = Store(url, read_only=True).read_checkpoint("p", chain_name(c))
        assert doc["production_model"] == prod[0]["model_version"]
        assert doc["production_from"] == 11
    # the burn-in re-trained (every 6 labels), production did not: the versions used in
    # production are at most the last one trained during the burn-in
    burn_versions = {r["model_version"] for r in rows if r["phase"] == "burn_in"}
    assert len(burn_versions) >= 2 and summary["retrainings"] >= 2
    assert max(r["model_version"] for r in rows if r["phase"] == "production") <= \
        max(burn_versions) + 1
    # the CSV has the phase column
    out = tmp_path / "r.csv"
    write_csv(url, out, "p")
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert table[0].keys() >= {"phase", "step", "chain"}
    assert {r["phase"] for r in table} == {"burn_in", "production"}
    # statistics from the production phase only, with error bars
    (st,) = production_stats(url, "p")
    assert st["steps_production"] == 28 and st["steps_burn_in"] == 20
    prod_e = [r["energy_ref"] for r in rows if r["phase"] == "production"]
    assert st["energy_ref_ev"]["mean"] == pytest.approx(np.mean(prod_e))
    assert st["energy_ref_ev"]["n"] == 28 and st["energy_ref_ev"]["error"] > 0
    prod_acc = [r["accepted"] for r in rows if r["phase"] == "production"]
    assert st["acceptance"]["mean"] == pytest.approx(np.mean(prod_acc))
    assert len(st["model_versions"]) <= 2  # one pinned version per chain
    json.dumps(st)  # plain JSON
    # the burn-in is fixed when the campaign resumes
    with pytest.raises(ValueError, match="burn_in"):
        run(config(path, burn_in=12, steps=26), url, atoms)


def test_without_burn_in_every_step_learns_and_stats_say_so(cu, tmp_path):
    atoms, path = cu
    url = str(tmp_path / "store")
    run(config(path, steps=4, retrain_every=0), url, atoms)
    assert {r["phase"] for r in report_rows(url, "p")} == {"burn_in"}
    (st,) = production_stats(url, "p")
    assert st["steps_production"] == 0 and "--burn-in" in st["note"]


class FailsForOneChain:
    """Real EMT for every chain but one; that one's reference fails from step 3 on, as
    a pw.x that never converges there would (after its own retries)."""

    def __init__(self, camp, chain="chain001", from_step=3):
        self.inner = LocalReference(camp.backends)
        self.chain, self.from_step = chain, from_step
        self.failed_calls = 0

    async def compute(self, atoms):
        camp, chain, step = atoms.info["nnmd_id"].split("/")
        if chain == self.chain and int(step) >= self.from_step:
            self.failed_calls += 1
            return Failure(FailureReason.NOT_CONVERGED, "SCF not converged after 3 attempts")
        return await self.inner.compute(atoms)

    def close(self):
        self.inner.close()


def _labels_of(url, chain):
    a = Store(url, read_only=True).read(campaign="p").arrays
    return sorted(a["step"][(a["source"] == "hmc") & (a["chain"] == chain)].tolist())


def test_a_chain_whose_reference_keeps_failing_stops_as_failed(cu, tmp_path):
    atoms, path = cu
    url = str(tmp_path / "store")
    refs = []

    def make(camp):
        refs.append(FailsForOneChain(camp))
        return refs[-1]

    summary = run(config(path, steps=8, retrain_every=0), url, atoms, reference=make)
    assert refs[0].failed_calls == 1  # stopped at once, not retried for ever
    assert summary["steps"] == {"chain000": 8, "chain001": 2}
    assert "not_converged" in summary["failed_chains"]["chain001"]
    assert _labels_of(url, "chain001") == [1, 2]  # the failed structure is stored nowhere
    assert _labels_of(url, "chain000") == list(range(1, 9))
    st = status_from_store(url, "p")
    chains = {c["chain"]: c for c in st["chains"]}
    assert chains["chain001"]["state"] == "failed"
    assert "SCF not converged" in chains["chain001"]["failure"]
    assert chains["chain000"]["state"] == "finished" and st["state"] == "finished"
    (stats,) = production_stats(url, "p")
    assert "chain001" in stats["failed_chains"]
    # a resumed campaign leaves the failed chain as it is
    summary = run(config(path, steps=9, retrain_every=0), url, atoms, reference=make)
    assert summary["steps"] == {"chain000": 9, "chain001": 2}
    assert refs[1].failed_calls == 0


def test_on_failure_reject_goes_on_and_reports_the_bias(cu, tmp_path):
    atoms, path = cu
    url = str(tmp_path / "store")
    summary = run(config(path, steps=6, retrain_every=0, on_failure="reject"), url, atoms,
                  reference=FailsForOneChain)
    assert summary["steps"] == {"chain000": 6, "chain001": 6}
    assert summary["failed_chains"] == {} and summary["rejected_failures"] == 4
    assert "biased" in summary["bias_warning"]
    rows = [r for r in report_rows(url, "p") if r["chain"] == "chain001"]
    assert [r["status"] for r in rows][2:] == ["failed"] * 4
    assert not any(r["accepted"] for r in rows[2:])
    (stats,) = production_stats(url, "p")
    assert "biased" in stats["bias_warning"]
    assert _labels_of(url, "chain001") == [1, 2]


@pytest.mark.parametrize("sampling, field", [
    ({"burn_in": -3}, "sampling.burn_in"),
    ({"burn_in": 2.5}, "sampling.burn_in"),
    ({"cell_moves": "shear"}, "sampling.cell_moves"),
    ({"cel_moves": "anisotropic"}, "sampling.cel_moves"),
    ({"on_failure": "retry"}, "sampling.on_failure"),
    ({"volume_every": 1}, "spec"),
    ({"adapt": "yes"}, "sampling.adapt"),
])
def test_sampling_spec_errors_name_the_field(cu, sampling, field):
    _, path = cu
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "x", "reference": "emt", "structure": path, "ensemble": "npt",
                    "sampling": sampling})
    assert info.value.field == field or field == "spec"


def test_sampling_spec_reaches_the_kernel(cu):
    _, path = cu
    spec = parse_spec({"name": "x", "reference": "emt", "structure": path, "ensemble": "npt",
                       "pressure": "2 GPa", "sampling": {
                           "burn_in": 50, "cell_moves": "triclinic", "volume_every": 3,
                           "adapt": False, "md_steps_jitter": 0.2, "on_failure": "reject"}})
    k = spec.config.kernel_config(0)
    assert (k.burn_in, k.cell_moves, k.volume_every, k.adapt, k.n_md_jitter) == \
        (50, "triclinic", 3, False, 0.2)
    assert spec.config.on_failure == "reject" and spec.config.pressure_gpa == 2.0
    with pytest.raises(SpecError, match="under sampling"):
        parse_spec({"name": "x", "reference": "emt", "structure": path, "burn_in": 5})
    with pytest.raises(SpecError, match="GPa"):
        parse_spec({"name": "x", "reference": "emt", "structure": path, "pressure": "10 kbar"})


def test_anisotropic_npt_campaign_relaxes_c_over_a(tmp_path):
    """The whole campaign path (bootstrap, model, chains, store) with anisotropic cell
    moves: EMT copper strained 5% along c ends cubic, the reference's own shape."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    cell = atoms.cell[:].copy()
    cell[2] *= 1.05
    atoms.set_cell(cell, scale_atoms=True)
    path = tmp_path / "strained.xyz"
    atoms.write(path)
    url = str(tmp_path / "store")
    cfg = config(str(path), steps=60, temperature=150.0, ensemble="npt", retrain_every=0,
                 cell_moves="anisotropic", volume_step=0.01, burn_in=20)
    summary = run(cfg, url, atoms)
    assert summary["failed_chains"] == {}
    store = Store(url, read_only=True)
    ratios = []
    for c in range(2):
        h = np.array(store.read_checkpoint("p", chain_name(c))["state"]["cell"])
        lengths = np.linalg.norm(h, axis=1)
        ratios.append(lengths[2] / np.sqrt(lengths[0] * lengths[1]))
    assert abs(np.mean(ratios) - 1.0) < 0.012, ratios


def test_cli_refuses_bar_and_bad_burn_in(tmp_path, capsys):
    from orchestrator.cli import main

    store = tmp_path / "s"
    assert main(["slhmc", "--store", str(store), "--ensemble", "npt",
                 "--pressure", "1000bar"]) == 2
    err = capsys.readouterr().err
    assert "--pressure" in err and "GPa" in err and "Traceback" not in err
    assert main(["slhmc", "--store", str(store), "--burn-in", "-2"]) == 2
    assert "burn_in" in capsys.readouterr().err
    assert not store.exists()  # nothing was created by a refused command
