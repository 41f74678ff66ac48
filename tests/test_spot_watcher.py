"""The spot watcher against a fake instance metadata service (IMDSv2 on 127.0.0.1) and a fake drain command:
no EC2, no Ray. Every loop is bounded (``max_polls``), so a test that goes wrong ends by itself."""
from __future__ import annotations

import json
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fgray.cluster import spot_watcher
from fgray.cluster.spot_watcher import (
    PREEMPTION,
    InstanceMetadata,
    Notice,
    drain_command,
    parse_notice,
    watch,
)

NOW = datetime(2026, 12, 6, 8, 20, 0, tzinfo=timezone.utc)


class FakeMetadata(ThreadingHTTPServer):
    """IMDSv2: a token from PUT /latest/api/token (with its TTL header), then GETs carrying it. The notice
    appears after ``quiet_polls`` GETs; ``expire_after`` GETs with a token make it expire (401)."""

    def __init__(self, notice: dict | None, quiet_polls: int = 0, expire_after: int | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.notice, self.quiet_polls, self.expire_after = notice, quiet_polls, expire_after
        self.tokens_issued, self.gets, self.valid = 0, 0, set()
        self.requests: list[tuple[str, str, dict]] = []  # headers lower-cased

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeMetadata

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self):
        server = self.server
        server.requests.append(("PUT", self.path, {k.lower(): v for k, v in self.headers.items()}))
        if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            return self._reply(400)
        server.tokens_issued += 1
        token = f"token-{server.tokens_issued}"
        server.valid.add(token)
        self._reply(200, token.encode())

    def do_GET(self):
        server = self.server
        server.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
        token = self.headers.get("X-aws-ec2-metadata-token")
        if token not in server.valid:
            return self._reply(401)
        server.gets += 1
        if server.expire_after is not None and server.gets >= server.expire_after:
            server.valid.discard(token)
            server.expire_after = None
        if self.path != "/latest/meta-data/spot/instance-action":
            return self._reply(404)
        if server.notice is None or server.gets <= server.quiet_polls:
            return self._reply(404)
        self._reply(200, json.dumps(server.notice).encode())


@pytest.fixture
def metadata_server(request):
    servers = []

    def start(notice=None, **kwargs) -> FakeMetadata:
        server = FakeMetadata(notice, **kwargs)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class FakeDrain:
    """Records each command; fails the first ``failures`` calls."""

    def __init__(self, failures: int = 0):
        self.calls: list[list[str]] = []
        self.failures = failures

    def __call__(self, command):
        self.calls.append(list(command))
        failed = len(self.calls) <= self.failures
        return subprocess.CompletedProcess(command, 1 if failed else 0, "", "GCS unavailable" if failed else "")


def _watch(server, drain, **kwargs):
    said: list[str] = []
    options = {"interval_s": 0.0, "max_polls": 20, "sleep": lambda s: None, "clock": lambda: NOW,
               "say": said.append, **kwargs}
    return watch(InstanceMetadata(server.url, timeout_s=2.0), drain, **options), said


NOTICE = {"action": "terminate", "time": "2026-12-06T08:22:00Z"}


def test_a_notice_drains_this_node_once_as_a_preemption(metadata_server):
    server = metadata_server(NOTICE, quiet_polls=3)
    drain = FakeDrain()
    code, said = _watch(server, drain)
    assert code == 0
    assert drain.calls == [["ray", "drain-node", "--reason", PREEMPTION,
                            "--reason-message", "EC2 spot interruption notice: terminate at 2026-12-06T08:22:00Z",
                            "--deadline-remaining-seconds", "120"]]
    assert server.gets == 4 and server.tokens_issued == 1  # three quiet polls, then the notice; one session
    # IMDSv2 only: every GET carried the session token, the token request its TTL.
    assert all(h.get("x-aws-ec2-metadata-token") == "token-1" for m, _, h in server.requests if m == "GET")
    assert int(server.requests[0][2]["x-aws-ec2-metadata-token-ttl-seconds"]) == spot_watcher.TOKEN_TTL_S
    assert any("drained" in line for line in said)


def test_no_notice_no_drain(metadata_server):
    server = metadata_server(None)
    drain = FakeDrain()
    code, _ = _watch(server, drain, max_polls=5)
    assert code == 0 and drain.calls == [] and server.gets == 5


def test_an_expired_session_token_is_renewed(metadata_server):
    server = metadata_server(NOTICE, quiet_polls=2, expire_after=2)
    drain = FakeDrain()
    code, _ = _watch(server, drain)
    assert code == 0 and len(drain.calls) == 1
    assert server.tokens_issued == 2


def test_a_failed_drain_is_retried_until_it_succeeds(metadata_server):
    server = metadata_server(NOTICE)
    drain = FakeDrain(failures=2)
    code, said = _watch(server, drain)
    assert code == 0 and len(drain.calls) == 3
    assert sum("drain failed" in line for line in said) == 2


def test_drains_that_keep_failing_stop_at_ec2s_deadline(metadata_server):
    server = metadata_server(NOTICE)
    drain = FakeDrain(failures=100)
    times = iter([NOW, NOW + timedelta(seconds=60), NOW + timedelta(seconds=130), NOW + timedelta(seconds=200)])
    code, _ = _watch(server, drain, clock=lambda: next(times))
    assert code == 1 and len(drain.calls) == 2  # the second failure came after EC2's time: no more tries


def test_an_unreachable_metadata_service_is_given_up(metadata_server):
    server = metadata_server(None)
    url = server.url
    server.shutdown()
    server.server_close()  # nothing listens there any more
    drain = FakeDrain()
    said: list[str] = []
    code = watch(InstanceMetadata(url, timeout_s=0.5), drain, interval_s=0.0, max_polls=20, max_errors=3,
                 sleep=lambda s: None, say=said.append)
    assert code == 2 and drain.calls == [] and "giving up" in said[-1]


def test_the_deadline_is_the_time_left_never_negative():
    notice = Notice("stop", datetime(2026, 12, 6, 8, 22, tzinfo=timezone.utc))
    assert drain_command(notice, NOW)[-1] == "120"
    assert drain_command(notice, NOW + timedelta(minutes=5))[-1] == "0"
    assert drain_command(notice, NOW, node_id="ab" * 28)[-2:] == ["--node-id", "ab" * 28]
    assert parse_notice(b'{"action": "hibernate", "time": "2026-12-06T08:22:00Z"}').time == notice.time


def test_one_watcher_a_node(tmp_path):
    lock = str(tmp_path / "watcher.lock")
    held = spot_watcher.hold_lock(lock)
    try:
        assert held is not None and spot_watcher.hold_lock(lock) is None
        assert spot_watcher.main(["--lock", lock, "--max-polls", "1"]) == 0  # exits at once, no poll
    finally:
        held.close()


def test_the_drain_command_matches_the_installed_rays_cli():
    """``ray drain-node`` is outside Ray's API guarantees: its flags and reason are checked against the Ray
    installed here (pinned in constraints.txt), without running it."""
    import click
    from ray.scripts.scripts import cli

    command = cli.commands["drain-node"]
    options = {opt: param for param in command.params for opt in param.opts}
    used = drain_command(Notice("terminate", NOW), NOW, node_id="ab" * 28)
    for flag in (word for word in used[2:] if word.startswith("--")):
        assert flag in options, f"ray drain-node has no {flag}"
    reason = options["--reason"].type
    assert isinstance(reason, click.Choice) and PREEMPTION in reason.choices
    assert not options["--node-id"].required  # left out, it drains the node it runs on
