"""The GPU node's CUDA check (cluster.yaml's worker start command): retried, never fatal to the node, and on
a node that failed it every process that asks for the GPU fails with the reason instead of using the CPU."""
from __future__ import annotations

import pytest

from fgray.cluster import cuda_check
from fgray.cluster.cuda_check import FAILED_VARIABLE, check, refuse_if_failed


def test_a_working_gpu_passes_at_once():
    waits = []
    assert check(probe=lambda: None, sleep=waits.append) is None and waits == []


def test_a_failing_gpu_is_retried_then_its_last_reason_returned():
    answers = iter(["driver not loaded", "driver not loaded", "no usable GPU"])
    waits = []
    assert check(attempts=3, wait_s=7, probe=lambda: next(answers), sleep=waits.append) == "no usable GPU"
    assert waits == [7, 7]
    late = iter(["driver not loaded", None])  # a driver still loading at boot
    assert check(attempts=3, probe=lambda: next(late), sleep=lambda s: None) is None


def test_without_a_gpu_the_probe_says_why():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a working GPU")
    reason = cuda_check.cuda_failure()
    assert reason and "torch" in reason


def test_the_start_command_gets_the_reason_on_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cuda_check, "check", lambda: "RuntimeError: CUDA driver version is insufficient")
    assert cuda_check.main() == 0  # the node starts Ray either way
    assert capsys.readouterr().out == "RuntimeError: CUDA driver version is insufficient\n"
    monkeypatch.setattr(cuda_check, "check", lambda: None)
    assert cuda_check.main() == 0 and capsys.readouterr().out == ""


def test_a_failed_node_refuses_gpu_work_with_the_reason(monkeypatch):
    monkeypatch.delenv(FAILED_VARIABLE, raising=False)
    refuse_if_failed()  # every other node: nothing
    monkeypatch.setenv(FAILED_VARIABLE, "")
    refuse_if_failed()  # the check passed: the start command exports an empty reason
    monkeypatch.setenv(FAILED_VARIABLE, "torch 2.14.1 (CUDA 12.8) sees no usable GPU")
    with pytest.raises(RuntimeError, match="failed fgray's CUDA check.*sees no usable GPU"):
        refuse_if_failed()


def test_an_actor_on_a_failed_node_does_not_fall_back_to_the_cpu(monkeypatch):
    import torch

    from fgray.devices import local_device

    if torch.accelerator.is_available():
        pytest.skip("this machine has an accelerator")
    monkeypatch.delenv(FAILED_VARIABLE, raising=False)
    assert local_device() == torch.device("cpu")  # a CPU node: the CPU
    monkeypatch.setenv(FAILED_VARIABLE, "no usable GPU")
    with pytest.raises(RuntimeError, match="no usable GPU"):
        local_device()
