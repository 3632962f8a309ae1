"""The Python client drives campaigns on a separately started coordinator process.

`nnmd serve coordinator` runs as its own process (with a token); the client starts a
campaign, watches its events to the end, reads its status, exports its model, and gets
standard status codes for what is wrong: INVALID_ARGUMENT naming the spec field,
NOT_FOUND for an unknown campaign, UNAUTHENTICATED without the token.
"""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import pytest

from nnmd_kernels import Potential
from orchestrator.client import Client
from services.runtime.errors import error_detail
from services.store import Store
from tests.served import stop_served

TOKEN = "coordinator-test-token"


@pytest.fixture
def coordinator(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("NNMD_TOKEN", "RAY_ADDRESS")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "serve", "coordinator", "--port", "0",
         "--token-file", str(token_file), "--store", str(tmp_path / "default-store"),
         "--executor", "local", "--upload-dir", str(tmp_path / "uploads")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, proc.stderr.read()
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        stop_served(proc, TOKEN)


def test_client_drives_a_campaign(coordinator, tiny_spec, tmp_path):
    with Client(coordinator, token=TOKEN) as client:
        cid = client.start(tiny_spec)
        assert cid == "tiny"
        assert client.start(tiny_spec) == cid  # running already: the same campaign
        events = list(client.watch(cid, timeout_s=600))
        kinds = [e["kind"] for e in events]
        assert kinds[-1] == "state" and events[-1]["state"] == "finished", events[-3:]
        steps = [e for e in events if e["kind"] == "step"]
        assert sorted((e["chain"], e["step"]) for e in steps) == \
            [(f"chain00{c}", s) for c in range(2) for s in (1, 2, 3)]
        assert "model_published" in kinds  # re-trained after 4 chain labels

        st = client.status(cid)
        assert st["state"] == "finished"
        assert [c["step"] for c in st["chains"]] == [3, 3]
        assert st["model_version"] >= 2
        batch = Store(tiny_spec["store"], read_only=True).read(campaign="tiny")
        hmc = batch.arrays["source"] == "hmc"
        assert st["n_labels"] == int(hmc.sum()) == 6  # EMT never fails: one label a step
        keys = list(zip(batch.arrays["chain"][hmc], batch.arrays["step"][hmc]))
        assert len(set(keys)) == len(keys)

        out = client.export_model(cid, tmp_path / "exported.nnmd")
        pot = Potential.load(out)
        assert pot.species == ("Cu",)
        sannp = client.export_model(cid, tmp_path / "ffield.sannp", format="sannp")
        assert os.path.getsize(sannp) > 0

        # a second start of the finished campaign resumes it: nothing more to do, same labels
        assert client.start(tiny_spec) == cid
        events = list(client.watch(cid, timeout_s=600))
        assert events[-1]["state"] == "finished"
        again = Store(tiny_spec["store"], read_only=True).read(campaign="tiny")
        assert int((again.arrays["source"] == "hmc").sum()) == 6


def test_stop_and_errors(coordinator, tiny_spec):
    with Client(coordinator, token=TOKEN) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.start({**tiny_spec, "chains": 0})
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_detail(info.value).field == "config.chains"
        with pytest.raises(grpc.RpcError) as info:
            client.start({**tiny_spec, "temprature": 3})
        assert error_detail(info.value).field == "config.temprature"
        assert "temperature" in info.value.details()

        # specs that would run programs or code of the client's choosing on the server
        for bad, field in (({"reference": "ase:os:system"}, "config.reference"),
                           ({"qe": {"pw": "/bin/sh"}}, "config.qe.pw"),
                           ({"qe": {"mpirun": "/bin/sh"}}, "config.qe.mpirun")):
            with pytest.raises(grpc.RpcError) as info:
                client.start({**tiny_spec, **bad})
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_detail(info.value).field == field
            assert "--allow-code" in error_detail(info.value).hint

        for call in (client.status, client.stop, lambda c: list(client.watch(c))):
            with pytest.raises(grpc.RpcError) as info:
                call("no-such-campaign")
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:
            client.status("../../etc")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        cid = client.start({**tiny_spec, "name": "long", "steps": 500})
        for ev in client.watch(cid, timeout_s=600):
            if ev["kind"] == "step":
                break
        assert client.stop(cid) in ("stopping", "stopped")
        events = list(client.watch(cid, timeout_s=300))
        assert events[-1]["state"] == "stopped"
        st = client.status(cid)
        assert st["state"] == "stopped" and all(c["step"] < 500 for c in st["chains"])

    with Client(coordinator, token="wrong") as bad, pytest.raises(grpc.RpcError) as info:
        bad.status("tiny")
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_console_rpcs(coordinator, tiny_spec, tmp_path):
    """What a client sharing no disk with the coordinator needs (the web console): inputs
    uploaded with Start, validation alone, the campaign list, the traces so far, the
    model and report as bytes, and step events that carry energy and volume."""
    import io
    import json
    import zipfile

    structure = (tmp_path / "cu.xyz").read_bytes()
    spec = {**tiny_spec, "name": "uploaded", "structure": "upload-cu.xyz"}
    with Client(coordinator, token=TOKEN) as client:
        # validation only: a bad field is named, a good spec starts nothing
        with pytest.raises(grpc.RpcError) as info:
            client.start({**spec, "temperature": -5}, files={"upload-cu.xyz": structure},
                         validate_only=True)
        assert error_detail(info.value).field == "config.temperature"
        with pytest.raises(grpc.RpcError) as info:
            client.start(spec, validate_only=True)  # the file was not sent
        assert error_detail(info.value).field == "config.structure"
        with pytest.raises(grpc.RpcError) as info:
            client.start(spec, files={"../cu.xyz": structure})
        assert error_detail(info.value).field == "files[0].name"
        assert client.start(spec, files={"upload-cu.xyz": structure},
                            validate_only=True) == "uploaded"
        assert "uploaded" not in [c["campaign"] for c in client.list()]

        cid = client.start(spec, files={"upload-cu.xyz": structure})
        events = list(client.watch(cid, timeout_s=600))
        assert events[-1]["state"] == "finished", events[-3:]
        steps = [e for e in events if e["kind"] == "step"]
        assert all(e["energy_ref"] is not None and e["volume"] > 0 for e in steps)
        assert all(0.0 <= e["acceptance_rate"] <= 1.0 for e in steps)
        assert max(e["n_labels"] for e in steps) == 6
        published = [e for e in events if e["kind"] == "model_published"]
        assert published and published[-1]["energy_rmse_mev_per_atom"] > 0
        assert any(e["kind"] == "log" and "training" in e["message"] for e in events)

        rows = {c["campaign"]: c for c in client.list()}
        row = rows["uploaded"]
        assert (row["state"], row["n_chains"], row["steps_done"], row["steps_total"],
                row["n_labels"], row["reference"]) == ("finished", 2, 6, 6, 6, "emt")
        assert 0.0 <= row["acceptance"] <= 1.0 and row["model_version"] >= 2

        h = client.history(cid, limit=1, max_points=2)
        assert h["state"] == "finished" and h["n_chains"] == 2
        assert h["chain_names"] == ["chain000", "chain001"] and list(h["chains"]) == ["chain000"]
        trace = h["chains"]["chain000"]
        assert trace["step"] == [1, 3]  # thinned to 2 points, the last one kept
        assert len(trace["energy_ref"]) == len(trace["volume"]) == 2
        assert h["aggregate"]["step"] == [1, 3] and h["aggregate"]["n_chains"] == [2, 2]
        assert h["labels"]["n_labels"][-1] == 6
        assert h["settings"]["temperature"] == 600.0
        assert h["models"] and h["models"][-1]["history"]
        assert h["models"][-1]["energy_rmse_mev_per_atom"] > 0
        assert any("training" in e.get("message", "") for e in h["events"])
        json.dumps(h, allow_nan=False)

        name, data = client.export_bytes(cid)
        assert name == "model.nnmd"
        (tmp_path / name).write_bytes(data)
        assert Potential.load(tmp_path / name).species == ("Cu",)
        name, data = client.export_bytes(cid, "sannp")
        assert name == "ffield.sannp" and data
        name, data = client.export_bytes(cid, "lammps")
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            assert sorted(z.namelist()) == ["in.nnmd", "model.nnmd", "nnmd.model"]
            assert "pair_coeff * * nnmd.model Cu" in z.read("in.nnmd").decode()
        html = client.report_html(cid)
        assert html.startswith(b"<!") or b"<html" in html[:500]
        for call in (client.history, client.report_html, client.export_bytes):
            with pytest.raises(grpc.RpcError) as info:
                call("no-such-campaign")
            assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_history_before_the_first_step(tmp_path, tiny_spec):
    """A campaign whose store holds its settings but no step yet: empty traces, no error."""
    from orchestrator.coordinator.history import campaign_history
    from orchestrator.slhmc import CAMPAIGN_DOC

    with Store(str(tmp_path / "s")).writer() as w:
        w.write_checkpoint("fresh", CAMPAIGN_DOC, {"config": {"chains": 2, "steps": 3}})
    h = campaign_history(str(tmp_path / "s"), "fresh", state="running")
    assert h["n_chains"] == 0 and h["chains"] == {} and h["aggregate"]["step"] == []
    assert h["labels"] == {"time": [], "n_labels": []} and h["models"] == []
    assert campaign_history(str(tmp_path / "s"), "other") is None
    # not running here: its state comes from the store (no chain at its last step)
    assert campaign_history(str(tmp_path / "s"), "fresh")["state"] == "stopped"
