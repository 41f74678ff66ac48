"""The built-in synthetic fine-grained dataset: "birds" that differ only in small local parts.

Every image shows one bird of the same body plan and colour family. A class is a
combination of four discrete local *parts* (head marking x wing pattern x tail shape x
breast marking), so two classes typically share most parts and differ in one or two
small ones, as in CUB. Within a class the pose (rotation, flip), scale, position, body
shape and colours vary, and the background is cluttered with blobs, branches and
marking-like fragments in the same palette as the bird, so that global colour or layout
statistics do not reveal the class. Each image comes with the bird's bounding box.

``render`` is a pure function of ``(spec, class, instance)``: numpy + PIL, no torch, about
a millisecond per 64 px image. :mod:`fgray.data.sources.synthetic_shards` stores a spec as Parquet
shards, cached by its ``content_hash`` (of the spec and ``GENERATOR_VERSION``).
"""
from __future__ import annotations

import colorsys
import functools
import json
from dataclasses import asdict, dataclass, fields
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw

from fgray.data.sources.synthetic_shapes import bird_polygons

# Bump whenever a change makes ``render`` produce different pixels: it is part of the hash.
GENERATOR_VERSION = "2"

# The discrete local parts; a class is one combination (see ``class_parts``).
PARTS: dict[str, tuple[str, ...]] = {
    "head": ("plain", "stripe", "cap", "cheek"),  # dark eye stripe / dark crown cap / pale cheek patch
    "wing": ("plain", "bar", "double", "spots"),  # light wing bars or spots
    "tail": ("round", "fork", "pointed", "square"),
    "breast": ("plain", "band", "spotted"),  # dark chest band / belly spots
}
MAX_CLASSES = int(np.prod([len(v) for v in PARTS.values()]))  # 192
IMAGE_FORMATS = ("png", "jpeg")  # SyntheticSpec.image_format
JPEG_QUALITY = 90  # libjpeg's quality of the jpeg sets (CUB's files are of about this quality)
_CLASS_ORDER_SEED = 20240611  # fixed: class -> parts is the same for every spec.seed

BBox = tuple[float, float, float, float]
Point = tuple[float, float]


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Every field enters the content hash; defaults suit a CPU laptop."""

    num_classes: int = 48  # <= MAX_CLASSES (192)
    images_per_class: int = 40
    image_size: int = 64  # stored images are image_size x image_size RGB
    seed: int = 0  # changes every image (not the class -> parts map)
    train_classes: int | None = None  # classes < this are "train", the rest "test"; None: half
    # --- difficulty knobs ---
    max_rotation: float = 10.0  # degrees, uniform in +-max_rotation (plus a random horizontal flip)
    scale_range: tuple[float, float] = (0.6, 0.95)  # bird length / image side (shrunk if it won't fit)
    shape_jitter: float = 0.06  # relative jitter of body, head, wing and tail proportions
    # Colour varies in two ways. ``lighting`` scales a global per-image hue / saturation /
    # brightness / contrast change (white balance, exposure): visible variation that colour jitter
    # teaches a model to ignore. At k it lies (about) inside ColorJitter(s, s, s, s / 4) for
    # s >= 0.32 k: MoCo v2's published s = 0.4 covers k <= 1.25, the demo's SSL views (s = 0.1)
    # k <= 0.31. Short contrastive runs need the weak jitter: at s = 0.4 two views of one image
    # differ more in colour than two images do, and MoCo v2's loss stays at chance for 100+ steps.
    # At k = 0.5 the cast dominated an untrained network's features (test R@1 16 %; 26 % at 0.25,
    # 43 % at 0) and s = 0.1 could not remove it; 0.25 keeps it inside the demo's jitter.
    # ``color_jitter`` scales a per-image jitter of the bird's and the scene's own hue / saturation /
    # value: it changes their *relation*, which no photometric augmentation undoes, so contrastive
    # learning tells images apart by it instead of by parts (MoCo v2 gains less with it).
    # bench/synthetic_learnability.py measures these (seeds, paired trained - untrained test R@1).
    color_jitter: float = 0.0
    lighting: float = 0.25
    clutter: int = 60  # background leaves, blobs and twigs: many small ones make a texture
    clutter_size: tuple[float, float] = (0.02, 0.08)  # clutter element radius / image side
    bird_colored_clutter: float = 0.15  # fraction of clutter in the bird's colours (the rest: the scene's)
    clutter_contrast: float = 0.08  # how far the scene-coloured clutter strays from the scene colour
    distractors: int = 2  # marking-like fragments (stripes, bars, spots) in the background
    noise_std: float = 4.0  # Gaussian pixel noise (0-255 scale)
    supersample: int = 2  # render at this multiple of image_size, then box-filter down
    # How the images are stored: png (lossless) or jpeg (quality 90, as photo datasets store theirs: what a
    # view worker or the trainer, data.decode_on, decodes on a real dataset; bench/gpu_sweep.py).
    image_format: str = "png"

    def __post_init__(self) -> None:
        if self.train_classes is None:  # resolved here so that "half" and its value hash alike
            object.__setattr__(self, "train_classes", self.num_classes // 2)
        for name in ("scale_range", "clutter_size"):  # lists (from JSON) -> tuples: hashable
            object.__setattr__(self, name, tuple(float(s) for s in getattr(self, name)))
        checks = [
            (2 <= self.num_classes <= MAX_CLASSES, f"num_classes must be in [2, {MAX_CLASSES}]"),
            (1 <= self.train_classes < self.num_classes, "train_classes must be in [1, num_classes)"),
            (self.images_per_class >= 2, "images_per_class must be >= 2 (retrieval needs pairs)"),
            (self.image_size >= 32, "image_size must be >= 32 (parts vanish below)"),
            (0.1 <= self.scale_range[0] <= self.scale_range[1] <= 1.0, "scale_range must be 0.1 <= lo <= hi <= 1"),
            (self.supersample >= 1, "supersample must be >= 1"),
            (self.image_format in IMAGE_FORMATS, f"image_format must be one of {IMAGE_FORMATS}"),
            (min(self.clutter, self.distractors, self.noise_std, self.shape_jitter, self.color_jitter,
                 self.lighting) >= 0,
             "knobs must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SyntheticSpec: {message}")

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists); ``from_dict`` inverts it."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> "SyntheticSpec":
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names})


# ----------------------------------------------------------------------------- classes


def class_parts(class_index: int) -> dict[str, str]:
    """The parts of a class: a fixed shuffle of all combinations, so any prefix mixes them."""
    if not 0 <= class_index < MAX_CLASSES:
        raise ValueError(f"class_index must be in [0, {MAX_CLASSES}), got {class_index}")
    code = _class_codes()[class_index]
    parts = {}
    for name, values in PARTS.items():  # mixed-radix decode of the combination number
        code, digit = divmod(code, len(values))
        parts[name] = values[digit]
    return parts


@functools.lru_cache(maxsize=1)
def _class_codes() -> tuple[int, ...]:
    return tuple(int(c) for c in np.random.default_rng(_CLASS_ORDER_SEED).permutation(MAX_CLASSES))


def class_name(class_index: int) -> str:
    """E.g. ``"bird-07 (head=stripe, wing=double, tail=fork, breast=plain)"``."""
    desc = ", ".join(f"{k}={v}" for k, v in class_parts(class_index).items())
    return f"bird-{class_index:02d} ({desc})"


def split_of(spec: SyntheticSpec, class_index: int) -> str:
    """Open split: the first ``train_classes`` classes train, the rest test."""
    return "train" if class_index < spec.train_classes else "test"


# ----------------------------------------------------------------------------- geometry


def _place(polys: dict[str, list[np.ndarray]], rng: np.random.Generator, spec: SyntheticSpec,
           canvas: int) -> dict[str, list[np.ndarray]]:
    """Random pose: flip, rotate, scale, then translate so the whole bird fits the canvas."""
    flip = -1.0 if rng.random() < 0.5 else 1.0
    angle = np.deg2rad(rng.uniform(-spec.max_rotation, spec.max_rotation))
    scale = rng.uniform(*spec.scale_range) * canvas
    c, s = np.cos(angle), np.sin(angle)
    m = scale * np.array([[c, -s], [s, c]]) @ np.diag([flip, 1.0])
    posed = {k: [p @ m.T for p in v] for k, v in polys.items()}
    pts = np.concatenate([p for v in posed.values() for p in v])
    lo, hi = pts.min(0), pts.max(0)
    margin = 0.02 * canvas
    room = canvas - 2 * margin - (hi - lo)
    if (room < 0).any():  # a rotated large bird may not fit: shrink it about its box
        f = float(np.min((canvas - 2 * margin) / (hi - lo)))
        posed = {k: [p * f for p in v] for k, v in posed.items()}
        lo, hi = lo * f, hi * f
        room = np.maximum(canvas - 2 * margin - (hi - lo), 0)
    shift = margin - lo + rng.uniform(0, 1, 2) * room
    return {k: [p + shift for p in v] for k, v in posed.items()}


# ----------------------------------------------------------------------------- colours


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    # min/max, not np.clip: the same floats, and np.clip's overhead on a scalar dominated this call
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(float(s), 0.0), 1.0), min(max(float(v), 0.0), 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


# (centre, spread) of an HSV colour family, jittered per image by k * U(-1, 1) on each channel.
BIRD_HSV = ((0.08, 0.55, 0.68), (0.035, 0.15, 0.15))  # a bird's body: one ochre-brown family for every class
SCENE_HSV = ((0.23, 0.4, 0.55), (0.09, 0.15, 0.17))  # the scene: foliage greens to olive


def _jittered_hsv(rng: np.random.Generator, family, k: float) -> tuple[float, float, float]:
    (h, s, v), (dh, ds, dv) = family
    return h + dh * k * rng.uniform(-1, 1), s + ds * k * rng.uniform(-1, 1), v + dv * k * rng.uniform(-1, 1)


def _bird_palette(rng: np.random.Generator, k: float) -> dict[str, tuple[int, int, int]]:
    h, s, v = _jittered_hsv(rng, BIRD_HSV, k)
    dark = _hsv(h, s * 0.5, 0.06 + 0.06 * rng.random())  # markings: near-black, same for all classes
    light = _hsv(0.12, 0.15 + 0.1 * rng.random(), 0.88 + 0.1 * rng.random())  # cream bars / spots
    return {
        "tail": _hsv(h, s * 0.9, v * 0.5), "legs": _hsv(h, s * 0.6, v * 0.45), "body": _hsv(h, s, v),
        "breast": dark, "wing": _hsv(h, s, v * 0.72), "bars": light, "head": _hsv(h, s, v * 1.04),
        "mark": dark, "cheek": light, "eye": (10, 10, 10), "beak": _hsv(0.11, 0.6, 0.55 + 0.2 * rng.random()),
    }


def _clutter_colour(rng: np.random.Generator, spec: SyntheticSpec,
                    scene: tuple[float, float, float]) -> tuple[int, int, int]:
    """Some clutter in bird tones (colour alone must not find the bird), the rest in the
    scene's own tones (foliage / bark around the background colour)."""
    if rng.random() < spec.bird_colored_clutter:
        h, s, v = _jittered_hsv(rng, BIRD_HSV, spec.color_jitter)
        return _hsv(h, s, v * rng.uniform(0.6, 1.1))
    h, s, v = scene
    c = spec.clutter_contrast
    return _hsv(h + c * rng.uniform(-0.3, 0.3), s * (1 + c * rng.uniform(-2, 2)), v * (1 + c * rng.uniform(-2, 2)))


def _draw_background(draw: ImageDraw.ImageDraw, rng: np.random.Generator, spec: SyntheticSpec, canvas: int,
                     scene: tuple[float, float, float]) -> None:
    """Cluttered scene: many small blobs, leaves and twigs, then marking-like fragments.

    Many *small* elements give a stationary texture: its layout identifies an image but no
    crop-invariant structure, so self-supervised views must agree on the bird instead.
    """
    for _ in range(spec.clutter):
        colour, kind = _clutter_colour(rng, spec, scene), rng.integers(3)
        cx, cy = rng.uniform(0, canvas, 2)
        size = rng.uniform(*spec.clutter_size) * canvas
        if kind == 0:  # blob
            rx, ry = size * rng.uniform(0.4, 1.0, 2)
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
        elif kind == 1:  # polygon (leaf / rock)
            t = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 7)))
            r = size * rng.uniform(0.4, 1.0, t.size)
            draw.polygon(list(zip(cx + r * np.cos(t), cy + r * np.sin(t))), fill=colour)
        else:  # branch
            a = rng.uniform(0, np.pi)
            dx, dy = np.cos(a) * size * 1.5, np.sin(a) * size * 1.5
            draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=colour,
                      width=max(1, int(rng.uniform(0.01, 0.03) * canvas)))
    for _ in range(spec.distractors):  # fragments that look like parts, away from any bird
        cx, cy = rng.uniform(0, canvas, 2)
        colour = _hsv(0.08, 0.3, 0.12) if rng.random() < 0.5 else _hsv(0.12, 0.2, 0.92)
        r = rng.uniform(0.012, 0.03) * canvas
        if rng.random() < 0.5:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            a = rng.uniform(0, np.pi)
            dx, dy = np.cos(a) * r * 2.5, np.sin(a) * r * 2.5
            draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=colour, width=max(1, int(r)))


# ----------------------------------------------------------------------------- rendering


def render(spec: SyntheticSpec, class_index: int, instance_index: int) -> tuple[np.ndarray, BBox]:
    """One image (H x W x 3 uint8) and the bird's box (x1, y1, x2, y2) in image pixels.

    Deterministic in ``(spec, class_index, instance_index)``: all randomness comes from
    ``np.random.default_rng([seed, class, instance])``.
    """
    if not 0 <= class_index < spec.num_classes:
        raise ValueError(f"class_index must be in [0, {spec.num_classes}), got {class_index}")
    rng = np.random.default_rng([spec.seed, class_index, instance_index])
    ss = spec.supersample
    canvas = spec.image_size * ss
    k = spec.color_jitter

    scene = _jittered_hsv(rng, SCENE_HSV, k)
    img = Image.new("RGB", (canvas, canvas), _hsv(*scene))
    draw = ImageDraw.Draw(img)
    _draw_background(draw, rng, spec, canvas, scene)

    polys = _place(bird_polygons(class_parts(class_index), rng, spec.shape_jitter), rng, spec, canvas)
    palette = _bird_palette(rng, k)
    for name, items in polys.items():
        for poly in items:
            draw.polygon([tuple(p) for p in poly.tolist()], fill=palette[name])

    if ss > 1:  # box filter = area average: anti-aliased edges
        img = img.resize((spec.image_size, spec.image_size), Image.Resampling.BOX)
    arr = np.asarray(img, dtype=np.float32)
    if spec.lighting > 0:
        arr = _relight(arr, rng, spec.lighting)
    if spec.noise_std > 0:
        arr = arr + rng.normal(0.0, spec.noise_std, arr.shape).astype(np.float32)
    arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return arr, _bbox(polys, ss, spec.image_size)


_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ).astype(np.float32)


def _relight(arr: np.ndarray, rng: np.random.Generator, k: float) -> np.ndarray:
    """Global colour cast + exposure of the whole image (0-255 float in, float out).

    Hue rotation up to +-0.08 turn, saturation / brightness x(1 +- 0.3), contrast x(1 +- 0.2),
    all times ``k``: inside MoCo v2's ColorJitter(0.4, 0.4, 0.4, 0.1) at k = 1.
    """
    hue, sat, bright, contrast = (k * rng.uniform(-1, 1, 4) * [0.08, 0.3, 0.3, 0.2]).tolist()
    a = 2 * np.pi * hue
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]], dtype=np.float32)
    rot[1:, 1:] *= 1 + sat  # chroma scaled = saturation
    m = _YIQ2RGB @ rot @ _RGB2YIQ
    out = (arr @ m.T) * (1 + bright)
    mean = out.mean()
    return (out - mean) * (1 + contrast) + mean


def _bbox(polys: dict[str, list[np.ndarray]], ss: int, size: int) -> BBox:
    pts = np.concatenate([p for v in polys.values() for p in v]) / ss
    x1, y1 = np.clip(pts.min(0), 0, size)
    x2, y2 = np.clip(pts.max(0), 0, size)
    return float(x1), float(y1), float(x2), float(y2)


def render_arrays(spec: SyntheticSpec,
                  classes: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render whole classes in memory: images (N, H, W, 3) uint8, labels (N,), boxes (N, 4)."""
    classes = range(spec.num_classes) if classes is None else list(classes)
    images, labels, boxes = [], [], []
    for c in classes:
        for i in range(spec.images_per_class):
            image, box = render(spec, c, i)
            images.append(image)
            labels.append(c)
            boxes.append(box)
    return np.stack(images), np.asarray(labels, dtype=np.int64), np.asarray(boxes, dtype=np.float32)
