"""Leave-one-out retrieval metrics over a large synthetic gallery, with time and peak memory.

Shows that ``fgray.eval.retrieval_metrics`` never builds the full [N, N] similarity matrix:
peak RSS stays far below the N*N*4 bytes such a matrix would take (40 GB at N = 100k).

    pip install -e . && python bench/eval_large_gallery.py --n 100000 --dim 128 --backend torch
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from fgray.eval import retrieval_metrics


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_gallery(n: int, dim: int, n_classes: int, noise: float, seed: int):
    """Noisy copies of random unit class centres: ([n, dim] float32, [n] int64 labels)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=gen), dim=1)
    labels = torch.randint(0, n_classes, (n,), generator=gen)
    x = centres[labels] + noise / dim**0.5 * torch.randn(n, dim, generator=gen)
    return torch.nn.functional.normalize(x, dim=1), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="gallery size (= number of queries)")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension")
    parser.add_argument("--classes", type=int, default=1000, help="number of classes")
    parser.add_argument("--noise", type=float, default=2.0,
                        help="noise norm relative to the unit centres (2.0: R@1 ~ 0.5, a hard case)")
    parser.add_argument("--backend", choices=["auto", "torch", "faiss"], default="auto")
    parser.add_argument("--query-batch", type=int, default=None, help="queries per block (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    x, y = synthetic_gallery(args.n, args.dim, args.classes, args.noise, args.seed)
    rss_data = peak_rss_mib()
    start = time.perf_counter()
    metrics = retrieval_metrics(x, y, backend=args.backend, query_batch=args.query_batch)
    wall = time.perf_counter() - start
    full_gb = args.n * args.n * 4 / 1e9
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    print(f"n={args.n} dim={args.dim} classes={args.classes} backend={args.backend} "
          f"threads={torch.get_num_threads()}")
    print(f"wall time: {wall:.1f} s")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB (after building the data: {rss_data:.0f} MiB)")
    print(f"a full {args.n} x {args.n} float32 similarity matrix would need {full_gb:.1f} GB")


if __name__ == "__main__":
    main()
