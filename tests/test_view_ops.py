"""MoCo v2's views the fast way (PIL, a colour lookup table, a reduced JPEG decode) and finished on the
trainer's device (Kornia) against the torchvision reference, ``transforms.moco_v2_augmentation``: the
same draws per seed, and the same distribution of crops, colours and blur (two-sample KS tests on
disjoint seeds, paired differences on the same seeds). Every draw is seeded: the tests are deterministic."""
from __future__ import annotations

import colorsys
import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from fgray.data.inputs import ViewRecipe
from fgray.data.sources.synthetic_shards import photo_jpegs
from fgray.data.views.transforms import decode, eval_transform, moco_blur, moco_v2_augmentation
from fgray.data.views import Source, build_recipe, colour, worker_colour
from fgray.data.views.deferred import finish
from fgray.data.views.moco import MocoView
from fgray.data.views.params import OPS_WIDTH, ColourOps
from fgray.data.views.source import draft_reduction, to_tensor

pytestmark = pytest.mark.usefixtures("one_thread")

PHOTOS = [encoded for encoded, _ in photo_jpegs(3)]  # 500 x 375 JPEGs, as CUB stores its images
# KS: a p-value below ALPHA / (statistics tested together) says two samples come from different
# distributions (Bonferroni; disjoint seed sets of the reference itself gave p down to 0.04 here).
ALPHA = 0.01


def _reference(encoded: bytes, size: int, seed: int, **options) -> list[torch.Tensor]:
    augment = moco_v2_augmentation(size, **options)
    torch.manual_seed(seed)
    image = decode(encoded)
    return [augment(image).float(), augment(image).float()]


def _ours(encoded: bytes, size: int, seed: int, defer: bool, **options) -> list[torch.Tensor]:
    recipe = build_recipe(ViewRecipe("moco_pair", tuple(options.items())), size, defer)
    torch.manual_seed(seed)
    out = recipe(Source(encoded))
    if not defer:
        return [out["view1"].float(), out["view2"].float()]
    return [finish(out[k][None], out[f"{k}@ops"][None].numpy())[0] * 255 for k in ("view1", "view2")]


def _views(path: str, size: int, seeds, **options) -> list[torch.Tensor]:
    views = []
    with torch.inference_mode():
        for seed in seeds:
            encoded = PHOTOS[seed % len(PHOTOS)]
            views += (_reference(encoded, size, seed, **options) if path == "reference"
                      else _ours(encoded, size, seed, path == "defer", **options))
    return views


# ---------------------------------------------------------------- the draws


def test_draws_are_the_references_draws(monkeypatch):
    calls = []
    for cls, name in ((v2.RandomResizedCrop, "crop"), (v2.ColorJitter, "jitter"), (v2.RandomGrayscale, "grey"),
                      (v2.GaussianBlur, "blur"), (v2.RandomHorizontalFlip, "flip")):
        def transform(self, inpt, params, _original=cls.transform, _name=name):
            calls.append((_name, params))
            return _original(self, inpt, params)
        monkeypatch.setattr(cls, "transform", transform)
    view, source = MocoView(48), Source(PHOTOS[0])
    for seed in range(60):
        calls.clear()
        _reference(PHOTOS[0], 48, seed)
        torch.manual_seed(seed)
        draws = [view.draw(source), view.draw(source)]
        starts = [i for i, (name, _) in enumerate(calls) if name == "crop"]  # each view's calls start with its crop
        recorded = [calls[a:b] for a, b in zip(starts, starts[1:] + [len(calls)])]
        assert len(recorded) == 2
        for draw, seen in zip(draws, recorded):
            seen = dict(seen)
            assert seen["crop"] == {"top": draw.crop.top, "left": draw.crop.left, "height": draw.crop.height,
                                    "width": draw.crop.width}
            assert ("jitter" in seen) == draw.ops.jitter
            if draw.ops.jitter:
                factors = [seen["jitter"][k] for k in ("brightness_factor", "contrast_factor", "saturation_factor",
                                                       "hue_factor")]
                assert list(seen["jitter"]["fn_idx"].tolist()) == list(draw.ops.order)
                assert factors == list(draw.ops.factors)
            assert ("grey" in seen) == draw.ops.grey and ("flip" in seen) == draw.flip
            assert (seen["blur"]["sigma"][0] if "blur" in seen else None) == draw.ops.sigma


# ---------------------------------------------------------------- crops, through a reduced decode


def _coordinate_jpeg(width=500, height=375) -> bytes:
    """R encodes x, G encodes y: a view's extreme values give back the region it shows."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    image = np.stack([x, y, np.full_like(x, 128)], -1).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _area_aspect(view: torch.Tensor, width=500, height=375) -> tuple[float, float]:
    w = (view[0].max() - view[0].min()).item() / 255 * width
    h = (view[1].max() - view[1].min()).item() / 255 * height
    return w * h / (width * height), float(np.log(w / h))


@pytest.mark.parametrize("path", ["fast", "defer"])
def test_crop_area_and_aspect_have_the_references_distribution(path):
    encoded, size, plain = _coordinate_jpeg(), 64, {"jitter": 0.0, "p_gray": 0.0, "p_blur": 0.0}
    assert Source(encoded).pil(2).size == (250, 188)  # a 64 px view of a crop >= 128 px decodes at 1/2
    ours, theirs, paired = [], [], []
    with torch.inference_mode():
        for seed in range(150):
            ours += [_area_aspect(v) for v in _ours(encoded, size, seed, path == "defer", **plain)]
            theirs += [_area_aspect(v) for v in _reference(encoded, size, 10_000 + seed, **plain)]
            paired += [_area_aspect(v) for v in _reference(encoded, size, seed, **plain)]
    ours, theirs, paired = np.array(ours), np.array(theirs), np.array(paired)
    for column in range(2):
        assert ks_2samp(ours[:, column], theirs[:, column]).pvalue > ALPHA / 2
    assert np.abs(ours[:, 0] - paired[:, 0]).max() < 0.02  # the same seed: the same region
    assert np.abs(ours[:, 1] - paired[:, 1]).max() < 0.05


def test_draft_reduction_keeps_every_region_at_least_the_output_size():
    assert draft_reduction([200, 130], 64) == 2 and draft_reduction([600], 64) == 8
    assert draft_reduction([127], 64) == 1 and draft_reduction([], 64) == 1


# ---------------------------------------------------------------- colours


def _colour_stats(view: torch.Tensor) -> list[float]:
    """Mean R, G, B; mean HSV saturation and value; the saturation-weighted circular mean hue (cos, sin)."""
    pixels = view.reshape(3, -1).T.numpy()[::7] / 255
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in pixels])
    angle = 2 * np.pi * hsv[:, 0]
    weight = hsv[:, 1] / max(hsv[:, 1].sum(), 1e-9)
    return [*pixels.mean(0), hsv[:, 1].mean(), hsv[:, 2].mean(), (weight * np.cos(angle)).sum(),
            (weight * np.sin(angle)).sum()]


@pytest.mark.parametrize("path", ["fast", "defer"])
def test_colour_jitter_and_grey_have_the_references_distribution(path):
    # 96 px: more pixels than the lookup table's lattice, so the fast path goes through the table
    options = {"scale": (0.6, 1.0), "p_jitter": 1.0, "p_gray": 0.1, "p_blur": 0.0}
    ours = _views(path, 96, range(100), **options)
    theirs = _views("reference", 96, range(5_000, 5_100), **options)
    a, b = np.array([_colour_stats(v) for v in ours]), np.array([_colour_stats(v) for v in theirs])
    for column in range(a.shape[1]):
        assert ks_2samp(a[:, column], b[:, column]).pvalue > ALPHA / a.shape[1], column
    same_seeds = _views("reference", 96, range(100), **options)
    differences = torch.stack([(x - y).abs().mean() for x, y in zip(ours, same_seeds)])
    assert differences.mean() < 2.0 and differences.max() < 4.0  # levels of 255: uint8 rounding of the reference


@pytest.mark.parametrize("path", ["fast", "defer"])
def test_whole_recipe_matches_the_reference_at_224_for_the_same_seeds(path):
    ours, theirs = _views(path, 224, range(12)), _views("reference", 224, range(12))
    signed = torch.stack([(x - y).mean() for x, y in zip(ours, theirs)])
    absolute = torch.stack([(x - y).abs().mean() for x, y in zip(ours, theirs)])
    assert absolute.mean() < 2.0 and absolute.max() < 4.0 and signed.abs().max() < 2.5


def test_worker_and_device_ops_are_the_same_functions():
    g = torch.Generator().manual_seed(1)
    colours = torch.rand(1, 3, 1, 500, generator=g)
    for i in range(20):
        row = ColourOps(True, tuple(int(k) for k in torch.randperm(4, generator=g)),
                        tuple((torch.rand(4, generator=g) * torch.tensor([0.8, 0.8, 0.8, 0.2])
                               + torch.tensor([0.6, 0.6, 0.6, -0.1])).tolist()), i % 3 == 0, None).row()
        device = colour.apply_rows(colours, row[None], means=np.array([0.45], np.float32))[0, :, 0].T
        worker = worker_colour.chain(colours[0, :, 0].numpy(), row, 0.45).T
        assert np.abs(device.numpy() - worker).max() < 1e-5


def test_batched_ops_follow_each_images_own_order_and_match_torchvision():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 20, 20, generator=g)
    rows = np.stack([ColourOps(True, tuple(int(i) for i in torch.randperm(4, generator=g)),
                               (0.7 + 0.1 * i, 1.3 - 0.1 * i, 0.5 + 0.2 * i, -0.1 + 0.04 * i), i == 2,
                               None).row() for i in range(6)])
    assert rows.shape == (6, OPS_WIDTH)
    together = colour.apply_rows(images, rows)
    one_by_one = torch.cat([colour.apply_rows(images[i:i + 1], rows[i:i + 1]) for i in range(6)])
    assert torch.allclose(together, one_by_one, atol=1e-6)
    x, f = images[:1], torch.tensor([1.3])
    assert torch.allclose(colour.brightness(x, f), F.adjust_brightness(x, 1.3), atol=1e-6)
    # Kornia's grey weighs red 0.299, torchvision's 0.2989: a 1e-4 difference in the grey
    assert torch.allclose(colour.contrast(x, f), F.adjust_contrast(x, 1.3), atol=3e-4)
    assert torch.allclose(colour.saturation(x, f), F.adjust_saturation(x, 1.3), atol=3e-4)
    assert torch.allclose(colour.hue(x, torch.tensor([0.08])), F.adjust_hue(x, 0.08), atol=1e-4)


# ---------------------------------------------------------------- blur at a fixed sigma


def _sharpness(x: torch.Tensor) -> float:
    """Mean absolute Laplacian: what a blur takes away."""
    x = x.float()
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return lap.abs().mean().item()


@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0])
def test_blur_keeps_each_images_mean_and_takes_the_references_detail(sigma):
    kernel = moco_blur(224)[0]
    row = ColourOps(sigma=sigma).row()[None]
    for encoded in PHOTOS:
        view = Image.open(io.BytesIO(encoded)).convert("RGB").resize((224, 224), box=(80, 40, 380, 340))
        x = to_tensor(view)
        reference = F.gaussian_blur(x, [kernel, kernel], [sigma, sigma]).float()
        fast = worker_colour.blur(x, sigma).float()
        device = (colour.apply_rows(x[None].float() / 255, row, blur_kernel=kernel)[0] * 255).round()
        for ours in (fast, device):
            assert abs(ours.mean() - reference.mean()) < 0.5
            assert abs(ours.std() / reference.std() - 1) < 0.02
            assert abs(_sharpness(ours) / _sharpness(reference) - 1) < 0.03


# ---------------------------------------------------------------- the clean view


def test_clean_view_is_the_eval_transforms_region():
    recipe = build_recipe(ViewRecipe("clean_augmented"), 96)
    for encoded in PHOTOS:
        ours = recipe(Source(encoded))["clean"].float()
        reference = eval_transform(96)(decode(encoded)).float()
        assert (ours - reference).abs().mean() < 1.5
