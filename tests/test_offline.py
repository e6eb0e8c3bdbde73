"""Nothing reaches the network at run time.

Each command runs in a real process whose ``sitecustomize`` (found first on ``PYTHONPATH``) makes every
non-loopback ``connect`` and name lookup fail and records the attempt. A representative flow — extract, apply,
merge, info, convert and an evaluation — must succeed with the network unavailable:

* with ``YOLO_OFFLINE=1`` (the documented offline setting) it records no attempt at all;
* without it, the only attempts are Ultralytics' own import-time connectivity probe (a DNS lookup of
  ``one.one.one.one`` / ``dns.google``, ``ultralytics.utils.is_online``): no download, no pip install, no other host.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import data_yaml

SCRIPT = Path(sys.executable).parent / "yolo-taskvec"

GUARD = '''
"""Test guard: the network is unavailable; loopback and Unix sockets still work. Attempts are logged."""
import os
import socket

_LOG = os.environ["NETWORK_GUARD_LOG"]
_LOCAL = ("127.", "::1", "localhost", "0.0.0.0")


def _local(address):
    host = address[0] if isinstance(address, tuple) else address
    return not isinstance(host, str) or host.startswith(_LOCAL)


def _refuse(what):
    with open(_LOG, "a") as f:
        f.write(f"{os.getpid()} {what}\\n")
    raise OSError(101, f"network unavailable in tests: {what}")


_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def connect(self, address):
    if self.family == socket.AF_UNIX or _local(address):
        return _connect(self, address)
    _refuse(f"connect {address!r}")


def connect_ex(self, address):
    if self.family == socket.AF_UNIX or _local(address):
        return _connect_ex(self, address)
    _refuse(f"connect_ex {address!r}")


def getaddrinfo(host, *args, **kwargs):
    if host is None or _local((host,)):
        return _getaddrinfo(host, *args, **kwargs)
    _refuse(f"getaddrinfo {host!r}")


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
'''


ULTRALYTICS_PROBE = {"getaddrinfo 'one.one.one.one'", "getaddrinfo 'dns.google'"}


def attempts(log: Path) -> set[str]:
    return {line.split(" ", 1)[1] for line in log.read_text().splitlines()}


@pytest.fixture
def guarded(tmp_path):
    """Environment for child processes with the guard active and YOLO_OFFLINE removed; returns (env, log)."""
    site = tmp_path / "guard"
    site.mkdir()
    (site / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "network.log"
    log.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "YOLO_OFFLINE"}
    env.update(PYTHONPATH=os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep), NETWORK_GUARD_LOG=str(log))
    return env, log


def test_the_guard_blocks_the_network(guarded):
    env, log = guarded
    code = "import socket\ntry:\n    socket.create_connection(('203.0.113.7', 443), timeout=2)\nexcept OSError as e:\n    print('blocked', e)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert "blocked" in run.stdout and "network unavailable in tests" in run.stdout
    assert "203.0.113.7" in log.read_text()


EVALUATE = """
import sys
from yolo_taskvec.evaluation import evaluate
print(evaluate(sys.argv[1:-1], sys.argv[-1], imgsz=320, batch=16, device="cpu").table())
"""


@pytest.mark.parametrize("offline", [True, False], ids=["YOLO_OFFLINE=1", "no-YOLO_OFFLINE"])
def test_cli_flow_never_touches_the_network(guarded, tmp_path, base_pt, night_pt, offline):
    env, log = guarded
    allowed = set() if offline else ULTRALYTICS_PROBE
    if offline:
        env = {**env, "YOLO_OFFLINE": "1"}
    out = tmp_path / "out"
    out.mkdir()
    commands = [
        ["extract", f"base={base_pt}", f"tuned={night_pt}", f"out={out / 'night.safetensors'}"],
        ["apply", f"base={base_pt}", f"vectors={out / 'night.safetensors'}", "scale=0.5", f"out={out / 'merged.pt'}"],
        ["merge", "base=yolo26n-base80.pt", "models=yolo26n-fruit-night.pt", "method=task_arithmetic", "scale=0.25", f"out={out / 'merged2.pt'}"],
        ["info", f"vectors={out / 'night.safetensors'}", f"model={out / 'merged.pt'}"],
        ["convert", f"model={out / 'merged.pt'}", f"out={out / 'merged.safetensors'}"],
    ]
    if not offline:  # the same code paths; only what Ultralytics does at import differs
        commands = commands[:2]
    for argv in commands:
        run = subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True, env=env, timeout=600, cwd=out)
        assert run.returncode == 0, (argv[0], run.stderr[-2000:])
        assert attempts(log) <= allowed, (argv[0], log.read_text())
    models = [out / "merged.pt", out / "merged.safetensors"] if offline else [out / "merged.pt"]
    run = subprocess.run([sys.executable, "-c", EVALUATE, *map(str, models), str(data_yaml("fruit80.yaml"))], capture_output=True, text=True, env=env, timeout=600, cwd=out)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "fruit80" in run.stdout
    assert attempts(log) <= allowed, log.read_text()
    assert offline or attempts(log) == ULTRALYTICS_PROBE  # the guard did see Ultralytics' probe: it is active
