"""View recipes (fgray.data.views): contract with inputs.RECIPES, seeding, box following by hand."""
from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from fgray.data.inputs import RECIPES, ViewRecipe
from fgray.data.views import (build_recipe, crop_flip_with_box, crop_regions, grid_boxes,
                              mean_blur_region, object_crop)

S = 64
BOX = torch.tensor([10.0, 20.0, 50.0, 60.0])  # x1, y1, x2, y2 in the 100 x 80 image


def _image(height=80, width=100, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)


def _run(name, seed, image=None, box=BOX, **options):
    recipe = build_recipe(ViewRecipe(name, tuple(options.items())), S)
    torch.manual_seed(seed)
    return recipe(_image() if image is None else image, box)


@pytest.fixture
def fixed_crop(monkeypatch):
    """Force RandomResizedCrop's parameters (top, left, height, width); the flip stays random."""
    def force(top, left, height, width):
        params = dict(top=top, left=left, height=height, width=width)
        monkeypatch.setattr(v2.RandomResizedCrop, "make_params", lambda self, flat: params)
    return force


def _flipped(image, out, top, left, height, width) -> bool:
    """Whether ``out`` is the flipped (True) or plain (False) resized crop of ``image``."""
    plain = F.resized_crop(image, top, left, height, width, [S, S], antialias=True)
    if torch.equal(out, plain):
        return False
    assert torch.equal(out, F.horizontal_flip(plain))
    return True


# ---------------------------------------------------------------- contract


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_keys_shapes_dtypes_match_recipes(name):
    out = _run(name, 0)
    assert tuple(out) == RECIPES[name].keys
    for key, value in out.items():
        if key == "crops":
            assert value.shape == (4, 3, S, S) and value.dtype == torch.uint8
        elif key == "crop_boxes":
            assert value.shape == (4, 4) and value.dtype == torch.float32
        elif key == "has_background":
            assert value.shape == () and value.dtype == torch.bool
        else:
            assert value.shape == (3, S, S) and value.dtype == torch.uint8, key


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_same_seed_same_views_other_seed_other_views(name):
    first, again, other = _run(name, 7), _run(name, 7), _run(name, 8)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_unknown_option_and_missing_box_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown options \\['cnt'\\]"):
        build_recipe(ViewRecipe("grid_crops", (("cnt", 2),)), S)
    with pytest.raises(ValueError, match="needs the image's box"):
        _run("object_background", 0, box=None)
    with pytest.raises(ValueError, match="count must be in 1..20"):
        build_recipe(ViewRecipe("grid_crops", (("count", 21), ("grids", (2, 4)))), S)


def test_pair_views_are_independent_draws():
    out = _run("moco_pair", 3)
    assert not torch.equal(out["view1"], out["view2"])


def test_pair_options_reach_the_augmentation():
    image = _image(S, S)  # whole-image crop, no colour change, grey or blur: the image or its mirror
    out = _run("moco_pair", 0, image=image, scale=(1.0, 1.0), jitter=0.0, p_gray=0.0, p_blur=0.0)
    for view in out.values():
        assert torch.equal(view, image) or torch.equal(view, F.horizontal_flip(image))


def test_crop_flip_scale_option_and_clean_view():
    image = _image(S, S)
    out = _run("crop_flip", 0, image=image, scale=(1.0, 1.0))["image"]  # whole image, maybe flipped
    assert torch.equal(out, image) or torch.equal(out, F.horizontal_flip(image))
    clean = _run("clean_augmented", 0, image=image, eval_crop=1.0)["clean"]
    assert torch.equal(clean, image)


# ---------------------------------------------------------------- boxes follow the augmentation

# (crop top, left, height, width) -> the followed box, unflipped and flipped, computed by hand for
# the 100 x 80 image, BOX = (10, 20, 50, 60), output 64 x 64: shift by (left, top), clamp to the
# crop, scale by 64 / width and 64 / height, mirror x -> 64 - x.
HAND = [
    # (10-20, 20-10, 50-20, 60-10) -> clamp (0, 10, 30, 40) -> x 1.6, y 1.6
    ((10, 20, 40, 40), (0.0, 16.0, 48.0, 64.0), (16.0, 16.0, 64.0, 64.0)),
    # (-20, 15, 20, 55) -> clamp (0, 15, 20, 50) -> x 2.56, y 1.28
    ((5, 30, 50, 25), (0.0, 19.2, 51.2, 64.0), (12.8, 19.2, 64.0, 64.0)),
    # whole image: x 0.64, y 0.8
    ((0, 0, 80, 100), (6.4, 16.0, 32.0, 48.0), (32.0, 16.0, 57.6, 48.0)),
    # the crop starts right of the box: zero width
    ((0, 60, 40, 40), (0.0, 32.0, 0.0, 64.0), (64.0, 32.0, 64.0, 64.0)),
]


@pytest.mark.parametrize("params,plain,flipped", HAND)
def test_box_follows_crop_resize_flip_hand_computed(fixed_crop, params, plain, flipped):
    fixed_crop(*params)
    image, seen = _image(), set()
    for seed in range(20):  # both flip outcomes occur
        torch.manual_seed(seed)
        out, box = crop_flip_with_box(image, BOX, S)
        was_flipped = _flipped(image, out, *params)
        expected = torch.tensor(flipped if was_flipped else plain)
        torch.testing.assert_close(box, expected, rtol=0, atol=1e-4)
        seen.add(was_flipped)
    assert seen == {False, True}


def test_object_background_degenerate_box_falls_back_to_whole_image(fixed_crop):
    fixed_crop(0, 60, 40, 40)  # the crop misses the box
    out = _run("object_background", 0)
    assert torch.equal(out["object"], out["image"]) and torch.equal(out["background"], out["image"])
    assert not out["has_background"]


def test_has_background_by_box_cover_of_the_stored_image():
    assert _run("object_background", 0)["has_background"]  # 40 x 40 of 100 x 80: 20 %
    big = torch.tensor([0.0, 0.0, 90.0, 80.0])  # 90 %
    assert not _run("object_background", 0, box=big, scale=(1.0, 1.0))["has_background"]
    assert not _run("object_background", 0, background_max_cover=0.1)["has_background"]


def test_background_blurs_exactly_the_followed_box():
    image, box = _image(), torch.tensor([30.0, 10.0, 70.0, 50.0])
    for seed in range(5):
        out = _run("object_background", seed, image=image, box=box, scale=(0.6, 1.0))
        torch.manual_seed(seed)  # the recipe's draw, replayed
        augmented, followed = crop_flip_with_box(image, box, S, (0.6, 1.0))
        assert torch.equal(out["image"], augmented)
        x1, y1, x2, y2 = (int(round(v)) for v in followed.tolist())
        inside = torch.zeros(S, S, dtype=torch.bool)
        inside[y1:y2, x1:x2] = True
        assert torch.equal(out["background"][:, ~inside], augmented[:, ~inside])
        assert not torch.equal(out["background"][:, inside], augmented[:, inside])


def _slow_mean_blur(image, region, kernel):
    top, left, bottom, right = region
    height, width = image.shape[-2:]
    out, pad = image.clone(), kernel // 2
    for y in range(top, bottom):
        for x in range(left, right):
            window = image[:, max(y - pad, 0):min(y + pad + 1, height),
                           max(x - pad, 0):min(x + pad + 1, width)]
            out[:, y, x] = window.double().mean((1, 2)).round().to(torch.uint8)
    return out


@pytest.mark.parametrize("region,kernel", [((5, 3, 20, 30), 5), ((0, 0, 12, 40), 9),
                                           ((30, 50, 40, 64), 7)])
def test_mean_blur_matches_slow_reference(region, kernel):
    image = _image(40, 64)
    fast, slow = mean_blur_region(image, region, kernel), _slow_mean_blur(image, region, kernel)
    assert (fast.int() - slow.int()).abs().max() <= 1  # float32 vs float64 at .5 ties
    assert (fast != slow).float().mean() < 0.01


def test_object_crop_preserves_shape():
    image = _image(S, S)
    box = torch.tensor([16.0, 8.0, 48.0, 24.0])  # 32 wide, 16 tall
    # pad: the box's 32 x 16 pixels -> 64 x 32, centred rows 16..48, zeros above and below
    padded = object_crop(image, box, S, fill="pad")
    region = F.resized_crop(image, 8, 16, 16, 32, [32, 64], antialias=True)
    assert torch.equal(padded[:, 16:48], region)
    assert not padded[:, :16].any() and not padded[:, 48:].any()
    # context: the 32 x 32 square centred on the box: rows 0..32, columns 16..48
    square = object_crop(image, box, S, fill="context")
    assert torch.equal(square, F.resized_crop(image, 0, 16, 32, 32, [S, S], antialias=True))
    # at the border the square leaves the image: 8 zero rows above (-> ~16 output rows)
    corner = object_crop(image, torch.tensor([0.0, 0.0, 32.0, 16.0]), S)
    padded_square = F.pad(image[:, :24, :32], [0, 8, 0, 0])  # left, top, right, bottom
    assert torch.equal(corner, F.resize(padded_square, [S, S], antialias=True))
    assert not corner[:, :15].any()


# ---------------------------------------------------------------- grid crops


def test_grid_pool_has_340_cells_with_hand_computed_edges():
    pool = grid_boxes(S)
    assert pool.shape == (340, 4) and pool.dtype == torch.float32
    assert pool[0].tolist() == [0.0, 0.0, 32.0, 32.0]  # 2-grid, row 0, column 0
    assert pool[1].tolist() == [32.0, 0.0, 64.0, 32.0]  # 2-grid, row 0, column 1
    assert pool[4 + 6].tolist() == [32.0, 16.0, 48.0, 32.0]  # 4-grid, row 1, column 2
    assert pool[-1].tolist() == [60.0, 60.0, 64.0, 64.0]  # 16-grid, last cell
    assert grid_boxes(100, (8,))[1].tolist() == [12.5, 0.0, 25.0, 12.5]  # continuous edges


def test_grid_crops_are_distinct_pool_cells_and_their_resized_regions():
    pool = grid_boxes(S)
    for seed in range(5):
        out = _run("grid_crops", seed, count=6)
        boxes = out["crop_boxes"]
        assert boxes.shape == (6, 4) and out["crops"].shape == (6, 3, S, S)
        assert ((boxes >= 0) & (boxes <= S)).all()
        matches = (boxes[:, None] == pool[None]).all(-1)  # (6, 340)
        assert (matches.sum(1) == 1).all() and len(set(matches.int().argmax(1).tolist())) == 6
        for crop, (x1, y1, x2, y2) in zip(out["crops"], boxes.int().tolist()):
            expected = F.resized_crop(out["image"], y1, x1, y2 - y1, x2 - x1, [S, S])
            assert torch.equal(crop, expected)


def test_fractional_cells_are_cropped_at_rounded_pixel_edges():
    recipe = build_recipe(ViewRecipe("grid_crops", (("count", 9), ("grids", (3,)))), 60)
    torch.manual_seed(0)
    out = recipe(_image(), None)
    edges = {0.0, 20.0, 40.0, 60.0}  # 60 / 3 = 20: exact
    assert set(out["crop_boxes"].flatten().tolist()) == edges
    recipe = build_recipe(ViewRecipe("grid_crops", (("count", 8), ("grids", (8,)))), 60)
    boxes = recipe(_image(), None)["crop_boxes"]  # 7.5 px cells: edges 0, 8 (7.5), 15, 22 ...
    assert torch.equal(boxes, boxes.round()) and ((boxes[:, 2:] - boxes[:, :2]) >= 7).all()
    ramp = torch.arange(S, dtype=torch.float32).expand(3, S, S).to(torch.uint8)  # value = column
    crop = crop_regions(ramp, torch.tensor([[10.0, 0.0, 42.0, 64.0]]), 32)[0]
    assert torch.equal(crop[0, 0], torch.arange(10, 42, dtype=torch.uint8))  # 32 px -> 32 px


def test_grid_options_grids_and_sampling():
    out = _run("grid_crops", 0, count=4, grids=(2,))
    assert sorted(map(tuple, out["crop_boxes"].tolist())) == sorted(
        map(tuple, grid_boxes(S, (2,)).tolist()))
    # grid sampling: each grid equally likely, so the 2-grid's 4 cells come up far more often
    recipe = build_recipe(ViewRecipe("grid_crops", (("count", 1), ("sampling", "grid"))), S)
    torch.manual_seed(0)
    draws = [recipe(_image(S, S), None)["crop_boxes"][0] for _ in range(200)]
    big = sum(float(b[2] - b[0]) == S / 2 for b in draws)
    assert 25 <= big <= 80  # ~50 expected; uniform over boxes would give ~2


def test_jitter_option_and_grid_crops_image_is_crop_flips_with_the_same_seed():
    image = _image(S, S)
    plain = _run("crop_flip", 3, image=image, scale=(0.5, 1.0))["image"]
    jittered = _run("crop_flip", 3, image=image, scale=(0.5, 1.0), jitter=0.4)["image"]
    assert not torch.equal(plain, jittered)
    # the jitter is drawn after the crop: the same geometry (a two-level grey image stays two-level)
    flat = torch.full((3, S, S), 200, dtype=torch.uint8)
    flat[:, :, : S // 3] = 40  # a dark band on the left
    for seed in range(4):
        a = _run("crop_flip", seed, image=flat, scale=(0.5, 1.0))["image"]
        b = _run("crop_flip", seed, image=flat, scale=(0.5, 1.0), jitter=0.4)["image"]
        assert torch.equal(a == a.min(), b == b.min())
    # VAPNet's CE-only rows read crop_flip, the others grid_crops: the same augmented X per seed
    for seed in range(4):
        grid = _run("grid_crops", seed, image=image, scale=(0.5, 1.0), jitter=0.4)["image"]
        assert torch.equal(grid, _run("crop_flip", seed, image=image, scale=(0.5, 1.0), jitter=0.4)["image"])
