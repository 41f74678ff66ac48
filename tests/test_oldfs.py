"""OLDFS (paper 002, spec ../shared/specs/oldfs.md): the pure noise functions of Eqs. 3-6, the FIFO
feature bank, Eq. 7's NT-Xent, each against a slow loop reference written from the spec's
equations; then the method's step: the Grad-CAM gradient taken w.r.t. v alone, the decoder
pre-training stage, the bank filled after the step, the SimSiam base, loading decoder weights, the
decoded pair kept off BatchNorm's running statistics and the decoder's own optimiser."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fgray.config import ExperimentConfig
from fgray.data.inputs import DatasetFacts
from fgray.engine import build_method
from fgray.losses import nt_xent
from fgray.methods import oldfs as oldfs_module
from fgray.methods.configs import Stage
from fgray.methods.oldfs_noise import FeatureBank, gradcam_noise, gradcam_scores, lowvar_noise, lowvar_scores
from fgray.methods.registry import method_class
from fgray.optimizers import CombinedOptimizer
from fgray.stages import StageRunner, stage_param_groups
from tests.declared import declared_batch

FACTS = DatasetFacts(num_classes=4, class_names=("a", "b", "c", "d"), image_size=32)


# ------------------------------------------------------------------------------ references (loops)


def reference_gradcam_scores(grad: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Eq. 3: eta_i = ReLU(grad_i * v_i); Eq. 4: per sample (eta - min) / (max - min + 1e-12)."""
    batch, dims = grad.shape
    out = np.zeros((batch, dims))
    for b in range(batch):
        eta = [max(0.0, float(grad[b, i]) * float(v[b, i])) for i in range(dims)]
        low, high = min(eta), max(eta)
        for i in range(dims):
            out[b, i] = (eta[i] - low) / (high - low + 1e-12)
    return out


def reference_scale(score: float, eps: float, form: str) -> float:
    """The element's standard deviation: std form eps (1 - score); var form sqrt(eps (1 - score))."""
    value = eps * (1.0 - score)
    return value if form == "std" else math.sqrt(max(value, 0.0))


def reference_lowvar_scores(bank: np.ndarray, normalize: str) -> tuple[np.ndarray, np.ndarray]:
    """s_i = population variance (divide by D) of column i after the normalisation; s_bar = min-max."""
    rows, dims = bank.shape
    m = bank.astype(np.float64).copy()
    if normalize == "column":
        for i in range(dims):
            norm = math.sqrt(sum(float(m[r, i]) ** 2 for r in range(rows)))
            for r in range(rows):
                m[r, i] /= norm
    elif normalize == "row":
        for r in range(rows):
            norm = math.sqrt(sum(float(m[r, i]) ** 2 for i in range(dims)))
            for i in range(dims):
                m[r, i] /= norm
    s = np.zeros(dims)
    for i in range(dims):
        mean = sum(float(m[r, i]) for r in range(rows)) / rows
        s[i] = sum((float(m[r, i]) - mean) ** 2 for r in range(rows)) / rows
    low, high = s.min(), s.max()
    return s, np.array([(s[i] - low) / (high - low + 1e-12) for i in range(dims)])


def reference_nt_xent(a: np.ndarray, b: np.ndarray, t: float) -> float:
    """SimCLR's NT-Xent: 2B rows (a then b), cosine similarity; row k's positive is its partner,
    its denominator all 2B - 1 other rows; the mean over the 2B rows."""
    rows = [x / math.sqrt(sum(float(c) ** 2 for c in x)) for x in list(a) + list(b)]
    n = len(a)
    total = 0.0
    for k in range(2 * n):
        partner = k + n if k < n else k - n
        sim = lambda j: sum(float(x) * float(y) for x, y in zip(rows[k], rows[j])) / t  # noqa: E731
        denominator = sum(math.exp(sim(j)) for j in range(2 * n) if j != k)
        total += -math.log(math.exp(sim(partner)) / denominator)
    return total / (2 * n)


# ------------------------------------------------------------------------------ 1. Grad-CAM scores


def test_gradcam_scores_match_the_loop_reference_and_survive_flat_rows():
    g = torch.Generator().manual_seed(0)
    grad = torch.randn(6, 11, generator=g, dtype=torch.float64)
    v = torch.randn(6, 11, generator=g, dtype=torch.float64)
    grad[1] = 0.7  # row 1: grad * v identical in every dimension
    v[1] = 2.0
    grad[2] = torch.rand(11, generator=g, dtype=torch.float64) + 0.1  # row 2: grad * v < 0 everywhere
    v[2] = -(torch.rand(11, generator=g, dtype=torch.float64) + 0.1)
    v[3, :5] = 0.0  # some exact zeros in a normal row
    expected = reference_gradcam_scores(grad.numpy(), v.numpy())
    got = gradcam_scores(grad, v)
    assert got.shape == (6, 11)
    assert torch.isfinite(got).all() and float(got.min()) >= 0.0 and float(got.max()) <= 1.0
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-6)
    # A flat row (all equal, or all negative before the ReLU) scores 0 everywhere, not NaN.
    assert torch.equal(got[1], torch.zeros(11, dtype=got.dtype))
    assert torch.equal(got[2], torch.zeros(11, dtype=got.dtype))
    # Each ordinary row spans [0, 1] exactly (its min at 0, its max at ~1).
    for b in (0, 3, 4, 5):
        assert float(got[b].min()) == 0.0 and abs(float(got[b].max()) - 1.0) < 1e-6


def test_gradcam_scores_are_detached():
    grad = torch.randn(3, 5, requires_grad=True)
    v = torch.randn(3, 5, requires_grad=True)
    assert not gradcam_scores(grad, v).requires_grad


# ------------------------------------------------------------------------------ 2. the noises


@pytest.mark.parametrize("form", ["std", "var"])
def test_gradcam_noise_matches_reference_draw(form):
    g = torch.Generator().manual_seed(1)
    eta_bar = torch.rand(5, 9, generator=g)
    eta_bar[0, 0], eta_bar[0, 1] = 0.0, 1.0  # full noise and no noise
    eps = 0.1
    torch.manual_seed(123)
    got = gradcam_noise(eta_bar, eps, form)
    torch.manual_seed(123)
    z = torch.randn(5, 9)
    expected = np.zeros((5, 9))
    for b in range(5):
        for i in range(9):
            expected[b, i] = reference_scale(float(eta_bar[b, i]), eps, form) * float(z[b, i])
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-7)
    assert float(got[0, 1]) == 0.0  # eta_bar = 1: the most important dimension gets no noise


@pytest.mark.parametrize("form", ["std", "var"])
def test_lowvar_noise_matches_reference_and_is_zero_above_kappa(form):
    g = torch.Generator().manual_seed(2)
    dims, batch, eps_var, kappa = 10, 6, 0.05, 0.03125  # kappa exact in float32 (s[3] == kappa below)
    s = torch.rand(dims, generator=g) * 0.0625  # about half of the dimensions at or above kappa
    s[3] = kappa  # exactly at the threshold: not selected (s_i < kappa is strict)
    s_bar = (s - s.min()) / (s.max() - s.min())
    torch.manual_seed(7)
    got = lowvar_noise(s, s_bar, batch, eps_var, kappa, form)
    torch.manual_seed(7)
    z = torch.randn(batch, dims)
    expected = np.zeros((batch, dims))
    for i in range(dims):
        scale = reference_scale(float(s_bar[i]), eps_var, form) if float(s[i]) < kappa else 0.0
        for b in range(batch):
            expected[b, i] = scale * float(z[b, i])
    assert got.shape == (batch, dims)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-7)
    above = s >= kappa
    assert 0 < int(above.sum()) < dims
    assert torch.equal(got[:, above], torch.zeros(batch, int(above.sum())))  # exactly zero
    assert (got[:, ~above] != 0).all()
    # The same per-dimension scale for every sample: noise / z is constant down each column.
    ratio = got[:, ~above] / z[:, ~above]
    torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------ 3. low-variance score


@pytest.mark.parametrize("normalize", ["column", "row", "none"])
def test_lowvar_scores_match_loop_reference(normalize):
    g = torch.Generator().manual_seed(3)
    bank = torch.randn(20, 7, generator=g) * torch.linspace(0.05, 2.0, 7) + torch.linspace(-1, 1, 7)
    s, s_bar = lowvar_scores(bank, normalize)
    ref_s, ref_bar = reference_lowvar_scores(bank.numpy(), normalize)
    assert s.shape == (7,) and s_bar.shape == (7,)
    np.testing.assert_allclose(s.double().numpy(), ref_s, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(s_bar.double().numpy(), ref_bar, rtol=1e-4, atol=1e-5)


def test_column_normalised_scores_are_at_most_one_over_d_so_kappa_selects_all():
    g = torch.Generator().manual_seed(4)
    rows = 64  # D
    bank = torch.relu(torch.randn(rows, 32, generator=g)) * torch.logspace(-2, 1, 32)  # ReLU features, raw
    s, _ = lowvar_scores(bank, "column")
    assert float(s.max()) <= 1.0 / rows + 1e-7  # spec §7.1: s_i = 1/D - mean^2 <= 1/D
    assert bool((s < 0.02).all())  # kappa = 0.02 never binds
    raw, _ = lowvar_scores(bank, "none")
    below = (raw < 0.02).float().mean()
    assert 0.0 < float(below) < 1.0  # raw features: kappa selects a strict subset


# ------------------------------------------------------------------------------ 4. feature bank


def as_rows(t: torch.Tensor) -> list[tuple]:
    return sorted(tuple(float(x) for x in row) for row in t)


def test_feature_bank_is_fifo_and_wraps():
    bank = FeatureBank(dim=2, size=7)
    assert bank.rows().shape == (0, 2) and int(bank.filled) == 0
    pushed: list[torch.Tensor] = []
    for step in range(5):
        batch = torch.arange(6, dtype=torch.float32).view(3, 2) + 100 * step
        bank.push(batch)
        pushed.append(batch)
        every = torch.cat(pushed)
        expected = every[-7:]  # the newest min(3 (step + 1), 7) rows
        assert int(bank.filled) == min(3 * (step + 1), 7)
        assert as_rows(bank.rows()) == as_rows(expected), f"after push {step + 1}"
        assert int(bank.pointer) == (3 * (step + 1)) % 7
    # Positions: the oldest row is always the next one to go.
    assert torch.equal(bank.features[int(bank.pointer)], torch.cat(pushed)[-7])


def test_feature_bank_push_larger_than_bank_keeps_newest_rows():
    bank = FeatureBank(dim=3, size=7)
    bank.push(torch.full((2, 3), -1.0))  # pointer away from 0 first
    big = torch.arange(30, dtype=torch.float32).view(10, 3)
    bank.push(big)
    assert int(bank.filled) == 7
    assert as_rows(bank.rows()) == as_rows(big[-7:])
    bank.push(big.requires_grad_())  # detached, no error
    assert not bank.features.requires_grad


# ------------------------------------------------------------------------------ 5. NT-Xent (Eq. 7)


def test_nt_xent_matches_loop_reference():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(5, 6, generator=g, dtype=torch.float64)
    b = a + 0.5 * torch.randn(5, 6, generator=g, dtype=torch.float64)
    for t in (0.07, 0.2, 0.5, 1.0):
        got = float(nt_xent(a, b, t))
        assert abs(got - reference_nt_xent(a.numpy(), b.numpy(), t)) < 1e-4 * max(1.0, abs(got)), t


def test_nt_xent_is_symmetric_in_its_arguments():
    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    torch.testing.assert_close(nt_xent(a, b, 0.2), nt_xent(b, a, 0.2))


# ------------------------------------------------------------------------------ 6. the method


def make(**overrides):
    torch.manual_seed(0)
    method = {"name": "oldfs", **method_class("oldfs").smoke_overrides({"name": "oldfs"}), **overrides}
    experiment = ExperimentConfig(method=method, backbone={"name": "test_resnet"}, data={"image_size": 32})
    return build_method(experiment, FACTS)


def batch_for(method, seed: int = 1) -> dict:
    return declared_batch(method.cfg.inputs, FACTS, n=8, seed=seed)


def test_gradcam_gradient_is_wrt_v_only_and_matches_the_side_infonce(monkeypatch):
    method = make(noise="gradcam", nu=0.0, alpha=1.0)
    assert method.cfg.synthesizes
    batch = batch_for(method)
    seen = {}
    real_scores = oldfs_module.gradcam_scores

    def spy(grad, v):
        seen["grad"], seen["v"] = grad.detach().clone(), v.detach().clone()
        return real_scores(grad, v)

    monkeypatch.setattr(oldfs_module, "gradcam_scores", spy)
    keys = []
    encode = method.moco.key
    monkeypatch.setattr(method.moco, "key", lambda images: keys.append(encode(images)) or keys[-1])
    queue = method.moco.queue.keys.clone()
    out = method.training_step(batch)
    # No backward yet: autograd.grad wrote no parameter's .grad.
    for name, param in method.named_parameters():
        assert param.grad is None, f"{name} got a .grad from the Grad-CAM side gradient"
    assert {"loss", "loss_c", "loss_r", "noise_g"} <= set(out) and "loss_cp" not in out
    assert torch.isfinite(out["loss"])
    # The side gradient is d InfoNCE(normalize(g(v)), k'', queue) / dv, InfoNCE written out here.
    v = seen["v"].clone().requires_grad_(True)
    q = F.normalize(method.moco.head(v), dim=1)
    key, t = keys[0], method.cfg.temperature
    terms = []
    for i in range(v.shape[0]):
        positive = (q[i] * key[i]).sum() / t
        logits = torch.cat([positive.view(1), queue @ q[i] / t])
        terms.append(torch.logsumexp(logits, 0) - positive)
    (expected,) = torch.autograd.grad(torch.stack(terms).mean(), v)
    assert float(expected.abs().sum()) > 0
    torch.testing.assert_close(seen["grad"], expected, rtol=1e-4, atol=1e-7)
    # The loss's backward trains the query side and the decoder, never the key encoder.
    out["loss"].backward()
    assert all(p.grad is None for p in method.moco.key_backbone.parameters())
    assert all(p.grad is None for p in method.moco.key_head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.moco.backbone.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.decoder.parameters())


def test_decoder_stage_trains_the_decoder_only_and_leaves_backbone_statistics():
    method = make()
    method.train()
    stage = Stage("decoder", 1, groups=("decoder",))
    method.start_stage(stage)
    groups = stage_param_groups(method, stage)
    assert [g["name"] for g in groups] == ["decoder"]
    backbone_before = {k: v.clone() for k, v in method.backbone.state_dict().items()}  # params + BN buffers
    key_before = {k: v.clone() for k, v in method.moco.key_backbone.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in method.decoder.named_parameters()}
    assert any("running_mean" in k for k in backbone_before)
    optimizer = torch.optim.Adam(groups, lr=1e-2)
    out = method.training_step(batch_for(method))
    assert set(out) == {"loss", "loss_r"}
    assert torch.isfinite(out["loss"]) and torch.equal(out["loss"].detach(), out["loss_r"])
    out["loss"].backward()
    optimizer.step()
    for name, value in method.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[name]), f"backbone {name} changed in the decoder stage"
    for name, value in method.moco.key_backbone.state_dict().items():
        assert torch.equal(value, key_before[name]), name
    assert all(p.grad is None for p in method.backbone.parameters())
    assert all(p.grad is None for p in method.moco.head.parameters())
    assert method.backbone.training  # the step put it back in train mode
    changed = [n for n, p in method.decoder.named_parameters() if not torch.equal(p, decoder_before[n])]
    assert len(changed) > len(decoder_before) // 2


def test_after_step_fills_the_bank_with_the_clean_features_and_lowvar_waits_for_two_batches(monkeypatch):
    method = make(noise="both", bank_size=64)
    batch = batch_for(method)
    out = method.training_step(batch)
    pending = method.pending_features.clone()
    assert pending.shape == (8, method.embed_dim) and not pending.requires_grad
    assert "noise_var" not in out and "noise_g" in out  # empty bank: no low-variance noise
    method.after_step(0.0)
    assert int(method.bank.filled) == 8 and method.pending_features is None
    torch.testing.assert_close(method.bank.rows(), pending)
    # The features are v = f(clean): the same backbone (train-mode BN, batch statistics) reproduces them.
    with torch.no_grad():
        torch.testing.assert_close(method.backbone(batch["clean"]), pending, rtol=1e-4, atol=1e-5)
    # One batch in the bank: still no low-variance noise; two batches: the bank's rows are scored.
    second = batch_for(method, seed=2)
    out = method.training_step(second)
    assert "noise_var" not in out
    method.after_step(0.0)
    assert int(method.bank.filled) == 16
    seen = {}
    real = oldfs_module.lowvar_scores

    def spy(rows, normalize):
        seen["rows"], seen["normalize"] = rows.clone(), normalize
        return real(rows, normalize)

    monkeypatch.setattr(oldfs_module, "lowvar_scores", spy)
    out = method.training_step(batch_for(method, seed=3))
    assert "noise_var" in out and torch.isfinite(out["noise_var"])
    assert torch.equal(seen["rows"], method.bank.rows()) and seen["normalize"] == "column"
    s, _ = real(seen["rows"], "column")
    d = seen["rows"].shape[0]
    assert float(s.max()) <= 1.0 / d + 1e-6  # spec §7.1's bound (here D = 16, so 1/D > kappa)
    torch.testing.assert_close(out["lowvar_frac_below_kappa"], (s < method.cfg.kappa).float().mean())


def test_simsiam_base_step_is_finite_with_all_parts():
    method = make(base="simsiam")
    assert not hasattr(method, "moco")
    out = method.training_step(batch_for(method))
    assert {"loss", "loss_c", "loss_r", "loss_cp"} <= set(out)
    for name, value in out.items():
        assert torch.isfinite(value).all(), name
    expected = out["loss_c"] + method.cfg.alpha * out["loss_r"] + method.cfg.nu * out["loss_cp"]
    torch.testing.assert_close(out["loss"].detach(), expected)  # Eq. 8
    out["loss"].backward()
    assert any(p.grad is not None for p in method.predictor.parameters())
    method.after_step(0.0)
    assert int(method.bank.filled) == 8


def test_loss_is_eq8_sum_of_its_parts_on_mocov2_base():
    method = make(alpha=0.7, nu=0.3)
    out = method.training_step(batch_for(method))
    expected = out["loss_c"] + 0.7 * out["loss_r"] + 0.3 * out["loss_cp"]
    torch.testing.assert_close(out["loss"].detach(), expected)


def test_decoder_weights_are_loaded_from_a_checkpoint_and_skip_stage_zero(tmp_path):
    from fgray.checkpoint import STATE_FILE
    from pydantic import ValidationError

    from fgray.validation import ConfigError, validate

    source = make()
    with torch.no_grad():
        for p in source.decoder.parameters():
            p.add_(torch.randn_like(p))  # differs from any fresh initialisation
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({"method": source.state_dict()}, folder / STATE_FILE)
    decoder = {"width": 32, "pretrain_epochs": 1}
    for path in (folder / STATE_FILE, folder):  # the state file, or the checkpoint folder
        loaded = make(decoder={**decoder, "weights": str(path)})
        for name, value in source.decoder.state_dict().items():
            assert torch.equal(loaded.decoder.state_dict()[name], value), name
        assert [s.name for s in loaded.cfg.stages(5)] == ["train"]
    assert [s.name for s in source.cfg.stages(5)] == ["decoder", "train"]
    # A bare decoder state dict works too.
    torch.save(source.decoder.state_dict(), tmp_path / "decoder.pt")
    loaded = make(decoder={**decoder, "weights": str(tmp_path / "decoder.pt")})
    assert torch.equal(loaded.decoder.project.weight, source.decoder.project.weight)
    # A missing path is rejected when the config is validated.
    missing = str(tmp_path / "nope.pt")
    with pytest.raises(ValidationError, match="decoder weights not found"):
        make(decoder={**decoder, "weights": missing})
    data = {"method": {"name": "oldfs", "decoder": {"weights": missing}}, "backbone": {"name": "test_resnet"},
            "data": {"image_size": 32}}
    with pytest.raises(ConfigError, match="not found"):
        validate(ExperimentConfig, data)


# ------------------------------------------------------------------------------ 7. BatchNorm guard


def bn_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every BatchNorm buffer (running mean / var, batches tracked), cloned."""
    return {k: v.clone() for k, v in module.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def with_cfg(method, **update):
    """A copy of ``method`` (weights, BN statistics, queue, bank) whose config differs by ``update``."""
    twin = copy.deepcopy(method)
    twin.cfg = twin.cfg.model_copy(update=update)
    return twin


@pytest.mark.parametrize("base", ["mocov2", "simsiam"])
def test_the_decoded_pair_leaves_the_batchnorm_running_statistics_to_the_real_images(base):
    method = make(base=base)
    method.train()
    assert method.cfg.bn_guard and method.cfg.nu > 0
    reference = with_cfg(method, nu=0.0)  # the same step without the decoded pair's passes (L_Cp)
    unguarded = with_cfg(method, bn_guard=False)  # the form before the guard
    before = bn_state(method)
    batch = batch_for(method)
    outs = {}
    for name, model in (("guarded", method), ("reference", reference), ("unguarded", unguarded)):
        torch.manual_seed(3)
        outs[name] = model.training_step(batch)
    guarded, real_only, old = bn_state(method), bn_state(reference), bn_state(unguarded)
    assert "loss_cp" in outs["guarded"] and "loss_cp" not in outs["reference"]
    moved = [k for k in guarded if "running_mean" in k and not torch.equal(guarded[k], before[k])]
    assert moved  # the real images' passes did update them
    for name, value in real_only.items():  # f's, the heads', the decoder's, the key encoder's
        assert torch.equal(guarded[name], value), f"{name}: the decoded pair moved it"
    # Unguarded, the decoded images move f's statistics (and SimSiam's projector / predictor's).
    prefix = "moco.backbone." if base == "mocov2" else "simsiam_backbone."
    changed = {k for k in old if not torch.equal(old[k], real_only[k])}
    assert any(k.startswith(prefix) and "running_var" in k for k in changed)
    if base == "simsiam":
        assert any(k.startswith("projector.") for k in changed) and any(k.startswith("predictor.") for k in changed)
    # The guarded passes still normalise with the decoded batch's own statistics (train mode): the
    # loss is the unguarded form's, and its gradient still reaches f.
    torch.testing.assert_close(outs["guarded"]["loss_cp"], outs["unguarded"]["loss_cp"], rtol=0, atol=0)
    for bn in (m for m in method.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        assert bn.momentum == 0.1  # restored after the guarded passes


# ------------------------------------------------------------------------------ 8. decoder optimiser


def joint_runner(decoder: dict | None = None):
    smoke = method_class("oldfs").smoke_overrides({"name": "oldfs"})
    method = {"name": "oldfs", **smoke, "decoder": {**smoke["decoder"], **(decoder or {})}}
    experiment = ExperimentConfig(method=method, backbone={"name": "test_resnet"}, data={"image_size": 32},
                                  train={"optimizer": "sgd", "lr": 0.03, "momentum": 0.9, "weight_decay": 1e-4})
    torch.manual_seed(0)
    built = build_method(experiment, FACTS)
    runner = StageRunner(built, experiment, steps_per_epoch=2, device=torch.device("cpu"))
    return built, runner


def test_the_decoder_gets_its_own_adam_in_the_joint_stage_and_the_encoder_keeps_its_optimizer():
    method, runner = joint_runner()
    assert [s.name for s in runner.plan.stages] == ["decoder", "train"]
    runner.enter(0)  # stage 0: the decoder alone, AdamW at decoder.lr, as before
    assert type(runner.optimizer) is torch.optim.AdamW
    assert [(g["name"], g["lr"]) for g in runner.optimizer.param_groups] == [("decoder", method.cfg.decoder.lr)]
    runner.enter(runner.plan.start(1))
    assert isinstance(runner.optimizer, CombinedOptimizer)
    encoder, decoder = runner.optimizer.optimizers
    assert type(encoder) is torch.optim.SGD  # train.optimizer at train.lr, unchanged
    assert [g["name"] for g in encoder.param_groups] == ["encoder"]
    group = encoder.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.03, 0.9, 1e-4)
    assert type(decoder) is torch.optim.Adam  # spec §3 / early code: Adam 1e-4, no weight decay
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in decoder.param_groups] == [("decoder", 1e-4, 0.0)]
    assert {id(p) for p in decoder.param_groups[0]["params"]} == {id(p) for p in method.decoder.parameters()}
    assert runner.optimizer.param_groups[0] is group  # trial.py's train/lr reads the encoder's rate


def test_the_decoders_joint_optimizer_is_configurable_and_encoder_keeps_the_old_form():
    _, runner = joint_runner({"joint_optimizer": "adamw", "joint_lr": 3e-4, "joint_weight_decay": 0.05})
    runner.enter(runner.plan.start(1))
    own = runner.optimizer.optimizers[1]
    assert type(own) is torch.optim.AdamW and (own.param_groups[0]["lr"], own.param_groups[0]["weight_decay"]) == (
        3e-4, 0.05)
    _, runner = joint_runner({"joint_optimizer": "encoder"})  # before issue 27: one SGD, two groups at train.lr
    runner.enter(runner.plan.start(1))
    assert type(runner.optimizer) is torch.optim.SGD
    assert [(g["name"], g["lr"]) for g in runner.optimizer.param_groups] == [("encoder", 0.03), ("decoder", 0.03)]
