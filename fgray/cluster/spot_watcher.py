"""EC2 spot interruption notices -> a Ray drain of this node with the preemption reason.

EC2 warns a spot instance about two minutes before it reclaims it, in the instance metadata
(``spot/instance-action``). A node drained with ``DRAIN_NODE_REASON_PREEMPTION`` before it goes counts as
preempted: Ray schedules nothing new there, and Ray Train restarts the worker group without using up
``FailureConfig.max_failures`` (fgray sets ``max_preemption_failures=-1``); a node that just disappears is a
worker-group failure.

cluster.yaml starts it on each worker after ``ray start``, in the background:
``python -m fgray.cluster.spot_watcher``. It asks the metadata service every ``--interval`` seconds with
IMDSv2 (a session token from ``PUT /latest/api/token``, then GETs that carry it), drains once on a notice and
exits. ``ray drain-node`` is hidden from ``ray --help`` and outside Ray's API guarantees; checked with Ray
2.60: ``--reason``, ``--reason-message``, ``--deadline-remaining-seconds``, and without ``--node-id`` it
drains the node it runs on. tests/test_spot_watcher.py checks those flags against the installed Ray.
"""
from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

METADATA = "http://169.254.169.254"
TOKEN_TTL_S = 21600  # IMDSv2's longest session (6 h); a refused token (401) is renewed
PREEMPTION = "DRAIN_NODE_REASON_PREEMPTION"
LOCK = "~/.fgray_spot_watcher.lock"  # one watcher a node, however often the start commands run


class MetadataError(RuntimeError):
    """The metadata service answered, but not as IMDSv2 does."""


@dataclass(frozen=True)
class Notice:
    action: str  # terminate, stop or hibernate: the node leaves the cluster either way
    time: datetime  # when EC2 acts (UTC)


def parse_notice(body: bytes) -> Notice:
    """``{"action": "terminate", "time": "2026-12-06T08:22:00Z"}`` -> Notice."""
    data = json.loads(body)
    when = datetime.fromisoformat(data["time"].replace("Z", "+00:00"))
    return Notice(data["action"], when if when.tzinfo else when.replace(tzinfo=timezone.utc))


class InstanceMetadata:
    """The instance metadata service, through IMDSv2 (never through a proxy: it is link-local)."""

    def __init__(self, base: str = METADATA, timeout_s: float = 2.0):
        self.base, self.timeout_s = base.rstrip("/"), timeout_s
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._token: str | None = None

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        request = urllib.request.Request(self.base + path, method=method, headers=headers)
        try:
            with self.opener.open(request, timeout=self.timeout_s) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, b""

    def token(self) -> str:
        status, body = self._request("PUT", "/latest/api/token",
                                     {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)})
        if status != 200:
            raise MetadataError(f"PUT /latest/api/token answered {status}")
        return body.decode()

    def spot_notice(self) -> Notice | None:
        """The interruption notice, None while there is none (404)."""
        for _ in range(2):  # a second time with a new token when the session expired (401)
            if self._token is None:
                self._token = self.token()
            status, body = self._request("GET", "/latest/meta-data/spot/instance-action",
                                         {"X-aws-ec2-metadata-token": self._token})
            if status == 401:
                self._token = None
                continue
            if status == 404:
                return None
            if status == 200:
                return parse_notice(body)
            raise MetadataError(f"GET spot/instance-action answered {status}")
        raise MetadataError("GET spot/instance-action refused a new session token")


def drain_command(notice: Notice, now: datetime, node_id: str | None = None, ray: str = "ray") -> list[str]:
    """``ray drain-node`` for this node (``node_id``: another), with the seconds left before EC2 acts."""
    left = max(0, int((notice.time - now).total_seconds()))
    message = (f"EC2 spot interruption notice: {notice.action} at "
               f"{notice.time.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%SZ}")
    command = [ray, "drain-node", "--reason", PREEMPTION, "--reason-message", message,
               "--deadline-remaining-seconds", str(left)]
    return command + (["--node-id", node_id] if node_id else [])


def run_command(command: Sequence[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(command), capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:  # no ray on PATH, a GCS that does not answer
        return subprocess.CompletedProcess(list(command), 1, "", str(err))


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def log(message: str) -> None:
    print(f"{utc_now():%Y-%m-%d %H:%M:%S}Z {message}", flush=True)


def watch(metadata: InstanceMetadata, run: Callable[[Sequence[str]], subprocess.CompletedProcess] = run_command,
          *, interval_s: float = 5.0, node_id: str | None = None, max_polls: int | None = None,
          max_errors: int = 60, sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], datetime] = utc_now, say: Callable[[str], None] = log) -> int:
    """Poll until a notice, drain, return 0. 1: every drain failed before EC2's deadline; 2: the metadata
    service failed ``max_errors`` polls in a row (not on EC2?). ``max_polls``: stop after that many (0)."""
    errors = 0
    for _ in itertools.count() if max_polls is None else range(max_polls):
        try:
            notice = metadata.spot_notice()
            errors = 0
        except (OSError, ValueError, KeyError, MetadataError) as err:  # URLError is an OSError
            errors += 1
            say(f"metadata service: {err}")
            if errors >= max_errors:
                say(f"giving up after {errors} failed polls in a row: no spot notices will be seen")
                return 2
            sleep(interval_s)
            continue
        if notice is None:
            sleep(interval_s)
            continue
        command = drain_command(notice, clock(), node_id)
        say(f"spot interruption notice ({notice.action} at {notice.time:%H:%M:%S}Z): {shlex.join(command)}")
        result = run(command)
        if result.returncode == 0:
            say("drained: Ray counts this node's loss as a preemption")
            return 0
        say(f"drain failed (exit {result.returncode}): {(result.stderr or result.stdout or '').strip()[-500:]}")
        if clock() >= notice.time:
            return 1
        sleep(interval_s)
    return 0


def hold_lock(path: str):
    """An exclusive lock for this process's life, or None when another watcher holds it."""
    handle = open(os.path.expanduser(path), "a")  # noqa: SIM115 (held open: the lock lasts while it is)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fgray.cluster.spot_watcher", description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between polls (AWS suggests 5)")
    parser.add_argument("--metadata-url", default=METADATA)
    parser.add_argument("--node-id", help="the Ray node to drain (default: the node it runs on)")
    parser.add_argument("--lock", default=LOCK, help="one watcher a node holds this file")
    parser.add_argument("--max-polls", type=int, help="stop after that many polls (default: until a notice)")
    args = parser.parse_args(argv)
    lock = hold_lock(args.lock)
    if lock is None:
        log(f"another spot watcher holds {args.lock}: this one exits")
        return 0
    log(f"watching {args.metadata_url} for spot interruption notices every {args.interval:g} s")
    return watch(InstanceMetadata(args.metadata_url), interval_s=args.interval, node_id=args.node_id,
                 max_polls=args.max_polls)


if __name__ == "__main__":
    sys.exit(main())
