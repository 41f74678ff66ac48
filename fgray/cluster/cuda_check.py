"""Whether torch can use this GPU node's CUDA, checked by cluster.yaml's worker start commands before
``ray start``, and what fgray does on a node that failed it.

A failed check no longer fails the node's setup: the autoscaler terminated such a node and, the trials still
waiting for GPUs, started the next one, which failed the same way (a driver/image mismatch fails on every
node), each paying a boot. Now the node joins Ray with the resources its node type declares, so no other node
is started for its work, and every process there that asks for the GPU fails at once with the check's reason
(``refuse_if_failed``) instead of running on the CPU: its trials fail and are reported, the sweep's demand
drains, and the idle node leaves after ``idle_timeout_minutes``.

``python -m fgray.cluster.cuda_check`` prints nothing when CUDA works, else the reason on one line (details on
stderr); the start command exports that as ``FGRAY_CUDA_CHECK_FAILED`` for Ray's processes on the node.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

FAILED_VARIABLE = "FGRAY_CUDA_CHECK_FAILED"
NODE_LOG = "~/fgray_node.log"  # where cluster.yaml sends the check's details


def cuda_failure() -> str | None:
    """None when a CUDA tensor round-trips through this node's GPU, else why not."""
    try:
        import torch

        if not torch.cuda.is_available():
            return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU"
        if torch.ones(1, device="cuda").add(1).item() != 2:
            return f"torch {torch.__version__}: a CUDA addition returned a wrong value"
    except Exception as err:  # noqa: BLE001 (the driver, the container runtime, a CPU torch: each says why)
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


def check(attempts: int = 3, wait_s: float = 10.0, sleep: Callable[[float], None] = time.sleep,
          probe: Callable[[], str | None] = cuda_failure) -> str | None:
    """``probe`` up to ``attempts`` times, ``wait_s`` apart (a driver still loading at boot passes the next
    time); the last failure, or None."""
    failure = None
    for attempt in range(attempts):
        failure = probe()
        if failure is None:
            return None
        print(f"fgray CUDA check {attempt + 1}/{attempts}: {failure}", file=sys.stderr, flush=True)
        if attempt + 1 < attempts:
            sleep(wait_s)
    return failure


def refuse_if_failed() -> None:
    """Raise, with the check's reason, on a node whose CUDA check failed; nothing elsewhere."""
    reason = os.environ.get(FAILED_VARIABLE, "").strip()
    if reason:
        raise RuntimeError(f"this GPU node failed fgray's CUDA check when it started ({reason}; details in "
                           f"{NODE_LOG} there): its GPU work fails here instead of running on the CPU. The node "
                           "is not replaced and leaves the cluster once idle; check the node image against the "
                           "AMI's NVIDIA driver (README, On a cluster)")


def main() -> int:
    failure = check()
    if failure:
        print(failure.replace("\n", " "), flush=True)
    return 0  # the start command goes on either way: the exported reason does the refusing


if __name__ == "__main__":
    sys.exit(main())
