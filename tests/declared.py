"""Declared training batches as a method reads them in tests: normalised CPU tensors."""
from __future__ import annotations

import torch

from fgray.data import declared
from fgray.data.inputs import DatasetFacts, Inputs
from fgray.engine import to_device


def declared_batch(inputs: Inputs, facts: DatasetFacts, n: int = 8, seed: int = 1) -> dict:
    """``fgray.data.declared.declared_batch`` moved to the CPU and normalised like the engine's."""
    return to_device(declared.declared_batch(inputs, facts, n, seed), torch.device("cpu"))
