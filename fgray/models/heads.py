"""Projection heads shared by the methods."""
from __future__ import annotations

from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """MLP head: ``layers`` Linear layers with (BN +) ReLU between them.

    ``hidden_bn`` puts a BatchNorm before each hidden ReLU (SimSiam, PP-SSL); MoCo v2's head has
    none: Linear-ReLU-Linear (``hidden_bn=False``). ``last_bn`` adds a BatchNorm without affine
    after the last Linear, as PP-SSL's head ("two fully connected layers with ReLU and a linear
    layer with BN") and SimSiam's projector.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2,
                 last_bn: bool = False, hidden_bn: bool = True):
        super().__init__()
        blocks: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            blocks.append(nn.Linear(dim, hidden_dim))
            if hidden_bn:
                blocks.append(nn.BatchNorm1d(hidden_dim))
            blocks.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        blocks.append(nn.Linear(dim, out_dim))
        if last_bn:
            blocks.append(nn.BatchNorm1d(out_dim, affine=False))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
