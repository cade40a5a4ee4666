"""CPUs on a real local Ray cluster: a head (resource node_a) and a second node (resource
node_b) started on this machine with `ray start`, an engine actor on each.

Greedy decoding makes every claim exact: a reply generated on node B, moved by its KV through
Ray's object store or re-prefilled from its text on node A, must be the same text as one run
uninterrupted on node A. The last test kills node B (its raylet and every process under it)
in the middle of two generations: one read straight from node B's CPU (one BackendError that
carries the text streamed so far) and one through a pool of both CPUs, the kernel's failover,
which goes on on node A with the reply intact. After the module no Ray process it started may
be left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmos.errors import BackendError, ModelError
from llmos.hw.cpu.base import Chunk, GenRequest, KVState, collect
from llmos.kernel.plugins import cpu_factories
from llmos.kernel.pool import MemberSpec, PoolCPU, PoolSpec
from tests.conftest import RunCli

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'llmos[cluster]'")

from llmos.hw.cpu.ray import KVHandle, RayCPU  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
OBJECT_STORE = str(100 * 1024 * 1024)
PROMPT = "Write a long story about a dragon who learns to read."
TOTAL = 48  # tokens of the reference reply
CUT = 16  # tokens generated on node B before the KV moves
LONG = 160  # tokens of the reply that node B's loss interrupts
STOP_GRACE_S = 10.0  # how long a node stopped by SIGTERM may take before it is killed


def session_pids(sessions: set[int]) -> set[int]:
    """Live (not zombie) processes of the given sessions: each node this module starts is a
    session of its own, so these are its processes (raylet, GCS, workers, monitors) and no
    one else's, even where other Ray clusters run on the machine."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) in sessions:
            found.add(int(entry.name))
    return found


def kill_sessions(sessions: set[int]) -> None:
    for pid in session_pids(sessions):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    address: str
    head: subprocess.Popen[bytes]
    node_b: subprocess.Popen[bytes]
    node_a_id: str
    node_b_id: str

    def kill_node_b(self) -> None:
        """Lose node B as a machine is lost: SIGKILL its raylet and every process of it."""
        kill_sessions({self.node_b.pid})
        self.node_b.wait()


def ray_script() -> str:
    """The `ray` command of the Ray these tests import: beside the Python running them (a
    virtual environment's bin directory need not be on PATH), else the one on PATH."""
    here = Path(sys.executable).parent
    found = shutil.which("ray", path=str(here)) or shutil.which("ray")
    if found is None:
        pytest.fail(
            f"the ray command is neither in {here} nor on PATH: pip install 'llmos[cluster]'",
            pytrace=False,
        )
    return found


def start_node(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            ray_script(),
            "start",
            "--num-cpus=1",
            f"--object-store-memory={OBJECT_STORE}",
            "--block",
            *args,
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def node_with(resource: str) -> str | None:
    for node in ray.nodes():
        if node["Alive"] and node["Resources"].get(resource):
            return str(node["NodeID"])
    return None


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    tmp = tempfile.mkdtemp(prefix="llmos-ray-", dir="/tmp")  # short: Ray's sockets live here
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        RAY_USAGE_STATS_ENABLED="0",
        # Notice a lost node in seconds rather than the default half minute.
        RAY_health_check_period_ms="500",
        RAY_health_check_timeout_ms="1000",
        RAY_health_check_failure_threshold="3",
    )
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = start_node(
        [
            "--head",
            f"--port={port}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={tmp}",
            "--resources",
            json.dumps({"node_a": 1}),
        ],
        env,
    )
    node_b = None
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
                break
            except Exception:
                if time.monotonic() > deadline or head.poll() is not None:
                    raise
                time.sleep(0.5)
        node_b = start_node([f"--address={address}", "--resources", json.dumps({"node_b": 1})], env)
        while (node_b_id := node_with("node_b")) is None:
            assert time.monotonic() < deadline, "node B did not join the cluster"
            assert node_b.poll() is None, "ray start of node B failed"
            time.sleep(0.5)
        node_a_id = node_with("node_a")
        assert node_a_id is not None and node_a_id != node_b_id
        yield Cluster(address, head, node_b, node_a_id, node_b_id)
    finally:
        ray.shutdown()
        nodes = [proc for proc in (node_b, head) if proc is not None]
        sessions = {proc.pid for proc in nodes}
        for proc in nodes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while session_pids(sessions) and time.monotonic() < deadline:
            time.sleep(0.2)
        kill_sessions(sessions)  # what a graceful stop left
        for proc in nodes:
            proc.wait(timeout=STOP_GRACE_S)
        deadline = time.monotonic() + STOP_GRACE_S
        while (left := session_pids(sessions)) and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(tmp, ignore_errors=True)
        assert not left, f"Ray processes left after the cluster stopped: {sorted(left)}"


@pytest.fixture(scope="module")
def cpu_a(cluster: Cluster) -> Iterator[RayCPU]:
    cpu = cpu_factories()["ray"]("ray/node_a")
    assert isinstance(cpu, RayCPU)
    yield cpu
    cpu.close()


@pytest.fixture(scope="module")
def cpu_b(cluster: Cluster) -> Iterator[RayCPU]:
    cpu = cpu_factories()["ray"]("ray/node_b")
    assert isinstance(cpu, RayCPU)
    yield cpu
    cpu.close()


def request(max_tokens: int, **kw: object) -> GenRequest:
    return GenRequest(
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=max_tokens,
        ignore_eos=True,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def reference(cpu_a: RayCPU) -> str:
    text, last = collect(cpu_a.generate(request(TOTAL)))
    assert last.finish_reason == "length" and last.completion_tokens == TOTAL
    return text


def test_no_cluster_at_the_address_is_one_line_and_exit_6(run_cli: RunCli) -> None:
    port = free_port()  # nothing listens there
    proc = run_cli(
        "run",
        ROOT / "examples" / "summarize.prompt",
        "--model",
        "ray",
        input="The meeting moved to Thursday.",
        env={"RAY_ADDRESS": f"127.0.0.1:{port}"},
    )
    assert proc.returncode == 6, proc.stderr
    (line,) = proc.stderr.strip().splitlines()  # Ray names the host by this node's address
    assert re.fullmatch(
        rf"llmos: error: ray: no Ray cluster answers at [\w.:-]+:{port}: Connection refused "
        r"\(start one with: ray start --head, or set RAY_ADDRESS\)",
        line,
    ), line


def test_each_spec_places_its_engine_on_the_node_offering_the_resource(
    cluster: Cluster, cpu_a: RayCPU, cpu_b: RayCPU
) -> None:
    assert cpu_a.node_id == cluster.node_a_id
    assert cpu_b.node_id == cluster.node_b_id
    assert cpu_a.model_id == cpu_b.model_id and re.fullmatch(r"sha256:[0-9a-f]{64}", cpu_a.model_id)
    assert cpu_b.n_ctx > 0 and cpu_b.count_tokens("hello world") > 0
    assert cpu_b.count_messages(request(1).messages) > cpu_b.count_tokens(PROMPT)
    assert cpu_b.describe()["node"] == cluster.node_b_id


def test_a_resource_no_node_offers_is_one_model_error(cluster: Cluster) -> None:
    with pytest.raises(ModelError, match="no node of the Ray cluster offers resource 'node_z'"):
        cpu_factories()["ray"]("ray/node_z")


def test_node_b_generates_what_node_a_does(cpu_b: RayCPU, reference: str) -> None:
    chunks = list(cpu_b.generate(request(TOTAL)))
    assert len(chunks) > 2, "the reply streams in pieces"
    assert chunks[-1].done and chunks[-1].completion_tokens == TOTAL
    assert "".join(c.text for c in chunks) == reference


def test_kv_moves_from_node_b_to_node_a_through_the_object_store(
    cpu_a: RayCPU, cpu_b: RayCPU, reference: str
) -> None:
    handles: list[KVHandle] = []
    first, last = collect(cpu_b.generate(request(CUT), export=handles.append))
    assert last.finish_reason == "length" and len(handles) == 1
    handle = handles[0]
    assert handle.source == cpu_b.node_id and handle.reply_tokens == CUT
    state: KVState = ray.get(handle.ref)
    assert state.model == cpu_a.model_id and state.n_prompt == last.prompt_tokens
    assert len(state.kv) > 0 and len(state.tokens) == state.n_prompt + CUT
    assert state.n_kv == len(state.tokens) - 1  # the last sampled token is not yet fed
    before = cpu_a.stats()["restores"]
    rest, end = collect(cpu_a.generate(request(TOTAL), resume=handle))
    assert cpu_a.stats()["restores"] == before + 1, "node A restored the KV"
    assert end.completion_tokens == TOTAL - CUT
    assert first + rest == reference


def test_kv_of_another_model_is_never_loaded(cpu_a: RayCPU, cpu_b: RayCPU, reference: str) -> None:
    handles: list[KVHandle] = []
    first, _ = collect(cpu_b.generate(request(CUT), export=handles.append))
    # A handle that says the KV is another model's: node A re-prefills the reply's text.
    other = dataclasses.replace(handles[0], model_id="0" * 64)
    before = cpu_a.reprefills
    rest, _ = collect(cpu_a.generate(request(TOTAL), resume=other))
    assert cpu_a.reprefills == before + 1
    assert first + rest == reference
    # A state whose own tag names another model is not loaded by the engine it reaches: that
    # engine re-prefills the reply's text too.
    state: KVState = ray.get(handles[0].ref)
    forged = dataclasses.replace(state, model="sha256:" + "f" * 64)
    lying = dataclasses.replace(handles[0], ref=ray.put(forged))
    restores = cpu_a.stats()["restores"]
    rest, _ = collect(cpu_a.generate(request(TOTAL), resume=lying))
    assert cpu_a.stats()["restores"] == restores
    assert first + rest == reference


def test_node_b_lost_mid_generation_continues_on_node_a(
    cluster: Cluster, cpu_a: RayCPU, cpu_b: RayCPU
) -> None:
    whole, _ = collect(cpu_a.generate(request(LONG)))  # the uninterrupted reply
    # The kernel's control plane: a pool of the two engines, node B first and preferred (A is
    # its fallback). Beside it, one stream straight from node B.
    members = {"ray/node_a": cpu_a, "ray/node_b": cpu_b}
    pool = PoolCPU(
        PoolSpec(
            "cluster", (MemberSpec("b", "ray/node_b"), MemberSpec("a", "ray/node_a", fallback=True))
        ),
        members.__getitem__,
    )
    via_pool, direct = pool.generate(request(LONG)), cpu_b.generate(request(LONG))
    pooled: list[Chunk] = [next(via_pool) for _ in range(3)]
    got: list[Chunk] = [next(direct) for _ in range(3)]
    assert list(pool.placements) == ["b"]  # the pool placed it on node B
    cluster.kill_node_b()
    # Straight from node B: one BackendError, carrying the text streamed before the loss.
    with pytest.raises(BackendError) as caught:
        for chunk in direct:
            got.append(chunk)
    exc = caught.value
    assert "lost" in str(exc) and "\n" not in str(exc)
    emitted = "".join(c.text for c in got)
    assert exc.emitted == emitted and emitted
    assert not any(c.done for c in got) and len(emitted) < len(whole)
    # Through the pool: the reply goes on on node A, nothing lost and nothing repeated.
    pooled.extend(via_pool)
    assert "".join(c.text for c in pooled) == whole
    last = pooled[-1]
    assert last.done and last.finish_reason == "length"
    stats = pool.stats()
    assert stats["members"]["b"]["failures"] == 1 and stats["failovers"] == 1
    assert "a" in pool.placements
    # The lost CPU says so at once, in one line, from then on.
    assert cpu_b.stats().get("lost")
    with pytest.raises(BackendError, match="lost"):
        collect(cpu_b.generate(request(4)))
