"""Training batches built from a method's declared inputs, through the real view recipes (no Ray):
what the trial's pipeline would hand the method, at test sizes."""
from __future__ import annotations

import numpy as np
import torch

from fgray.data.inputs import DatasetFacts, Inputs
from fgray.engine import to_device
from fgray.models.encoders import build_encoder


def declared_batch(inputs: Inputs, facts: DatasetFacts, n: int = 8, seed: int = 1) -> dict:
    """A batch of ``n`` random images holding exactly ``inputs.keys``, normalised like the engine's."""
    from fgray.data.views import build_recipe

    g = torch.Generator().manual_seed(seed)
    size = facts.image_size
    images = torch.randint(0, 256, (n, 3, size + 8, size + 8), dtype=torch.uint8, generator=g)
    boxes = torch.tensor([[4.0, 6.0, size - 2.0, size - 4.0]]).repeat(n, 1)
    out: dict[str, list] = {}
    recipes = [build_recipe(view, size) for view in inputs.views]
    for i in range(n):
        torch.manual_seed(seed * 1000 + i)
        for recipe in recipes:
            for key, value in recipe(images[i], boxes[i]).items():
                out.setdefault(key, []).append(value)
    batch = {key: torch.stack(values).numpy() for key, values in out.items()}
    if "label" in inputs.columns:
        batch["label"] = (np.arange(n) % facts.num_classes).astype(np.int64)
    if "bbox" in inputs.columns:
        batch["bbox"] = boxes.numpy()
    if "image_id" in inputs.columns:
        batch["image_id"] = np.array([f"test/{i}" for i in range(n)])
    for key, spec in inputs.embeddings:
        dim = build_encoder(spec, size).dim
        batch[key] = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1).numpy()
    return to_device(batch, torch.device("cpu"))
