"""Shared fixtures. One local Ray instance serves every test that needs Ray (start-up ~10 s)."""
from __future__ import annotations

import os
import socket

import pytest


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# The tests' S3-compatible server (moto, started by ``s3_bucket`` when a test needs it), named the way
# AWS tools and fgray.storage read an endpoint. Set at import, before any test starts Ray: Ray's
# workers inherit the environment of the process that starts it, and they write checkpoints there.
S3_PORT = _free_port()
os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}", "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                   "AWS_REGION": "us-east-1"})


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """A local Ray head for the whole session (2 CPUs, dashboard on: see RAY_NOTES.md)."""
    import ray

    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only contend with each other (and with other jobs) here; a test
    module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def s3_bucket():
    """``s3://fgray-test`` on a local S3-compatible server (moto), for the whole session."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], allow_bucket_creation=True
                      ).create_dir("fgray-test")
    yield "s3://fgray-test"
    server.stop()
