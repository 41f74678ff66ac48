"""Training batches built from a method's declared inputs through the real view recipes, without
Ray or a dataset: what a trial's pipeline hands ``engine.train_one_epoch`` (uint8 images, numpy
columns). Registry-wide tests and ``bench/gpu_check.py`` build their batches here."""
from __future__ import annotations

import numpy as np
import torch

from fgray.data.inputs import NEGATIVE_INDEX, DatasetFacts, Inputs


def declared_batch(inputs: Inputs, facts: DatasetFacts, n: int = 8, seed: int = 1) -> dict[str, np.ndarray]:
    """A batch of ``n`` random images holding exactly ``inputs.keys``: each image (slightly larger
    than ``facts.image_size``, its box inside) goes through every declared recipe; labels cycle over
    the classes; cached embeddings are random unit vectors of the encoder's width; a composed batch's
    pairing (``negative_index``) pairs anchor i (the first half) with negative N - 1 - i: not the
    identity, so a method that ignored it would be seen to. With ``inputs.defer_views`` the deferred
    views come with their ``<key>@ops`` rows, as a trial that finishes views on its device gets them."""
    from fgray.data.views import build_recipe
    from fgray.models.encoders import build_encoder

    g = torch.Generator().manual_seed(seed)
    size = facts.image_size
    images = torch.randint(0, 256, (n, 3, size + 8, size + 8), dtype=torch.uint8, generator=g)
    boxes = torch.tensor([[4.0, 6.0, size - 2.0, size - 4.0]]).repeat(n, 1)
    out: dict[str, list] = {}
    recipes = [build_recipe(view, size, inputs.defer_views) for view in inputs.views]
    with torch.random.fork_rng(devices=[]):  # the recipes draw from torch's global generator
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
    if inputs.selection is not None:
        half = n // 2
        batch[NEGATIVE_INDEX] = np.r_[np.arange(half)[::-1], np.full(n - half, -1)].astype(np.int64)
    return batch
