"""Fuzzing every gRPC method of every registered service (hypothesis).

Services and methods come from ``services.runtime.registry`` and the protobuf
service descriptors, so a new service or method is fuzzed without editing this
file. Three kinds of request per method:

- typed: random well-typed messages derived recursively from the message
  descriptors (unicode and path-like strings, huge/negative ints, NaN/inf/-0.0,
  repeated fields of wrong lengths, unknown enum values, empty messages), mixed
  with near-valid structures and the fixture's real store, model and settings so
  that the calls get past the first checks;
- raw: random bytes as the request (malformed protobuf);
- oversize: requests above the server's max_message_bytes (1 MiB here).

Every call must end within DEADLINE_S with a status that is not UNKNOWN,
INTERNAL or UNIMPLEMENTED (a client-side DEADLINE_EXCEEDED is a hung call);
INVALID_ARGUMENT must carry an ErrorDetail naming a field; the server must still
answer a health check afterwards.

NNMD_FUZZ_EXAMPLES (default 300) is the total number of requests across all
methods; NNMD_FUZZ_EXAMPLES=10000 is the issue's acceptance run
(``benchmarks/fuzz.py`` runs it and prints the table). NNMD_FUZZ_REPORT=FILE
writes the per-service status counts as JSON.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import os
import threading
import time
from collections import Counter, defaultdict

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

hypothesis = pytest.importorskip("hypothesis")
from google.protobuf import descriptor_pool, message_factory  # noqa: E402
from google.protobuf.descriptor import FieldDescriptor as FD  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from services.runtime import registry  # noqa: E402
from services.runtime.errors import error_detail  # noqa: E402
from services.runtime.server import ServerConfig, start_service  # noqa: E402

TOKEN = "fuzz-token-7f3c9a"
MAX_MESSAGE_BYTES = 1 << 20
DEADLINE_S = 10.0
TOTAL = int(os.environ.get("NNMD_FUZZ_EXAMPLES", "300"))
SHARES = {"typed": 0.72, "raw": 0.24, "oversize": 0.04}
STREAM_READ = 3  # streaming responses: read this many messages, then cancel
BAD_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED}

# ---------------------------------------------------------------- discovery


def _discover():
    """(name, spec) of every registered service that can be imported here."""
    for module in ("orchestrator.commands.serve", "orchestrator.coordinator_service"):
        try:  # the orchestrator layer makes the coordinator known
            importlib.import_module(module)
        except ImportError:
            pass
    found, skipped = [], {}
    for name in registry.names():
        try:
            found.append((name, registry.get(name)))
        except (ValueError, ImportError) as exc:
            skipped[name] = str(exc)
    return found, skipped


SERVICES, SKIPPED = _discover()


def _methods():
    pool = descriptor_pool.Default()
    out = []
    for name, spec in SERVICES:
        for full in spec.service_names:
            try:
                sd = pool.FindServiceByName(full)
            except KeyError:
                continue
            for m in sd.methods:
                out.append((name, full, m))
    return out


METHODS = _methods()
STATS: dict[str, Counter] = defaultdict(Counter)  # service -> status name -> count
HUNG: list[str] = []
CRASHES: list[str] = []


def _per_method(kind: str) -> int:
    return max(1, round(TOTAL * SHARES[kind] / max(1, len(METHODS))))


# ---------------------------------------------------------------- the fixture world


def _cu(repeat=1, rattle=0.05, seed=0):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(rattle, seed=seed)
    return atoms


class World:
    """A store root with a labelled store and a model, and every service served on it."""

    def __init__(self, root, token: str = TOKEN, max_message_bytes: int = MAX_MESSAGE_BYTES):
        from ase.calculators.emt import EMT

        from nnmd_kernels import Potential
        from services.runtime.convert import from_atoms
        from services.store.store import Provenance, Record, Store

        self.root = str(root)
        self.store = str(root / "data")
        self.empty = str(root / "empty")
        pot = Potential.random(["Cu"], seed=0, n_radial=4, n_angular=2, r_radial=4.0,
                               r_angular=3.5)
        model = root / "m.nnmd"
        pot.save(model)
        with Store(self.store).writer() as w:
            records = []
            for k in range(6):
                atoms = _cu(seed=k)
                atoms.calc = EMT()
                atoms.get_potential_energy()
                s, lab = from_atoms(atoms)
                records.append(Record(s, lab, Provenance(campaign="fuzz", chain="c0", step=k,
                                                         source="aimd")))
            w.append(records)
            w.publish_model(model.read_bytes(), {"note": "fuzz"})
        Store(self.empty).writer().close()
        self.options = {
            "reference": {"reference": "emt", "max_atoms": 32, "max_structures": 64,
                          "store_roots": [self.root]},
            "trainer": {"defaults": {"backend": "numpy", "max_epochs": 2, "warmup_epochs": 1,
                                     "hidden": [4], "descriptor": {"n_radial": 4, "n_angular": 2,
                                                                   "r_radial": 4.0,
                                                                   "r_angular": 3.5}},
                        "limits": {"max_epochs": 20, "max_models": 2, "max_hidden": 16,
                                   "max_layers": 3, "max_functions": 8},
                        "store_roots": [self.root]},
            "md": {"backend": "numpy", "max_atoms": 32, "max_steps": 40, "workers": 2,
                   "store_roots": [self.root]},
            "store": {"store_url": self.store, "store_roots": [self.root]},
        }
        self.servers: dict[str, Served] = {}
        self.failed: dict[str, str] = {}
        config = ServerConfig(token=token, max_message_bytes=max_message_bytes, grace_s=1.0)
        for name, _ in SERVICES:
            try:
                self.servers[name] = Served(name, self.options.get(name, {}), config)
            except Exception as exc:  # e.g. a service that needs options this test cannot know
                self.failed[name] = f"{type(exc).__name__}: {exc}"

    def strings(self):
        """Strings worth trying in any string field, besides random text."""
        return [
            "", self.store, self.empty, self.root, f"file://{self.store}", self.store + "/..",
            self.root + "/new-store", self.root + "/../outside", "../../etc", "../x", "/abs",
            "/etc/passwd", "a/../../b", "C:\\Windows", "a\\b", "nul\x00byte", "line\n",
            "x" * 5000, "memory://fuzz", "s3://bucket/key", "fuzz", "c0", "native", "lammps",
            "energy", "forces", "stress", "{}", "[]", "null", "{\"max_epochs\": 1}",
            "{\"max_epochs\": 1000000000}", "{\"n_models\": 100000}",
            "{\"hidden\": [100000, 100000]}", "{\"hidden\": []}", "{\"hidden\": [0]}",
            "{\"descriptor\": 5}", "{\"descriptor\": {\"n_radial\": 1000000}}",
            "{\"descriptor\": {\"n_radial\": -1}}", "{\"optimizer\": \"adam\"}",
            "{\"validation_fraction\": 0.99}", "{\"seed\": -1}", "{\"backend\": \"gpu\"}",
            "{\"max_epochs\": 1e400}", "{\"max_epochs\": NaN}", "\udcff".encode(
                "utf-8", "surrogatepass").decode("utf-8", "replace"), "e\u0301\u202e\ufeff",
        ]


class Served:
    """One service on its own event loop in a thread, with a sync client channel."""

    def __init__(self, name, options, config):
        self.name = name
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        try:
            self.running = asyncio.run_coroutine_threadsafe(
                start_service(name, options, config), self.loop).result(60)
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            raise
        self.address = f"127.0.0.1:{self.running.port}"
        # The client may send more than the server accepts (to test its limit).
        self.channel = grpc.insecure_channel(self.address, options=[
            ("grpc.max_send_message_length", 8 * MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", 8 * MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", 0)])
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def healthy(self) -> bool:
        try:
            r = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        except grpc.RpcError:
            return False
        return r.status == health_pb2.HealthCheckResponse.SERVING

    def stop(self):
        self.channel.close()
        try:
            asyncio.run_coroutine_threadsafe(self.running.stop(1.0), self.loop).result(60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("fuzz"))
    yield w
    for s in w.servers.values():
        s.stop()
    report = os.environ.get("NNMD_FUZZ_REPORT")
    if report:
        with open(report, "w") as f:
            json.dump({"stats": {k: dict(v) for k, v in STATS.items()}, "hung": HUNG,
                       "crashes": CRASHES, "skipped": {**SKIPPED, **w.failed},
                       "health": HEALTH}, f, indent=2)


HEALTH: dict[str, bool] = {}

# ---------------------------------------------------------------- strategies from descriptors

_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 300.0, 1e-300, 5e-324, 1e308, -1e308,
           math.nan, math.inf, -math.inf]
_INT_RANGES = {
    FD.TYPE_INT32: (-2**31, 2**31 - 1), FD.TYPE_SINT32: (-2**31, 2**31 - 1),
    FD.TYPE_SFIXED32: (-2**31, 2**31 - 1), FD.TYPE_INT64: (-2**63, 2**63 - 1),
    FD.TYPE_SINT64: (-2**63, 2**63 - 1), FD.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1), FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1), FD.TYPE_FIXED64: (0, 2**64 - 1),
}


def _repeated(f) -> bool:
    return f.is_repeated if hasattr(f, "is_repeated") else f.label == FD.LABEL_REPEATED


def _scalar(f, strings):
    t = f.type
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        width = 32 if t == FD.TYPE_FLOAT else 64
        return st.one_of(st.sampled_from(_FLOATS), st.floats(width=width),
                         st.floats(-10, 10, width=width))
    if t in _INT_RANGES:
        lo, hi = _INT_RANGES[t]
        special = [v for v in (0, 1, 2, 3, 5, 29, 64, 100, 999, -1, -999, lo, hi) if lo <= v <= hi]
        return st.one_of(st.sampled_from(special), st.integers(lo, hi), st.integers(0, 50))
    if t == FD.TYPE_BOOL:
        return st.booleans()
    if t == FD.TYPE_STRING:
        return st.one_of(st.sampled_from(strings), st.text(max_size=40),
                         st.text(alphabet="./\\-_a~\x00", max_size=20))
    if t == FD.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FD.TYPE_ENUM:
        numbers = [v.number for v in f.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.integers(-2**31, 2**31 - 1))
    raise AssertionError(f"field type {t} of {f.full_name}")


def _valid_structure(seed_st):
    """Near-valid Cu structures (with velocities), sometimes with one field broken."""
    from services.runtime.convert import from_atoms, structure_to_proto

    def build(args):
        seed, repeat, breakage, value = args
        atoms = _cu(repeat=repeat, seed=seed)
        atoms.set_velocities(np.random.default_rng(seed).normal(0, 0.05, (len(atoms), 3)))
        msg = structure_to_proto(from_atoms(atoms)[0])
        if breakage == "numbers":
            msg.numbers[0] = int(value)
        elif breakage == "positions":
            del msg.positions_angstrom[-1]
        elif breakage == "cell8":
            del msg.cell_angstrom[-1]
        elif breakage == "nan":
            msg.positions_angstrom[1] = math.nan
        elif breakage == "singular":
            msg.cell_angstrom[:] = [1, 0, 0, 2, 0, 0, 0, 0, 1]
        elif breakage == "novelocity":
            del msg.velocities_angstrom_per_fs[:]
        elif breakage == "overlap":
            msg.positions_angstrom[3:6] = msg.positions_angstrom[0:3]
        elif breakage == "big":
            atoms = _cu(repeat=3, seed=seed)  # 108 atoms: above the servers' max_atoms
            msg = structure_to_proto(from_atoms(atoms)[0])
        return msg

    return st.tuples(seed_st, st.sampled_from([1, 1, 2]),
                     st.sampled_from([None, None, None, "numbers", "positions", "cell8", "nan",
                                      "singular", "novelocity", "overlap", "big"]),
                     st.sampled_from([0, -1, 999, 118, 119, 1, 79])).map(build)


class Strategies:
    def __init__(self, world: World):
        self.strings = world.strings()
        self.world = world
        self._cache = {}

    def message(self, desc, depth=0):
        key = (desc.full_name, depth)
        if key in self._cache:
            return self._cache[key]
        cls = message_factory.GetMessageClass(desc)
        if depth > 4:
            return st.just(cls())
        fields = {f.name: self.field(f, depth) for f in desc.fields}

        def build(values):
            msg = cls()
            for name, value in values.items():
                f = desc.fields_by_name[name]
                if f.message_type is not None and f.message_type.GetOptions().map_entry:
                    target = getattr(msg, name)
                    for k, v in value.items():
                        if hasattr(v, "CopyFrom"):
                            target[k].CopyFrom(v)
                        else:
                            target[k] = v
                elif _repeated(f):
                    target = getattr(msg, name)
                    if f.message_type is not None:
                        for v in value:
                            target.add().CopyFrom(v)
                    else:
                        target.extend(value)
                elif f.message_type is not None:
                    getattr(msg, name).CopyFrom(value)
                else:
                    setattr(msg, name, value)
            return msg

        generic = st.fixed_dictionaries({}, optional=fields).map(build)
        out = generic
        if desc.full_name == "nnmd.v1.Structure":
            out = st.one_of(_valid_structure(st.integers(0, 1000)), generic)
        elif desc.full_name == "nnmd.v1.StoreRef":
            out = st.one_of(st.sampled_from([self.world.store, self.world.empty]).map(
                lambda u: cls(url=u)), generic)
        self._cache[key] = out
        return out

    def field(self, f, depth):
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            kf, vf = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            return st.dictionaries(self.field(kf, depth + 1), self.field(vf, depth + 1),
                                   max_size=3)
        elem = (self.message(f.message_type, depth + 1) if f.message_type is not None
                else _scalar(f, self.strings))
        if _repeated(f):
            size = 3 if f.message_type is not None else 14
            return st.lists(elem, max_size=size)
        return elem


# ---------------------------------------------------------------- calling


def call(served: Served, service: str, method, payload: bytes, metadata=None):
    """Sends ``payload`` (bytes) to the method; returns (code, rpc_error or None)."""
    path = f"/{service}/{method.name}"
    md = metadata if metadata is not None else (("authorization", f"Bearer {TOKEN}"),)
    ch = served.channel
    try:
        if method.client_streaming and method.server_streaming:
            it = ch.stream_stream(path)(iter([payload]), timeout=DEADLINE_S, metadata=md)
        elif method.server_streaming:
            it = ch.unary_stream(path)(payload, timeout=DEADLINE_S, metadata=md)
        elif method.client_streaming:
            ch.stream_unary(path)(iter([payload]), timeout=DEADLINE_S, metadata=md)
            return grpc.StatusCode.OK, None
        else:
            ch.unary_unary(path)(payload, timeout=DEADLINE_S, metadata=md)
            return grpc.StatusCode.OK, None
        for n, _ in enumerate(it, 1):
            if n >= STREAM_READ:
                it.cancel()
                return grpc.StatusCode.CANCELLED, None
        return grpc.StatusCode.OK, None
    except grpc.RpcError as err:
        return err.code(), err


def check(world: World, name: str, service: str, method, payload: bytes, kind: str):
    served = world.servers[name]
    t0 = time.monotonic()
    code, err = call(served, service, method, payload)
    label = f"{service}/{method.name} ({kind}, {len(payload)} bytes)"
    STATS[name][code.name] += 1
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        HUNG.append(label)
        raise AssertionError(f"hung call: {label} took {time.monotonic() - t0:.1f} s")
    if code in BAD_CODES:
        CRASHES.append(f"{label}: {code.name} {err.details() if err else ''}")
        raise AssertionError(f"{label}: {code.name}: {err.details() if err else ''}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        detail = error_detail(err)
        assert detail is not None and detail.field, (
            f"{label}: INVALID_ARGUMENT without an ErrorDetail naming a field: {err.details()}")
    ok = served.healthy()
    HEALTH[name] = ok
    assert ok, f"{name}: health check fails after {label}"
    return code


def _ids(m):
    return f"{m[0]}:{m[2].name}"


@pytest.fixture(scope="module")
def strategies(world):
    return Strategies(world)


def _served(world, name):
    if name not in world.servers:
        pytest.skip(f"{name} cannot be served here: {world.failed.get(name)}")
    return world.servers[name]


_SETTINGS = dict(deadline=None, database=None, derandomize=True,
                 suppress_health_check=list(HealthCheck), print_blob=False)


@pytest.mark.parametrize("target", METHODS, ids=_ids)
def test_fuzz_typed_messages(world, strategies, target):
    name, service, method = target
    _served(world, name)
    strategy = strategies.message(method.input_type)

    @settings(max_examples=_per_method("typed"), **_SETTINGS)
    @given(msg=strategy)
    def run(msg):
        check(world, name, service, method, msg.SerializeToString(), "typed")

    run()


@pytest.mark.parametrize("target", METHODS, ids=_ids)
def test_fuzz_raw_bytes(world, target):
    name, service, method = target
    _served(world, name)

    @settings(max_examples=_per_method("raw"), **_SETTINGS)
    @given(payload=st.one_of(st.binary(max_size=256),
                             st.sampled_from([b"", b"\x00", b"\xff" * 16, b"\x0a\xff\xff\xff\xff\x0f",
                                              b"\x0a\x05\xc3\x28abc", b"\x08" + b"\xff" * 11,
                                              b"\x12\x80\x80\x80\x80\x10"])))
    def run(payload):
        check(world, name, service, method, payload, "raw")

    run()


@pytest.mark.parametrize("target", METHODS, ids=_ids)
def test_fuzz_oversize(world, strategies, target):
    name, service, method = target
    _served(world, name)
    cls = message_factory.GetMessageClass(method.input_type)
    string_fields = [f for f in method.input_type.fields if f.type == FD.TYPE_STRING
                     and not _repeated(f)]

    @settings(max_examples=_per_method("oversize"), **_SETTINGS)
    @given(extra=st.integers(1, MAX_MESSAGE_BYTES), raw=st.booleans())
    def run(extra, raw):
        if raw or not string_fields:
            payload = os.urandom(64) + b"\x00" * (MAX_MESSAGE_BYTES + extra)
        else:
            msg = cls()
            setattr(msg, string_fields[0].name, "x" * (MAX_MESSAGE_BYTES + extra))
            payload = msg.SerializeToString()
        code = check(world, name, service, method, payload, "oversize")
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, f"oversize request: {code.name}"

    run()


def test_every_registered_service_is_fuzzed(world):
    """The harness serves what the registry lists (the coordinator once it is importable)."""
    assert {"reference", "trainer", "md", "store"} <= set(world.servers)
    assert {m[0] for m in METHODS} >= set(world.servers)
    for name in SKIPPED:  # listed but not importable yet: say so in the test report
        print(f"not fuzzed: {name}: {SKIPPED[name]}")
