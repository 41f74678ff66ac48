"""The synthetic birds' body plan (``fgray.data.sources.synthetic``): the polygons of one bird's parts in
its own frame, for the part combination of its class. Pure numpy; posing, colouring and drawing
stay in ``synthetic``."""
from __future__ import annotations

import numpy as np


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28, a0: float = 0.0,
             a1: float = 2 * np.pi) -> np.ndarray:
    t = np.linspace(a0, a1, n, endpoint=(a1 - a0) < 2 * np.pi)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _vband(cx: float, cy: float, rx: float, ry: float, x0: float, x1: float, n: int = 6) -> np.ndarray:
    """Vertical band x0..x1 clipped to the ellipse (cx, cy, rx, ry): a polygon inside it."""
    xs = np.linspace(x0, x1, n)
    half = ry * np.sqrt(np.clip(1 - ((xs - cx) / rx) ** 2, 0, None)) * 0.97
    top = np.stack([xs, cy - half], axis=1)
    bottom = np.stack([xs, cy + half], axis=1)[::-1]
    return np.concatenate([top, bottom])


def _hband(cx: float, cy: float, r: float, y0: float, y1: float, n: int = 6) -> np.ndarray:
    """Horizontal band y0..y1 clipped to the circle (cx, cy, r)."""
    ys = np.linspace(y0, y1, n)
    half = r * np.sqrt(np.clip(1 - ((ys - cy) / r) ** 2, 0, None)) * 0.97
    right = np.stack([cx + half, ys], axis=1)
    left = np.stack([cx - half, ys], axis=1)[::-1]
    return np.concatenate([right, left])


def bird_polygons(parts: dict[str, str], rng: np.random.Generator, jitter: float) -> dict[str, list[np.ndarray]]:
    """Polygons of one bird in its local frame (body centre at 0, facing +x, y down, length ~1.1).

    Returned in drawing order, keyed by the colour they take. Proportions are jittered
    per instance (individual birds differ) but every class uses the same body plan.
    """
    j = lambda: 1.0 + jitter * rng.uniform(-1, 1)  # noqa: E731  one relative jitter draw
    brx, bry = 0.30 * j(), 0.17 * j()  # body
    hr = 0.14 * j()  # head radius
    hx, hy = brx + 0.005, -bry * 0.75  # head centre sits on the front-top of the body
    wcx, wcy, wrx, wry = -0.04, -0.03, 0.24 * j(), 0.11 * j()  # wing
    tl = 0.33 * j()  # tail length beyond its base
    tx = -brx + 0.04  # tail base (hidden under the body)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("tail", "legs", "body", "breast", "wing", "bars", "head",
                                                         "mark", "cheek", "eye", "beak")}

    tail = parts["tail"]
    if tail == "round":
        arc = _ellipse(tx, -0.01, tl, 0.16, n=11, a0=np.pi - 0.75, a1=np.pi + 0.75)
        out["tail"].append(np.concatenate([[[tx, 0.03]], arc, [[tx, -0.05]]]))
    elif tail == "fork":
        out["tail"].append(np.array([[tx, -0.05], [tx - tl, -0.16], [tx - 0.45 * tl, -0.01], [tx - tl, 0.14],
                                     [tx, 0.03]]))
    elif tail == "pointed":
        out["tail"].append(np.array([[tx, -0.06], [tx - 1.3 * tl, -0.01], [tx, 0.04]]))
    else:  # square
        out["tail"].append(np.array([[tx, -0.06], [tx - 0.85 * tl, -0.08], [tx - 0.85 * tl, 0.06], [tx, 0.04]]))

    for lx in (0.0, 0.07):  # legs: thin quads
        out["legs"].append(np.array([[lx, bry * 0.8], [lx + 0.015, bry * 0.8], [lx - 0.01, bry + 0.11],
                                     [lx - 0.025, bry + 0.11]]))
    out["body"].append(_ellipse(0, 0, brx, bry))

    breast = parts["breast"]
    if breast == "band":
        out["breast"].append(_vband(0, 0, brx, bry, 0.36 * brx, 0.66 * brx))
    elif breast == "spotted":
        for sx, sy in ((0.02, 0.09), (0.11, 0.05), (0.09, 0.125), (0.19, 0.09), (0.0, 0.01)):
            out["breast"].append(_ellipse(sx * brx / 0.3, sy * bry / 0.17, 0.036, 0.036, n=10))

    out["wing"].append(_ellipse(wcx, wcy, wrx, wry))
    wing = parts["wing"]
    if wing == "bar":
        out["bars"].append(_vband(wcx, wcy, wrx, wry, wcx + 0.05 * wrx, wcx + 0.45 * wrx))
    elif wing == "double":
        for a, b in ((-0.55, -0.25), (0.2, 0.5)):
            out["bars"].append(_vband(wcx, wcy, wrx, wry, wcx + a * wrx, wcx + b * wrx))
    elif wing == "spots":
        for sx, sy in ((-0.55, 0.0), (-0.15, -0.35), (-0.1, 0.4), (0.35, 0.0)):
            out["bars"].append(_ellipse(wcx + sx * wrx, wcy + sy * wry, 0.038, 0.038, n=10))

    out["head"].append(_ellipse(hx, hy, hr, hr))
    head = parts["head"]
    ey = hy - 0.15 * hr  # eye height
    if head == "stripe":
        out["mark"].append(_hband(hx, hy, hr, ey - 0.3 * hr, ey + 0.3 * hr))
    elif head == "cap":
        a = np.arcsin(0.1)  # the arc above y = hy - 0.1 r
        out["mark"].append(_ellipse(hx, hy, hr * 0.98, hr * 0.98, n=14, a0=np.pi + a, a1=2 * np.pi - a))
    elif head == "cheek":
        out["cheek"].append(_ellipse(hx - 0.05 * hr, hy + 0.42 * hr, 0.48 * hr, 0.4 * hr, n=12))
    out["eye"].append(_ellipse(hx + 0.35 * hr, ey, 0.15 * hr, 0.15 * hr, n=10))
    bx = hx + 0.8 * hr
    out["beak"].append(np.array([[bx, ey - 0.02], [bx + 0.13 * j(), ey + 0.035], [bx, ey + 0.07]]))
    return out
