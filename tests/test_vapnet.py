"""VAPNet (paper 004): the 340-box pool, RoIAlign against the crops, Eq. 7's EMA, gradient routing
through the mean encoders, Eqs. 5 / 6 against slow references, configs and the sweep files.

CPU only; timm's test_resnet / test_vit, or a pooling stand-in for the backbone, at 64 px.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from fgray.config import ConfigError
from fgray.sweep_file import load_sweep
from fgray.data.inputs import DatasetFacts, ViewRecipe
from fgray.data.views import GridCrops, build_recipe, grid_boxes
from fgray.losses import attribute_constraint, attribute_kl
from fgray.methods.configs_supervised import VAPNetConfig
from fgray.methods.vapnet import VAPNet
from fgray.models import build_backbone
from fgray.sweep import planned_trials
from fgray.validation import validate

SIZE = 64
FACTS = DatasetFacts(num_classes=5, image_size=SIZE)


def make(backbone: str = "test_resnet", **overrides) -> VAPNet:
    torch.manual_seed(0)
    cfg = VAPNetConfig(**{"attr_dim": 16, **overrides})
    return VAPNet(cfg, build_backbone(backbone, image_size=SIZE), FACTS)


def batch(method: VAPNet, n: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random images with M crops each, cut and drawn by the real recipe (as floats)."""
    g = torch.Generator().manual_seed(seed)
    recipe = build_recipe(method.cfg.inputs.views[0], SIZE)
    views = []
    for i in range(n):
        torch.manual_seed(seed * 100 + i)
        views.append(recipe(torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8, generator=g), None))
    out = {k: torch.stack([v[k] for v in views]) for k in views[0]}
    out = {k: v.float() / 255 if v.dtype == torch.uint8 else v for k, v in out.items()}
    out["label"] = torch.arange(n) % FACTS.num_classes
    return out


class PoolingBackbone(nn.Module):
    """A stand-in backbone whose 'feature map' is the image average-pooled by ``stride``."""

    def __init__(self, stride: int = 4):
        super().__init__()
        self.stride, self.num_features = stride, 3
        self.scale = nn.Parameter(torch.ones(()))  # one trainable weight, so optimisers have work

    def feature_map(self, images):
        return F.avg_pool2d(images, self.stride) * self.scale

    def pool(self, feature_map):
        return feature_map.mean(dim=(2, 3))

    def forward(self, images):
        return self.pool(self.feature_map(images))


# ------------------------------------------------------------------------------------------------
# Slow references, written from the equations


def ref_softmax(logits: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in logits]
    return [e / sum(exps) for e in exps]


def ref_constraint(p_local, a_local, p_global, a_global, temperature=1.0, reduction="batchmean") -> float:
    """Eq. 5 / Eq. 6 with softmax over the k attributes: for each image b and view i,
    sum_k P_k log(P_k / Q_k) for (P, Q) = (target of A_L^i, A_L^i) and (target of A_G^i, A_G^i), added;
    then batchmean: divided by the B x M (b, i) pairs; sum: by the B images (Eq. 6's sum over i, mean
    over images); mean: by the B x M x k elements. Inputs (B, M, k) as nested lists."""
    total, pairs, elements = 0.0, 0, 0
    for b in range(len(a_local)):
        for i in range(len(a_local[b])):
            pairs += 1
            elements += len(a_local[b][i])
            for target, attrs in ((p_local[b][i], a_local[b][i]), (p_global[b][i], a_global[b][i])):
                p, q = ref_softmax(target, temperature), ref_softmax(attrs, temperature)
                total += sum(pk * math.log(pk / qk) for pk, qk in zip(p, q))
    return total / {"batchmean": pairs, "sum": len(a_local), "mean": elements}[reduction]


def ref_linear(layer: nn.Linear, x: list[float]) -> list[float]:
    """W . x + b (Eqs. 2, 3), one output at a time."""
    w, bias = layer.weight.tolist(), layer.bias.tolist()
    return [sum(wk[c] * x[c] for c in range(len(x))) + bias[k] for k, wk in enumerate(w)]


# ------------------------------------------------------------------------------------------------
# Input sampling (§3.2)


def test_box_sampling_covers_exactly_the_340_box_pool():
    pool = {tuple(b) for b in grid_boxes(224).tolist()}
    assert len(pool) == 340
    sides = sorted({round(b[2] - b[0]) for b in pool})
    assert sides == [14, 28, 56, 112]  # 224 / n for n = 16, 8, 4, 2
    crops = GridCrops(224, count=4)
    torch.manual_seed(0)
    counts: dict[tuple, int] = {}
    draws = 3000
    for _ in range(draws):
        boxes = [tuple(b) for b in crops.sample().tolist()]
        assert len(set(boxes)) == 4  # M distinct cells per image
        for b in boxes:
            counts[b] = counts.get(b, 0) + 1
    assert set(counts) == pool  # every cell drawn, nothing outside the pool
    expected = 4 * draws / 340  # uniform over boxes (spec §7.4): ~35 each
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 339 + 5 * math.sqrt(2 * 339)  # 339 degrees of freedom, 5 sigma
    everything = GridCrops(224, count=340).sample()  # M = 340: a permutation of the pool
    assert {tuple(b) for b in everything.tolist()} == pool


def test_crops_are_cut_from_the_augmented_input_at_their_boxes():
    method = make()
    b = batch(method, n=2)
    assert b["crops"].shape == (2, 4, 3, SIZE, SIZE) and b["crop_boxes"].shape == (2, 4, 4)
    for image, crops, boxes in zip(b["image"], b["crops"], b["crop_boxes"]):
        for crop, (x1, y1, x2, y2) in zip(crops, boxes.int().tolist()):
            region = image[:, y1:y2, x1:x2][None]
            expected = F.interpolate(region, size=(SIZE, SIZE), mode="bilinear", antialias=True)[0]
            assert (crop - expected).abs().max() < 2 / 255  # bilinear resize (uint8 rounding)


# ------------------------------------------------------------------------------------------------
# Attribute sampling: RoIAlign of the global map at the crops' boxes (§3.3)


def test_roi_align_cuts_the_global_map_where_the_box_lies():
    """A map whose channels are its cells' x and y indices: the pooled region of a box is its centre
    in map coordinates, (x1 + x2) / 2 * w / W - 0.5 (cell j's centre sits at pixel (j + 0.5) * stride)."""
    method = make()
    height, width = 16, 8  # a non-square map of a 64 x 32 input: both strides 4
    ys, xs = torch.meshgrid(torch.arange(height.__float__()), torch.arange(width.__float__()), indexing="ij")
    fmap = torch.stack([xs, ys])[None]  # (1, 2, 16, 8)
    boxes = torch.tensor([[[4.0, 8.0, 12.0, 16.0], [10.0, 20.0, 30.0, 60.0], [2.0, 2.0, 30.0, 62.0]]])
    pooled = method._regions(fmap, boxes, (64, 32))[0]  # (3, 2)
    for (x1, y1, x2, y2), (px, py) in zip(boxes[0].tolist(), pooled.tolist()):
        assert px == pytest.approx((x1 + x2) / 2 / 4 - 0.5, abs=1e-5)
        assert py == pytest.approx((y1 + y2) / 2 / 4 - 0.5, abs=1e-5)


def test_region_features_line_up_with_the_crops_features():
    """With a backbone that average-pools the image, g(F_L^i) (the crop's mean) equals g(F_G^i) (RoIAlign
    of the global map at box i): on a ramp image both are the box's mean column / row. Boxes whose
    RoIAlign samples leave the map (cells at the image border) are clamped there and skipped."""
    cfg = VAPNetConfig(attr_dim=4, num_views=40, views={"scale": (1.0, 1.0), "jitter": 0.0})
    method = VAPNet(cfg, PoolingBackbone(stride=4), FACTS)
    ramp = torch.zeros(3, SIZE, SIZE, dtype=torch.uint8)
    ramp[0] = torch.arange(SIZE, dtype=torch.uint8)[None, :] * 3  # red: column
    ramp[1] = torch.arange(SIZE, dtype=torch.uint8)[:, None] * 2  # green: row
    recipe = build_recipe(cfg.inputs.views[0], SIZE)
    torch.manual_seed(0)
    views = recipe(ramp, None)  # the augmented X (maybe flipped), 40 cells and their boxes
    images, crops = views["image"][None].float(), views["crops"][None].float()
    boxes = views["crop_boxes"][None]
    fmap, local = method._encode(images, crops)
    regions = method._regions(fmap, boxes, images.shape[-2:])
    inside = ((boxes[0, :, :2] >= 2) & (boxes[0, :, 2:] <= SIZE - 2)).all(1)  # samples within the map
    assert inside.sum() >= 10
    # (up to the crops' rounding to uint8 pixels)
    torch.testing.assert_close(regions[0, inside, :2], local[0, inside, :2], atol=0.3, rtol=0)
    swapped = method._regions(fmap, boxes[..., [1, 0, 3, 2]], images.shape[-2:])  # x and y exchanged
    assert (swapped[0, inside, :2] - local[0, inside, :2]).abs().max() > 5


# ------------------------------------------------------------------------------------------------
# Mean encoders (Eq. 7) and where the gradients go


def test_mean_encoders_start_as_the_encoders_and_follow_eq_7():
    method = make(ema_ratio=0.3)
    for online, mean in ((method.attr_local, method.mean_local), (method.attr_global, method.mean_global)):
        assert all(torch.equal(p, q) for p, q in zip(online.parameters(), mean.parameters()))  # E^(0) = theta
        with torch.no_grad():
            for p in online.parameters():
                p.add_(torch.randn_like(p))
    before = {n: p.clone() for n, p in method.named_parameters() if n.startswith("mean_")}
    method.after_step(0.5)
    for name, new in before.items():
        online = method.get_parameter(name.replace("mean_", "attr_"))
        expected = (1 - 0.3) * new + 0.3 * online  # alpha weights the online parameters
        torch.testing.assert_close(method.get_parameter(name), expected, rtol=0, atol=1e-6)
    frozen = make(ema_ratio=0.0)
    with torch.no_grad():
        frozen.attr_local.weight.add_(1.0)
    frozen.after_step(0.5)
    assert not torch.equal(frozen.mean_local.weight, frozen.attr_local.weight)  # alpha 0: E stays theta^(0)


def test_gradients_reach_the_backbone_through_the_mean_encoders_outputs():
    method = make(use_ce=False)
    b = batch(method)
    out = method.training_step(b)
    out["loss"].backward()
    for name, p in method.named_parameters():
        if name.startswith("mean_"):
            assert p.grad is None and not p.requires_grad, name
    full = {n: p.grad.clone() for n, p in method.backbone.named_parameters()}
    # Only the path through the targets E[T](F): the online encoders' outputs detached.
    method.zero_grad(set_to_none=True)
    hooks = [m.register_forward_hook(lambda _m, _i, out: out.detach())
             for m in (method.attr_local, method.attr_global)]
    method.training_step(b)["loss"].backward()
    through_targets = {n: p.grad for n, p in method.backbone.named_parameters()}
    assert sum(float(g.abs().sum()) for g in through_targets.values() if g is not None) > 0
    # ... and it is part of the method's gradient: with the targets detached too, the gradient changes
    for hook in hooks:
        hook.remove()
    method.zero_grad(set_to_none=True)
    hooks = [m.register_forward_hook(lambda _m, _i, out: out.detach())
             for m in (method.mean_local, method.mean_global)]
    method.training_step(b)["loss"].backward()
    for hook in hooks:
        hook.remove()
    detached = {n: p.grad for n, p in method.backbone.named_parameters()}
    assert any(not torch.allclose(full[n], detached[n]) for n in full if full[n] is not None)


def test_ce_only_encodes_no_local_views_and_trains_only_backbone_and_classifier():
    method = make(constraint="none")
    assert [v.name for v in method.cfg.inputs.views] == ["crop_flip"]
    assert not hasattr(method, "attr_local") and not hasattr(method, "mean_local")
    b = batch(method)
    assert set(b) == {"image", "label"}
    encoded, feature_map = [], method.backbone.feature_map
    method.backbone.feature_map = lambda x: encoded.append(len(x)) or feature_map(x)
    out = method.training_step(b)
    assert encoded == [3]  # B images, no crops
    pooled = method.backbone(b["image"])
    torch.testing.assert_close(out["loss"], F.cross_entropy(method.classifier(pooled), b["label"]))
    assert set(out) == {"loss", "loss_ce", "train_acc", "feature_norm"}
    # the mean L2 norm of g(F) before normalisation, one image at a time
    norms = [math.sqrt(sum(v * v for v in row)) for row in pooled.tolist()]
    assert float(out["feature_norm"]) == pytest.approx(sum(norms) / len(norms), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# Eqs. 5 and 6


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean"])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_attribute_constraint_matches_the_slow_reference(temperature, reduction):
    g = torch.Generator().manual_seed(0)
    p_l, a_l, p_g, a_g = (3 * torch.randn(2, 3, 5, generator=g) for _ in range(4))
    ours = attribute_constraint(p_l, a_l, p_g, a_g, temperature, reduction)
    ref = ref_constraint(p_l.tolist(), a_l.tolist(), p_g.tolist(), a_g.tolist(), temperature, reduction)
    assert float(ours) == pytest.approx(ref, rel=1e-5)
    assert float(attribute_kl(a_l, a_l, reduction=reduction)) == pytest.approx(0.0, abs=1e-6)  # KL(P || P) = 0
    with pytest.raises(ValueError, match="reduction"):
        attribute_kl(p_l, a_l, reduction="none")


def test_default_reduction_is_batchmean_an_mth_of_the_sum_over_views():
    """Spec §6 / §7.6: KL summed over k, averaged over the B x M rows; the old form (summed over the M
    views, mean over B) is M times it, so under it lambda's weight grew with M."""
    g = torch.Generator().manual_seed(1)
    views = 4
    p_l, a_l, p_g, a_g = (2 * torch.randn(3, views, 7, generator=g) for _ in range(4))
    lists = [t.tolist() for t in (p_l, a_l, p_g, a_g)]
    assert VAPNetConfig().lc_reduction == "batchmean"
    default = float(attribute_constraint(p_l, a_l, p_g, a_g))
    assert default == pytest.approx(ref_constraint(*lists, reduction="batchmean"), rel=1e-5)
    old_sum = ref_constraint(*lists, reduction="sum")
    assert old_sum == pytest.approx(views * default, rel=1e-5) and default < old_sum / 2


@pytest.mark.parametrize("constraint,reduction", [("mean", None), ("plain", None), ("mean", "sum"), ("mean", "mean")])
def test_training_step_is_eq_9_with_eq_5_or_eq_6(constraint, reduction):
    """In eval mode (BatchNorm per image), rebuild g(F_L^i) from each crop alone, g(F_G^i) from
    RoIAlign of the image's map, the attributes by hand (Eqs. 2-3), and the crossed targets: Eq. 6
    applies the *mean* encoder of the other view (E[T_G] to F_L, E[T_L] to F_G), Eq. 5 the online one.
    reduction None: the config's default, batchmean."""
    extra = {} if reduction is None else {"lc_reduction": reduction}
    method = make(constraint=constraint, lam=3.0, attr_temperature=0.7, attr_dim=6, **extra)
    if constraint == "mean":  # make E differ from theta
        with torch.no_grad():
            for p in (*method.attr_local.parameters(), *method.attr_global.parameters()):
                p.add_(0.5 * torch.randn_like(p))
    method.eval()
    b = batch(method, n=2)
    with torch.no_grad():
        out = method.training_step(b)
        target_of_local = method.mean_global if constraint == "mean" else method.attr_global
        target_of_global = method.mean_local if constraint == "mean" else method.attr_local
        p_l, a_l, p_g, a_g, ce, norm = [], [], [], [], 0.0, 0.0
        for image, crops, boxes, label in zip(b["image"], b["crops"], b["crop_boxes"], b["label"]):
            fmap = method.backbone.feature_map(image[None])  # (1, C, 2, 2)
            local = [method.backbone(crop[None])[0].tolist() for crop in crops]
            stride = SIZE / fmap.shape[-1]
            regions = roi_align(fmap, [boxes], output_size=7, spatial_scale=1 / stride, sampling_ratio=2,
                                aligned=True).mean(dim=(2, 3)).tolist()
            p_l.append([ref_linear(target_of_local, x) for x in local])
            a_l.append([ref_linear(method.attr_local, x) for x in local])
            p_g.append([ref_linear(target_of_global, x) for x in regions])
            a_g.append([ref_linear(method.attr_global, x) for x in regions])
            logits = ref_linear(method.classifier, fmap.mean(dim=(2, 3))[0].tolist())
            ce += -math.log(ref_softmax(logits, 1.0)[int(label)]) / len(b["label"])
            norm += math.sqrt(sum(v * v for v in fmap.mean(dim=(2, 3))[0].tolist())) / len(b["label"])
    loss_c = ref_constraint(p_l, a_l, p_g, a_g, 0.7, reduction or "batchmean")
    assert float(out["loss_attr"]) == pytest.approx(loss_c, rel=1e-4)
    assert float(out["loss_ce"]) == pytest.approx(ce, rel=1e-4)
    assert float(out["loss"]) == pytest.approx(ce + 3.0 * loss_c, rel=1e-4)  # Eq. 9
    assert float(out["feature_norm"]) == pytest.approx(norm, rel=1e-4)  # ||g(F)||, batch mean


# ------------------------------------------------------------------------------------------------
# Backbones, configs, sweep files


def test_vit_backbone_roi_aligns_its_patch_grid():
    method = make("test_vit")
    b = batch(method)
    fmap = method.backbone.feature_map(b["image"])
    assert fmap.ndim == 4 and fmap.shape[-1] > 1  # patch tokens on their grid
    out = method.training_step(b)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and method.backbone.model.patch_embed.proj.weight.grad is not None


def test_config_validation():
    with pytest.raises(ConfigError, match="num_views 341 exceeds the 340 cells"):
        validate(VAPNetConfig, {"num_views": 341})
    with pytest.raises(ConfigError, match="nothing to train"):
        validate(VAPNetConfig, {"use_ce": False, "constraint": "none"})
    with pytest.raises(ConfigError, match="grids"):
        validate(VAPNetConfig, {"grids": [2, 2]})
    with pytest.raises(ConfigError, match="ema_ratio"):
        validate(VAPNetConfig, {"ema_ratio": 1.0})  # Eq. 7: alpha in [0, 1)
    cfg = VAPNetConfig(num_views=8, grids=(2, 4), views={"sampling": "grid", "jitter": 0.1})
    recipe = cfg.inputs.views[0]
    assert recipe == ViewRecipe("grid_crops", (("scale", (0.77, 0.77)), ("jitter", 0.1), ("count", 8),
                                               ("grids", (2, 4)), ("sampling", "grid")))
    assert cfg.supervised and not VAPNetConfig(use_ce=False).supervised  # Eq. 6 alone reads no labels


def test_param_groups_split_backbone_and_new_layers():
    method = make(head_lr_scale=10.0)
    groups = {g["name"]: g for g in method.param_groups()}
    assert groups["heads"]["lr_scale"] == 10.0
    heads = {id(p) for p in groups["heads"]["params"]}
    assert heads == {id(p) for m in (method.attr_local, method.attr_global, method.classifier)
                     for p in m.parameters()}
    assert len(groups["backbone"]["params"]) == len(list(method.backbone.parameters()))


SWEEPS = ["vapnet_losses", "vapnet_patches", "vapnet_attributes", "vapnet_ema", "vapnet_lambda", "vapnet_main"]


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_files_validate_and_every_row_has_the_papers_numbers(name):
    from fgray.report import _paper_row

    for profile in (None, "smoke"):
        sweep = load_sweep(f"sweeps/{name}.yaml", profile=profile)
        assert sweep.method.name == "vapnet"
        rows, count = planned_trials(sweep)
        assert rows and count == len(rows)
        for row in rows:
            assert _paper_row(sweep, row) is not None, f"{name} ({profile}): no paper row for {row}"


def test_smoke_gives_each_dataset_row_its_own_synthetic_stand_in():
    sweep = load_sweep("sweeps/vapnet_main.yaml", profile="smoke")
    assert sweep.data.name == "synthetic"
    rows = sweep.search.points
    assert [r.get("data.synthetic.seed") for r in rows] == [0, 1, 2, 3]
    assert not any(k in r for r in rows for k in ("data.name", "data.root"))
    assert rows[3]["eval.ks"] == [1, 10, 20, 30, 40]  # In-Shop's K list stays with its row
    matches = [row.match for row in sweep.paper.rows]
    assert matches == [{"data.synthetic.seed": i} for i in range(4)]


def test_separate_crop_bn_leaves_the_running_statistics_to_the_whole_images():
    method = make(crop_bn="separate")
    b = batch(method)
    reference = make(crop_bn="separate")
    method.training_step(b)
    reference.backbone.feature_map(b["image"])  # train mode: the images alone update the statistics
    stats = [(n, t) for n, t in method.backbone.named_buffers() if "running_" in n]
    assert stats and all(torch.equal(t, reference.backbone.get_buffer(n)) for n, t in stats)
    counts = [(n, t) for n, t in method.backbone.named_buffers() if "num_batches_tracked" in n]
    assert counts and all(int(t) == 1 for _, t in counts)  # the crops' pass is not counted either
    assert VAPNetConfig().crop_bn == "separate"  # the default: F_CNN(X), F_CNN(V) as two passes
    momenta = {m.momentum for m in method.backbone.modules() if isinstance(m, nn.BatchNorm2d)}
    assert momenta == {0.1}  # restored after the crops' pass
    joint = make(crop_bn="joint")
    joint.training_step(b)
    assert any(not torch.equal(t, joint.backbone.get_buffer(n)) for n, t in stats)
