"""The device of a process that is not a Train worker (an embedding or detection actor, a search
task): the accelerator Ray gave it, else the CPU. Ray decides which processes see an accelerator
(``num_gpus``), from what the sweep asks for; nothing here names a device kind. torch is imported
on call: the trial drivers that import the callers never build a model."""
from __future__ import annotations


def local_device():
    import torch

    if torch.accelerator.is_available():
        return torch.accelerator.current_accelerator()
    from fgray.cluster.cuda_check import refuse_if_failed

    refuse_if_failed()  # a GPU node whose CUDA failed its start check: never the CPU in its GPU's place
    return torch.device("cpu")
