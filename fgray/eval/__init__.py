"""Evaluation: exact k-NN search, retrieval metrics and linear probes (plain PyTorch / faiss).

Ray-based distributed extraction lives in ``fgray.eval.distributed`` (imported explicitly,
so this package stays importable without Ray).
"""
from .linear_probe import linear_probe, linear_probe_fractions
from .metrics import retrieval_metrics
from .search import knn

__all__ = ["knn", "linear_probe", "linear_probe_fractions", "retrieval_metrics"]
