"""`ray job submit` against a local head this test starts (and stops): the cluster workflow."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_job_submit_smoke_sweep(tmp_path):
    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    gcs_port, dashboard_port = free_port(), free_port()
    # Every port this head listens on is a free one: Ray's fixed defaults (agent 52365, client
    # server 10001, ...) collide with any other Ray running on the machine (a developer's sweep).
    other_ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "ray-client-server-port",
        "runtime-env-agent-port", "node-manager-port", "object-manager-port")]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="fgray-ray-")  # short: Ray's socket paths must fit in 107 bytes
    try:
        started = subprocess.run([ray_cli, "start", "--head", f"--port={gcs_port}", "--num-cpus=2",
                                  "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
                                  *other_ports, f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                                 env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        address = f"http://127.0.0.1:{dashboard_port}"
        command = [sys.executable, "-m", "fgray.sweep", "sweeps/demo.yaml", "--profile", "smoke",
                   "--storage", str(tmp_path / "results"), "--set", "search.space={}", "--set", "search.num_samples=1",
                   "--set", "train.epochs=1",
                   "--set", "eval.baseline=false"]
        deadline = time.time() + 120
        while True:  # the head's job agent needs a few seconds after `ray start` before it accepts jobs
            submit = subprocess.run([ray_cli, "job", "submit", "--address", address, "--working-dir", REPO,
                                     "--submission-id", "fgray-smoke", "--", *command],
                                    env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
            if "No available agent" not in submit.stdout + submit.stderr or time.time() > deadline:
                break
            time.sleep(3)
        # `ray job submit` follows the job to its end and exits 0 only if it SUCCEEDED.
        output = submit.stdout + submit.stderr
        assert submit.returncode == 0 and "Job 'fgray-smoke' succeeded" in output, output[-4000:]
        assert (tmp_path / "results" / "demo-smoke" / "summary.json").is_file()
    finally:
        stop_processes_under(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop_processes_under(temp_dir: str) -> None:
    """Stop, by PID, the processes of the head this test started: their command lines name its temp dir.

    (`ray stop` would stop every Ray process of this user on the machine, not just ours.)
    """
    def ours() -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        if temp_dir.encode() in f.read():
                            pids.append(int(entry))
                except OSError:
                    continue
        return pids

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 15
        while ours() and time.time() < deadline:
            time.sleep(0.5)
