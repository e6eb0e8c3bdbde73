"""The Ray backend on a REAL two-node Ray cluster started by this module on this machine.

The cluster: ``ray start --head`` (1 CPU) and a second node joined with ``ray start --address`` (1 CPU), each in
its own process session with private ports, a private temporary folder and a private token (Ray's token
authentication), so nothing is shared with any other Ray on the machine; both are killed (their whole process
groups) at the end, also when a test fails. Checked: sweep rows equal the local backend's for the same points
(references included), a search whose worker node is killed while it scores a trial re-runs that trial elsewhere
and finishes with the local rows, and the bad addresses, a wrong token and missing client extras are one sentence
(exit code 2). Small on purpose: fruit80-night val (60 images) at imgsz 160, 2-3 points.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import IN_CI, REPO, data_yaml

from yolo_taskvec.cli import main

try:
    import ray
except ImportError:  # the [ray] extra (part of [dev]); CI installs it
    ray = None

IMGSZ = 160
SELECT = "train:0.05"  # a seeded 5 % of fruit80-night's train images (12): the sweeps choose on it
MEASURE = "TrialRunner.measure"  # a runner's process title while it scores a trial


def need_ray() -> None:
    if ray is None:
        if IN_CI:
            pytest.fail("Ray is not installed: pip install -e '.[dev]'")
        pytest.skip("Ray is not installed (pip install 'yolo-taskvec[ray]')")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------------------------- the cluster
class Node:
    """One ``ray start --block`` process in a new session: its whole process group is the node."""

    def __init__(self, env: dict[str, str], temp: Path, cpus: int, head: str | None = None) -> None:
        gcs, nm, om, agent, agent_grpc, metrics, runtime, client = free_ports(8)
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--num-gpus=0",
               f"--node-manager-port={nm}", f"--object-manager-port={om}", f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
               f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime}", "--object-store-memory=150000000", "--disable-usage-stats", f"--temp-dir={temp}"]
        cmd += [f"--address={head}"] if head else ["--head", f"--port={gcs}", "--include-dashboard=false"]
        if not head and importlib.util.find_spec("grpc") is not None:  # with ray[client], the head serves Ray Client too
            cmd.append(f"--ray-client-server-port={client}")
        self.address = head or f"127.0.0.1:{gcs}"
        self.log = open(temp.parent / f"{temp.name}.log", "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def pids(self) -> list[int]:
        """Processes of this node: its session (Ray's worker processes have process groups of their own)."""
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.getsid(int(entry)) == self.proc.pid:
                        out.append(int(entry))
                except OSError:
                    pass
        return out

    def running(self, title: str) -> bool:
        for pid in self.pids():
            try:
                if title in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    return True
            except OSError:
                pass
        return False

    def kill(self, first: int = signal.SIGTERM) -> None:
        """Signal every process of the node's session (the ``ray start`` process first), SIGKILL what is left."""
        for sig, wait in ((first, 3.0), (signal.SIGKILL, 5.0)):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.pids():
                time.sleep(0.1)
            if not self.pids():
                break
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def cluster():
    """A head node and a worker node (1 CPU each) on this machine, private token; killed at the end."""
    need_ray()
    root = Path(tempfile.mkdtemp(prefix="ytv-ray-"))  # short: Ray's socket paths must stay under 107 characters
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    env = {**os.environ, **auth, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)  # this process is the driver: it needs the token too
    reset_ray_auth()
    nodes = []
    try:
        nodes.append(Node(env, root / "head", cpus=1))
        head = nodes[0].address
        deadline = time.monotonic() + 120
        while True:  # the head answers once its GCS is up
            try:
                with socket.create_connection(("127.0.0.1", int(head.rsplit(":", 1)[1])), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or nodes[0].proc.poll() is not None:
                    pytest.fail(f"the Ray head did not start: {(root / 'head.log').read_text()[-2000:]}")
                time.sleep(0.5)
        nodes.append(Node(env, root / "worker", cpus=1, head=head))
        ray.init(address=head, logging_level="ERROR", log_to_driver=False)
        try:
            while sum(n["Alive"] for n in ray.nodes()) < 2:
                if time.monotonic() > deadline or nodes[1].proc.poll() is not None:
                    pytest.fail(f"the second Ray node did not join: {(root / 'worker.log').read_text()[-2000:]}")
                time.sleep(0.5)
        finally:
            ray.shutdown()
        yield {"address": head, "head": nodes[0], "worker": nodes[1], "root": root}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for node in reversed(nodes):
            node.kill()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        reset_ray_auth()
        shutil.rmtree(root, ignore_errors=True)


def reset_ray_auth() -> None:
    """Ray reads RAY_AUTH_* once per process and caches them: re-read them after a change (as Ray's own tests do)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@pytest.fixture(scope="module")
def night():
    return [str(data_yaml("fruit80-night.yaml"))]


@pytest.fixture(scope="module")
def local_rows(base_pt, night_pt, night, tmp_path_factory):
    """The reference: a local sweep at the points the Ray runs score (one thread, as each 1-CPU Ray trial)."""
    from yolo_taskvec import sweep

    res = sweep(str(base_pt), [str(night_pt)], night, scales=[0.25, 0.5, 0.75], imgsz=IMGSZ, batch=32, reference="base", select=SELECT, threads=1,
                out=tmp_path_factory.mktemp("local"), verbose=False, plot=False)
    assert res.context["backend"] == "local"
    return {**{r["scale"]: r for r in res.rows}, "references": res.references}


def same_scores(row: dict, local: dict) -> None:
    metrics = [k for k in local if k.startswith("fruit80-night/") and k != "fruit80-night/norm"]  # the val scores
    assert metrics and all(row[k] == pytest.approx(local[k], abs=1e-9) for k in metrics), {k: (row[k], local[k]) for k in metrics}


# ----------------------------------------------------------------------------------------------- no cluster needed
def test_unreachable_address_is_one_sentence(base_pt, night_pt, tmp_path, capsys):
    need_ray()
    (port,) = free_ports(1)
    code = main(["sweep", f"base={base_pt}", f"vectors={night_pt}", f"data={data_yaml('fruit80-night.yaml')}", "backend=ray", f"address=127.0.0.1:{port}", f"out={tmp_path}"])
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in one_line_error(capsys, code)
    assert not list(tmp_path.iterdir())  # nothing loaded, nothing written


def test_ray_client_without_its_extras_is_one_sentence(base_pt, night_pt, tmp_path, capsys, monkeypatch):
    need_ray()
    monkeypatch.setitem(sys.modules, "grpc", None)  # as if Ray were installed without ray[client]
    code = main(["search", f"base={base_pt}", f"vectors={night_pt}", f"data={data_yaml('fruit80-night.yaml')}", "backend=ray", "address=ray://127.0.0.1:10001", f"out={tmp_path}"])
    assert "pip install 'yolo-taskvec[ray]'" in one_line_error(capsys, code)


def test_backend_keys_are_checked_before_loading(base_pt, night_pt, tmp_path, capsys):
    base = [f"base={base_pt}", f"vectors={night_pt}", f"data={data_yaml('fruit80-night.yaml')}", f"out={tmp_path}"]
    for args, message in [
        (["backend=ray", "device=0"], "give gpus_per_trial=1 (or a fraction) instead of device="),
        (["workers=2"], "workers=2 needs backend=ray"),
        (["gpus_per_trial=1"], "gpus_per_trial= is for backend=ray"),
        (["backend=slurm"], "unknown backend 'slurm'"),
        (["backend=ray", "cpus_per_trial=0"], "cpus_per_trial must be positive"),
    ]:
        assert message in one_line_error(capsys, main(["sweep", *base, *args])), args


# ----------------------------------------------------------------------------------------------- on the cluster
def test_wrong_token_is_refused_in_one_sentence(cluster, base_pt, night_pt, night, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    reset_ray_auth()
    try:
        code = main(["sweep", f"base={base_pt}", f"vectors={night_pt}", f"data={night[0]}", "backend=ray", f"address={cluster['address']}", f"out={tmp_path / 'run'}"])
    finally:
        monkeypatch.undo()
        reset_ray_auth()
    assert "refused the connection: token authentication failed" in one_line_error(capsys, code)
    assert not ray.is_initialized() and not (tmp_path / "run").exists()


def test_sweep_on_ray_equals_the_local_backend(cluster, base_pt, night_pt, night, local_rows, tmp_path):
    from yolo_taskvec import sweep

    res = sweep(str(base_pt), [str(night_pt)], night, scales=[0.25, 0.75], imgsz=IMGSZ, batch=32, reference="base", select=SELECT, backend="ray", address=cluster["address"],
                workers=2, cpus_per_trial=1, out=tmp_path, verbose=False, plot=False)
    assert not ray.is_initialized()  # the backend disconnects what it connected
    assert res.evaluated == 2 and [r["scale"] for r in res.rows] == [0.25, 0.75]
    assert res.context["backend"] == "ray" and {r["threads"] for r in res.context["runners"]} == {1} and {r["device"] for r in res.context["runners"]} == {"cpu"}
    for row in res.rows:  # the selection split rebuilt by each runner from the same files: the same images
        same_scores(row, local_rows[row["scale"]])
        for key in ("objective", "select_objective", "fruit80-night.select/map50_95"):  # normalized by the base scored on Ray
            assert row[key] == pytest.approx(local_rows[row["scale"]][key], abs=1e-9), key
    assert res.references == local_rows["references"]


def test_search_on_ray_reruns_the_trial_of_a_killed_node(cluster, base_pt, night_pt, night, local_rows, tmp_path):
    """Asynchronous coordinate search (start 0.5, then 0.75 and 0.25 at once); the worker node is killed while it
    scores a trial: that trial is re-run on the head and the search finishes with the local backend's scores."""
    from yolo_taskvec import search

    worker = cluster["worker"]
    killed = threading.Event()

    def kill_when_scoring() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed.is_set():
            if worker.running(MEASURE):
                worker.kill(first=signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_when_scoring, daemon=True)
    watcher.start()
    res = search(str(base_pt), [str(night_pt)], night, space="scale", budget=3, imgsz=IMGSZ, batch=32, backend="ray", address=cluster["address"], workers=2,
                 out=tmp_path, verbose=False, plot=False)
    killed.set()
    watcher.join(timeout=30)
    assert worker.proc.poll() is not None, "the worker node was never seen scoring a trial"
    assert res.context["lost_workers"] >= 1  # its runner was lost and replaced, its trial re-run
    assert sorted(r["scale"] for r in res.rows) == [0.25, 0.5, 0.75] and res.rows[0]["scale"] == 0.5
    for row in res.rows:
        same_scores(row, local_rows[row["scale"]])
