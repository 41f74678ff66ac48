"""ASS (paper 000, spec ../shared/specs/ass.md): the MAE masking and decoder (§2.2), the three loss terms
against slow loop references written from §2.2-2.4, the method's step (what trains in each stage of
§2.6, the combinations of §2.5, the config's stages and inputs), the selector preflight and an fgray
checkpoint used as the frozen selector (§1). The selector (§2.1) is in tests/test_selection.py.
Small models: timm ``test_vit`` at 32 px (2 x 2 patches of 16)."""
from __future__ import annotations

import math
import os

import pydantic
import pytest
import timm
import torch
import torch.nn.functional as F

from fgray import checkpoint
from fgray.config import ExperimentConfig
from fgray.data.inputs import DatasetFacts, EncoderSpec
from fgray.engine import DeclaredBatch, build_method
from fgray.losses import masked_patch_mse, paired_info_nce, reconstruction_triplet
from fgray.methods.ass import ASS
from fgray.methods.configs_ass import ASSConfig, SelectorConfig
from fgray.models.encoders import build_encoder
from fgray.models.mae import MAEDecoder, encode_visible, patchify, random_masking, unpatchify
from fgray.stages import StagePlan, stage_param_groups
from fgray.validation import ConfigError
from tests.declared import declared_batch

IMAGE_SIZE = 32
FACTS = DatasetFacts(num_classes=4, class_names=("a", "b", "c", "d"), image_size=IMAGE_SIZE)


pytestmark = pytest.mark.usefixtures("one_thread")


def make(variant: dict | None = None, seed: int = 0):
    torch.manual_seed(seed)
    raw = {"name": "ass", **(variant or {})}
    method_cfg = {**raw, **ASS.smoke_overrides(raw)}  # the smoke profile merges the variant's sections
    experiment = ExperimentConfig(method=method_cfg, backbone={"name": "test_vit"},
                                  data={"image_size": IMAGE_SIZE}, train={"lr": 0.05, "epochs": 2})
    return build_method(experiment, FACTS), experiment


def batch_for(method, n: int = 8, seed: int = 1) -> DeclaredBatch:
    inputs = method.cfg.inputs
    return DeclaredBatch(declared_batch(inputs, FACTS, n=n, seed=seed), method.name, inputs.keys)


def small_vit():
    torch.manual_seed(0)
    return timm.create_model("test_vit", img_size=32, num_classes=0).eval()


# ------------------------------------------------------------------------------------ masking (§2.2)


def test_patchify_layout_matches_a_loop_reference():
    p = 4
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, p)
    grid_h, grid_w = 8 // p, 12 // p
    assert patches.shape == (2, grid_h * grid_w, p * p * 3)
    for b in range(2):
        for i in range(grid_h):
            for j in range(grid_w):
                block = images[b, :, i * p:(i + 1) * p, j * p:(j + 1) * p]  # (3, p, p)
                expected = [float(block[c, y, x]) for y in range(p) for x in range(p) for c in range(3)]
                assert patches[b, i * grid_w + j].tolist() == expected  # (p, p, 3) row-major


def test_unpatchify_inverts_patchify():
    images = torch.randn(3, 3, 16, 16)
    for p in (2, 4, 8):
        torch.testing.assert_close(unpatchify(patchify(images, p), p), images, rtol=0, atol=0)
    patches = torch.randn(2, 9, 4 * 4 * 3)
    torch.testing.assert_close(patchify(unpatchify(patches, 4), 4), patches, rtol=0, atol=0)


def coded_tokens(b: int, length: int, dim: int) -> torch.Tensor:
    """tokens[i, j] = (1000 i + j) everywhere: each token names its image and position."""
    code = 1000 * torch.arange(b)[:, None] + torch.arange(length)[None, :]
    return code[..., None].float().expand(b, length, dim).clone()


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75, 0.9])
def test_random_masking_keeps_the_visible_tokens_and_restores_their_positions(ratio):
    b, length, dim = 4, 20, 3
    tokens = coded_tokens(b, length, dim)
    torch.manual_seed(0)
    visible, mask, restore = random_masking(tokens, ratio)
    keep = round(length * (1 - ratio))
    assert visible.shape == (b, keep, dim) and mask.shape == (b, length) and mask.dtype == torch.bool
    assert restore.shape == (b, length)
    assert ((~mask).sum(dim=1) == keep).all()
    for i in range(b):
        seen = sorted(int(v) for v in visible[i, :, 0])
        assert seen == sorted(int(v) for v in tokens[i, ~mask[i], 0])  # the unmasked tokens, some order
        assert (visible[i] == visible[i, :, :1]).all()  # whole tokens, not mixed values
        assert sorted(restore[i].tolist()) == list(range(length))  # a permutation
    # [visible; placeholders] re-assembled with ids_restore: every visible token back where it was
    placeholder = torch.full((b, length - keep, dim), -1.0)
    full = torch.cat([visible, placeholder], dim=1).gather(1, restore[..., None].expand(-1, -1, dim))
    torch.testing.assert_close(full[~mask], tokens[~mask])
    assert (full[mask] == -1).all()


def test_random_masking_draws_a_fresh_subset_per_image():
    torch.manual_seed(1)
    _, mask, _ = random_masking(torch.zeros(16, 12, 2), 0.5)
    assert len({tuple(row.tolist()) for row in mask}) > 1


def test_encode_visible_shapes_on_test_vit():
    vit = small_vit()
    images = torch.randn(3, 3, 32, 32)
    prefix, length = vit.num_prefix_tokens, vit.patch_embed.num_patches
    for ratio in (0.0, 0.5, 0.75):
        tokens, mask, restore = encode_visible(vit, images, ratio)
        keep = round(length * (1 - ratio))
        assert tokens.shape == (3, prefix + keep, vit.embed_dim)
        assert mask.shape == (3, length) and ((~mask).sum(1) == keep).all() and restore.shape == (3, length)


def test_encode_visible_without_masking_is_the_vit_up_to_the_shuffle():
    """Position embeddings are added before the shuffle, so with nothing masked the ViT sees the same
    set of tokens as ``forward_features``: the class token agrees and the patch tokens, put back
    in place with ids_restore, too."""
    vit = small_vit()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = vit.forward_features(images)
        torch.manual_seed(3)
        tokens, mask, restore = encode_visible(vit, images, 0.0)
    prefix = vit.num_prefix_tokens
    assert not mask.any()
    torch.testing.assert_close(tokens[:, :prefix], reference[:, :prefix], atol=1e-5, rtol=1e-5)
    placed = tokens[:, prefix:].gather(1, restore[..., None].expand(-1, -1, tokens.shape[2]))
    torch.testing.assert_close(placed, reference[:, prefix:], atol=1e-5, rtol=1e-5)


def test_mae_decoder_shapes_and_unshuffle():
    b, prefix, length, dim, p = 2, 1, 9, 24, 4
    decoder = MAEDecoder(dim, length, prefix, p, width=16, depth=1, heads=2).eval()
    tokens = torch.randn(b, prefix + length, dim)
    torch.manual_seed(0)
    visible, mask, restore = random_masking(tokens[:, prefix:], 2 / 3)
    pred, hidden = decoder(torch.cat([tokens[:, :prefix], visible], dim=1), restore)
    assert pred.shape == (b, length, p * p * 3) and hidden.shape == (b, length, 16)
    # nothing masked: two different shuffles of the same tokens decode identically once restored
    outputs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        visible, mask, restore = random_masking(tokens[:, prefix:], 0.0)
        outputs.append(decoder(torch.cat([tokens[:, :prefix], visible], dim=1), restore)[0])
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- losses vs references


def reference_masked_mse(pred, target, mask) -> float:
    """§2.2 L_gen: per image, the mean over its masked patches of the patch's squared error (averaged
    over the patch's values, MAE's MSE); then the mean over images. No patch masked: all count."""
    b, length, values = pred.shape
    none = not any(bool(mask[i, j]) for i in range(b) for j in range(length))
    total = 0.0
    for i in range(b):
        counted = [j for j in range(length) if none or bool(mask[i, j])]
        errors = [sum((float(pred[i, j, v]) - float(target[i, j, v])) ** 2 for v in range(values)) / values
                  for j in counted]
        total += sum(errors) / len(counted)
    return total / b


def reference_triplet(a, p, n, margin) -> float:
    """§2.3: mean_i max(0, ||a_i - p_i|| - ||a_i - n_i|| + m)."""
    def dist(u, v):
        return math.sqrt(sum((float(x) - float(y)) ** 2 for x, y in zip(u, v)))

    return sum(max(0.0, dist(a[i], p[i]) - dist(a[i], n[i]) + margin) for i in range(len(a))) / len(a)


def reference_paired_info_nce(q, k, t) -> float:
    """§2.3-2.4: mean_i -log exp(q_i . k_i / T) / sum_j exp(q_i . k_j / T), j over all M keys."""
    total = 0.0
    for i in range(len(q)):
        sims = [sum(float(x) * float(y) for x, y in zip(q[i], k[j])) / t for j in range(len(k))]
        total += -(sims[i] - math.log(sum(math.exp(s) for s in sims)))
    return total / len(q)


def test_masked_patch_mse_matches_the_reference():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 6, 12, generator=g), torch.randn(3, 6, 12, generator=g)
    mask = torch.tensor([[1, 0, 1, 0, 0, 0], [1, 1, 1, 1, 0, 1], [0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    value = float(masked_patch_mse(pred, target, mask))
    assert value == pytest.approx(reference_masked_mse(pred, target, mask), rel=1e-5)
    # only the masked patches count: changing the unmasked ones changes nothing
    moved = torch.where(mask[..., None], pred, pred + 10)
    assert float(masked_patch_mse(moved, target, mask)) == pytest.approx(value)
    # per-image mean first: image 2's single patch weighs as much as image 1's five
    assert value != pytest.approx(
        float(((pred - target).pow(2).mean(-1) * mask).sum() / mask.sum()))


def test_masked_patch_mse_counts_every_patch_when_none_is_masked():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    none = torch.zeros(2, 4, dtype=torch.bool)
    value = float(masked_patch_mse(pred, target, none))
    assert value == pytest.approx(reference_masked_mse(pred, target, none), rel=1e-5)
    assert value == pytest.approx(float(F.mse_loss(pred, target)), rel=1e-5)


def test_reconstruction_triplet_matches_the_reference():
    g = torch.Generator().manual_seed(2)
    a, p, n = (F.normalize(torch.randn(6, 5, generator=g), dim=1) for _ in range(3))
    for margin in (0.1, 0.5, 1.0):
        value = float(reconstruction_triplet(a, p, n, margin))
        assert value == pytest.approx(reference_triplet(a, p, n, margin), abs=2e-5)
    # a positive equal to the anchor and a far negative: zero loss
    assert float(reconstruction_triplet(a, a, -a, 1.0)) == pytest.approx(0.0, abs=1e-5)


def test_paired_info_nce_matches_the_reference():
    g = torch.Generator().manual_seed(3)
    q = F.normalize(torch.randn(4, 6, generator=g), dim=1)
    for keys in (4, 8):  # M = N (intra) and M = 2N (inter option: the 2N reconstructions)
        k = F.normalize(torch.randn(keys, 6, generator=g), dim=1)
        for t in (0.1, 0.5):
            expected = reference_paired_info_nce(q, k, t)
            assert float(paired_info_nce(q, k, t)) == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------------- method step


def step(method, batch, stage=None):
    method.zero_grad(set_to_none=True)
    if stage is not None:
        method.start_stage(stage)
    out = method.training_step(batch)
    out["loss"].backward()
    return out


def has_gradient(module) -> bool:
    grads = [p.grad for p in module.parameters()]
    return all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_pretrain_stage_trains_encoder_decoder_and_heads_not_proxies():
    method, experiment = make()
    pretrain, finetune = StagePlan.of(experiment).stages
    assert (pretrain.name, finetune.name) == ("pretrain", "finetune")
    stage_param_groups(method, pretrain)
    out = step(method, batch_for(method), pretrain)
    assert torch.isfinite(out["loss"]) and set(out) == {"loss", "loss_gen", "loss_inter", "loss_intra"}
    for part in (method.backbone, method.decoder, method.head, method.shared_head, method.aux_head):
        assert has_gradient(part), type(part).__name__
    assert method.proxies.grad is None


def test_pretrain_loss_does_not_use_the_proxies_even_when_they_are_trainable():
    method, _ = make()
    method.proxies.requires_grad_(True)
    step(method, batch_for(method))
    assert method.proxies.grad is None


def test_finetune_stage_trains_encoder_and_proxies_only():
    method, experiment = make()
    finetune = StagePlan.of(experiment).stages[1]
    stage_param_groups(method, finetune)
    out = step(method, batch_for(method), finetune)
    assert set(out) == {"loss", "loss_finetune"} and torch.isfinite(out["loss"])
    assert has_gradient(method.backbone)
    assert method.proxies.grad is not None and method.proxies.grad.abs().sum() > 0
    for part in (method.decoder, method.head, method.shared_head, method.aux_head):
        assert all(p.grad is None for p in part.parameters()), type(part).__name__


def test_the_selector_is_not_part_of_the_model():
    method, _ = make()
    names = [name for name, _ in method.named_parameters()] + [name for name, _ in method.named_buffers()]
    assert not [name for name in names if "selector" in name]
    grouped = {id(p) for group in method.param_groups() for p in group["params"]}
    assert grouped == {id(p) for p in method.parameters()}  # every parameter is the encoder's or a head's
    group_names = [group["name"] for group in method.param_groups()]
    assert group_names == ["encoder", "pretrain_heads", "proxies"]


def test_labels_do_not_change_the_pretraining_loss():
    method, _ = make()
    batch = batch_for(method)
    shuffled = DeclaredBatch({**batch, "label": batch["label"].flip(0) + 1}, method.name, tuple(batch))
    losses = []
    for b in (batch, shuffled):
        torch.manual_seed(5)
        losses.append({k: float(v.detach()) for k, v in method.training_step(b).items()})
    assert losses[0] == losses[1]


@pytest.mark.parametrize("form", ["convex", "code"])
def test_loss_form_combines_the_parts_as_spec_2_5(form):
    lam = 0.4
    method, _ = make({"loss_form": form, "lam": lam})
    out = {k: v.detach() for k, v in method.training_step(batch_for(method)).items()}
    gen, inter, intra = (float(out[k]) for k in ("loss_gen", "loss_inter", "loss_intra"))
    expected = ((1 - lam) * gen + lam * (inter + intra) if form == "convex"
                else 0.7 * gen + lam * inter + (1 - lam) * intra)
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-5)
    assert min(gen, inter, intra) >= 0


def test_loss_gen_is_the_masked_mse_of_the_decoder_prediction():
    """L_gen of a step, recomputed from the same draws: the decoder's prediction against the image's
    patches on the masked patches only (§2.2)."""
    method, _ = make()
    batch = batch_for(method)
    torch.manual_seed(7)
    with torch.no_grad():
        out = method.training_step(batch)
    torch.manual_seed(7)
    with torch.no_grad():
        tokens, mask, restore = encode_visible(method.backbone.model, batch["image"], method.cfg.mask_ratio)
        predicted, _ = method.decoder(tokens, restore)
    target = patchify(batch["image"], method.patch)
    assert mask.any() and not mask.all()
    assert float(out["loss_gen"]) == pytest.approx(reference_masked_mse(predicted, target, mask), rel=1e-4)


def test_reconstruction_is_the_visible_patches_plus_the_predicted_masked_ones():
    """§2.3: X^ = the visible patches of X with the decoder's prediction at the masked ones; e(.) sees
    the anchors X_A and all 2N reconstructions."""
    method, _ = make()
    batch = batch_for(method)
    seen = []
    contrast = method.contrast

    def recording(images):
        seen.append(images.detach().clone())
        return contrast(images)

    method.contrast = recording
    torch.manual_seed(9)
    with torch.no_grad():
        method.training_step(batch)
        torch.manual_seed(9)
        tokens, mask, restore = encode_visible(method.backbone.model, batch["image"], method.cfg.mask_ratio)
        predicted, _ = method.decoder(tokens, restore)
    images, n = batch["image"], batch["image"].shape[0] // 2
    side = IMAGE_SIZE
    assert [tuple(x.shape) for x in seen] == [(n, 3, side, side), (2 * n, 3, side, side)]
    torch.testing.assert_close(seen[0], images[:n])
    recon = patchify(seen[1], method.patch)
    target = patchify(images, method.patch)
    for i in range(2 * n):
        for j in range(mask.shape[1]):
            expected = predicted[i, j] if mask[i, j] else target[i, j]
            torch.testing.assert_close(recon[i, j], expected, atol=1e-6, rtol=1e-6)


def test_detached_reconstruction_stops_the_inter_gradient_into_the_decoder():
    batch = None
    grads = {}
    for detach in (False, True):
        method, _ = make({"lam": 1.0, "detach_reconstruction": detach})  # lam 1: no L_gen gradient
        batch = batch if batch is not None else batch_for(method)
        step(method, batch)
        grads[detach] = method.decoder.pred.weight.grad
    assert grads[False] is not None and grads[False].abs().sum() > 0  # through X^ into f^d (§2.3)
    assert grads[True] is None or not grads[True].any()


@pytest.mark.parametrize("variant", [{"mask_ratio": 0.0}, {"inter_loss": "infonce"},
                                     {"intra_symmetric": True}, {"embed": "gap"},
                                     {"selector": {"enabled": False}}])
def test_variants_step(variant):
    method, experiment = make(variant)
    out = step(method, batch_for(method), StagePlan.of(experiment).stages[0])
    assert all(torch.isfinite(v) for v in out.values())
    assert has_gradient(method.decoder) and has_gradient(method.head)


def test_mask_ratio_zero_reconstructs_every_patch():
    method, _ = make({"mask_ratio": 0.0})
    batch = batch_for(method)
    torch.manual_seed(2)
    with torch.no_grad():
        out = method.training_step(batch)
    torch.manual_seed(2)
    with torch.no_grad():
        tokens, mask, restore = encode_visible(method.backbone.model, batch["image"], 0.0)
        predicted, _ = method.decoder(tokens, restore)
    assert not mask.any()
    expected = float(F.mse_loss(predicted, patchify(batch["image"], method.patch)))
    assert float(out["loss_gen"]) == pytest.approx(expected, rel=1e-4)


def test_infonce_inter_loss_is_over_the_two_n_reconstructions():
    """With inter_loss infonce, L_inter is -log softmax of anchor i's reconstruction among all 2N
    reconstructions (§2.3): at a huge temperature every key weighs the same, so it is log(2N)."""
    method, _ = make({"inter_loss": "infonce", "inter_temperature": 1e6})
    with torch.no_grad():
        out = method.training_step(batch_for(method, n=8))
    assert float(out["loss_inter"]) == pytest.approx(math.log(8), rel=1e-3)  # T huge: uniform over 2N = 8


def test_nothing_to_train_is_rejected():
    with pytest.raises(pydantic.ValidationError, match="nothing to train"):
        ASSConfig(pretrain=False, finetune={"epochs": 0})
    ASSConfig(pretrain=False)  # fine-tuning only: allowed
    ASSConfig(finetune={"epochs": 0})  # pre-training only: allowed


def test_stages():
    both = ASSConfig(finetune={"epochs": 3, "lr": 2e-4}).stages(5)
    assert [(s.name, s.epochs) for s in both] == [("pretrain", 5), ("finetune", 3)]
    assert both[0].groups == ("encoder", "pretrain_heads")
    assert both[1].groups == ("encoder", "proxies") and both[1].lr == 2e-4 and both[1].optimizer == "adamw"
    assert [(s.name, s.epochs) for s in ASSConfig(finetune={"epochs": 0}).stages(5)] == [("pretrain", 5)]
    assert [(s.name, s.epochs) for s in ASSConfig(pretrain=False, finetune={"epochs": 4}).stages(5)] == [
        ("finetune", 4)]


def test_inputs_declare_selection_only_when_pretraining_with_the_selector():
    cfg = ASSConfig(selector={"pool_factor": 7, "tau": 4.0, "schedule": "constant", "replacement": True})
    inputs = cfg.inputs
    assert [v.name for v in inputs.views] == ["crop_flip"] and inputs.columns == ("label",)
    s = inputs.selection
    assert s is not None and s.stage == "pretrain"
    assert (s.pool_factor, s.tau, s.schedule, s.replacement) == (7, 4.0, "constant", True)
    assert s.encoder == cfg.selector.encoder()
    placed = s.placed(cfg.stages(6))
    assert (placed.first, placed.epochs) == (0, 6)
    assert ASSConfig(selector={"enabled": False}).inputs.selection is None
    assert ASSConfig(pretrain=False).inputs.selection is None
    assert ASSConfig(finetune={"epochs": 0}).inputs.columns == ()
    assert ASSConfig(finetune={"epochs": 0}).inputs.selection is not None
    # a composed batch carries each anchor's negative (issue 27); uniform ones pair by draw order
    assert set(ASSConfig(finetune={"epochs": 0}).inputs.keys) == {"image", "negative_index"}
    assert set(ASSConfig(finetune={"epochs": 0}, selector={"enabled": False}).inputs.keys) == {"image"}
    assert cfg.inputs.selection.pairing == "nearest"  # fgray's choice
    assert ASSConfig(negative_pairing="index").inputs.selection.pairing == "index"  # the draft code's


def test_embeddings_are_normalised():
    method, _ = make()
    method.eval()
    images = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    for embedding, dim in ((method.embed(images), method.embed_dim), (method.selector_embed(images), 128)):
        assert embedding.shape == (3, dim)
        torch.testing.assert_close(embedding.norm(dim=1), torch.ones(3))


# ----------------------------------------------------------------------------------------- preflight


def test_preflight_missing_selector_weights_names_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = ASSConfig(selector={"weights": "runs/selector/checkpoint_000009"})
    with pytest.raises(ConfigError) as err:
        ASS.preflight(cfg)
    message = str(err.value)
    absolute = os.path.join(str(tmp_path), "runs", "selector", "checkpoint_000009")
    assert "\n" not in message and message.startswith("method.selector.weights")
    assert absolute in message
    assert "'hub'" in message and "'random'" in message and "checkpoint" in message  # how to supply them


def test_preflight_passes_hub_random_and_existing_weights(tmp_path):
    ASS.preflight(ASSConfig(selector={"weights": "hub"}))
    ASS.preflight(ASSConfig(selector={"weights": "random"}))
    weights = tmp_path / "selector.pth"
    weights.write_bytes(b"")
    ASS.preflight(ASSConfig(selector={"weights": str(weights)}))
    missing = str(tmp_path / "none.pth")
    ASS.preflight(ASSConfig(selector={"weights": missing, "enabled": False}))  # no selector: no lookup
    ASS.preflight(ASSConfig(pretrain=False, selector={"weights": missing}))


# ------------------------------------------------------------------------------ checkpoint as selector


def test_checkpoint_encoder_embeds_with_the_saved_selector_head(tmp_path):
    method, experiment = make({"head_dim": 24})
    with torch.no_grad():  # weights a freshly built method would not have
        for p in method.head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    directory = tmp_path / "checkpoint_000001"
    checkpoint.save(str(directory), method, experiment, FACTS, "pretrain", 1, {})
    spec = EncoderSpec(kind="fgray", model="selector", pretrained=str(directory))
    encoder = build_encoder(spec, IMAGE_SIZE)
    assert encoder.dim == 24
    images = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE)
    method.eval()
    expected = F.normalize(method.selector_embed(images), dim=1)
    got = encoder(images)
    assert got.shape == (4, 24)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(4))
    assert not any(p.requires_grad for p in encoder.parameters())
    spec = SelectorConfig(weights=str(directory)).encoder()  # a selector pre-training run's checkpoint
    assert spec.kind == "fgray" and spec.pretrained == str(directory)
    assert SelectorConfig(weights=str(tmp_path)).encoder().kind == "timm"  # a folder without a checkpoint
