"""PP-SSL's IADM (paper 001, Eqs. 5-8): Grad-Img against w in both forms (lcr: LCR's code, the default;
normalized: the former), against a line-by-line transcription of LCR's max_mask + kl_div, the bounded
gradient, and that beta trains the backbone through every guidance source."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fgray.losses import row_softmax_kl
from fgray.methods.parts import batch_attention_map, grad_cam_target
from fgray.methods.ppssl import PPSSL
from ppssl_refs import (make, batch, ref_attention, ref_max_pool,
                        ref_kl, ref_batch_attention, ref_row_softmax_kl, numpy)


def iadm_parts(m: PPSSL, b: dict, guidance: str):
    """One forward up to L_IADM: (x, f, stage outputs, L_CL, w (B, 1, h, w) of m's form, L_IADM)."""
    x = b["view1"].clone().requires_grad_("image" in guidance)
    f, stages = m._features(x)
    loss_cl, _ = m._contrastive(f, b["view2"])
    psi_out = m.psi(f)
    return x, f, stages, loss_cl, m._iadm_map(psi_out), m._iadm(loss_cl, x, stages, psi_out)


@pytest.mark.parametrize("form", ["lcr", "normalized"])
@pytest.mark.parametrize("guidance", ["image", "layer3", "layer4"])
def test_iadm_loss_matches_eqs_5_to_8(guidance, form):
    """lcr: batch-wide min-max w, row softmax, summed; normalized: fgray's former values (per-image z',
    maps normalised to sum 1, batch mean), the reference this test held before iadm_form existed."""
    m = make(guidance=guidance, ais=False, iadm_form=form)
    x, f, stages, loss_cl, _, got = iadm_parts(m, batch(), guidance)
    g_in = x if guidance == "image" else stages[guidance]
    (grad,) = torch.autograd.grad(loss_cl, g_in, retain_graph=True)  # Eq. 5
    cam = np.maximum((numpy(g_in) * numpy(grad)).sum(axis=1), 0.0)  # Eq. 6
    h, w = f.shape[-2:]
    target = ref_max_pool(cam, h, w)
    if form == "lcr":  # Eq. 7 as LCR's att_max; Eq. 8 as LCR's kl_div
        expected = ref_row_softmax_kl(target, ref_batch_attention(numpy(m.psi(f))))
    else:  # Eq. 7: the network's attention map of x, z' (Eq. 2); Eq. 8 on maps summing to 1
        expected = ref_kl(target, ref_attention(numpy(m.psi(f))))
    assert float(got.detach()) == pytest.approx(expected, rel=1e-4, abs=1e-6)


# LCR's code (GANPerf/LCR), transcribed line by line: moco/builder.py max_mask (the att_max part) and
# forward's gradcam, main_moco.py's loss_cam. Written from the authors' code, not from fgray's.
def lcr_att_max(featmap, conv16, bn16):
    featcov16 = conv16(featmap)
    featcov16 = bn16(featcov16)
    featcov16 = torch.relu(featcov16)
    img, _ = torch.max(featcov16, axis=1)
    img = img - torch.min(img)
    att_max = img / (1e-7 + torch.max(img))
    return att_max


def lcr_gradcam(CE, featmap):
    grad_wrt_act1 = torch.autograd.grad(outputs=CE, inputs=featmap, grad_outputs=torch.ones_like(CE),
                                        retain_graph=True, allow_unused=True)[0]
    gradcam = torch.relu((featmap * grad_wrt_act1).sum(dim=1))
    return gradcam


def lcr_loss_cam(att_max, gradcam):
    return F.kl_div(att_max.softmax(dim=-1).log(), gradcam.softmax(dim=-1), reduction='sum')


def test_lcr_form_matches_lcr_code_on_fixed_tensors():
    """row_softmax_kl(grad_cam_target, batch_attention_map(psi(.))) == LCR's loss_cam, value and the
    gradient into psi (conv16 + bn16), on a fixed random feature map and contrastive loss."""
    torch.manual_seed(0)
    featmap = (3 * torch.randn(6, 16, 7, 7)).requires_grad_(True)
    conv16, bn16 = torch.nn.Conv2d(16, 8, 1, bias=False), torch.nn.BatchNorm2d(8)
    logits = featmap.mean(dim=(2, 3)) @ torch.randn(16, 9) / 0.2  # a MoCo-style (B, 1 + K) logit table
    CE = F.cross_entropy(logits, torch.zeros(6, dtype=torch.long))  # LCR's name
    expected = lcr_loss_cam(lcr_att_max(featmap, conv16, bn16), lcr_gradcam(CE, featmap))
    (grad,) = torch.autograd.grad(CE, featmap, retain_graph=True)
    w = batch_attention_map(torch.nn.Sequential(conv16, bn16)(featmap))[:, 0]
    got = row_softmax_kl(grad_cam_target(featmap, grad), w)
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    psi = [conv16.weight, bn16.weight, bn16.bias]  # gradcam depends on none of them: same gradients
    for a, b in zip(torch.autograd.grad(got, psi, retain_graph=True), torch.autograd.grad(expected, psi)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_lcr_form_of_the_method_is_lcrs_loss_cam():
    """PPSSL._iadm (form lcr, guidance layer4: Grad-CAM on the last feature map, as LCR) equals LCR's
    loss_cam with conv16 / bn16 = psi and CE = L_CL, on the same network and batch."""
    m = make(guidance="layer4", ais=False)
    assert m.cfg.iadm_form == "lcr"
    _, f, stages, loss_cl, _, got = iadm_parts(m, batch(6), "layer4")
    featmap = stages["layer4"]
    assert featmap.shape == f.shape  # LCR's featmap: the last stage's output, on w's grid
    expected = lcr_loss_cam(lcr_att_max(featmap, m.psi[0], m.psi[1]), lcr_gradcam(loss_cl, featmap))
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-4)


@pytest.mark.parametrize("form", ["lcr", "normalized"])
def test_iadm_form_keeps_the_embedding_per_image(form):
    """Eq. 10 pools with the per-image z' in both forms: an image's embedding ignores its batch-mates."""
    m = make(iadm_form=form)
    m.eval()
    x = batch()["view1"]
    alone = m.embed(x[:1])
    together = m.embed(torch.cat([x[:1], 10 * x[1:] + 3]))
    torch.testing.assert_close(together[:1], alone, rtol=1e-4, atol=1e-5)
    # ... while LCR's att_max (IADM's w in form lcr) does depend on them: the min-max is batch-wide.
    psi_out = torch.randn(2, 4, 3, 3)
    psi_out[1] = 5 * psi_out[1].abs()
    assert not torch.allclose(batch_attention_map(psi_out)[0], batch_attention_map(psi_out[:1])[0])


def backbone_grad(loss: torch.Tensor, m: PPSSL) -> list[torch.Tensor]:
    params = list(m.moco.backbone.parameters())
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def total(grads: list[torch.Tensor]) -> float:
    return float(sum(g.abs().sum() for g in grads))


@pytest.mark.parametrize("guidance", ["image", "layer1", "layer2", "layer3", "layer4", "image+layer4"])
def test_iadm_trains_the_backbone_for_every_guidance_source(guidance):
    """w = z' = A(psi(f)): L_IADM reaches the backbone (and psi) whatever the Grad-CAM source."""
    m = make(guidance=guidance, ais=False)
    *_, loss_iadm = iadm_parts(m, batch(), guidance)
    assert total(backbone_grad(loss_iadm, m)) > 0
    psi_grads = torch.autograd.grad(loss_iadm, list(m.psi.parameters()), retain_graph=True)
    assert sum(float(g.abs().sum()) for g in psi_grads) > 0
    # autograd.grad w.r.t. the guidance inputs wrote no parameter gradient (nothing for DDP's hooks).
    assert all(p.grad is None for p in m.parameters())


def test_grad_img_is_a_constant_target():
    """The gradient of L_IADM comes through w alone: it equals that of KL(T || w) for the same
    Grad-CAM values T held fixed (layer3: a target left attached would add a path through it)."""
    for form in ("lcr", "normalized"):
        check_constant_target(form)


def check_constant_target(form: str) -> None:
    m = make(guidance="layer3", ais=False, iadm_form=form)
    _, f, stages, loss_cl, w, loss_iadm = iadm_parts(m, batch(), "layer3")
    (grad,) = torch.autograd.grad(loss_cl, stages["layer3"], retain_graph=True)
    cam = np.maximum((numpy(stages["layer3"]) * numpy(grad)).sum(axis=1), 0.0)
    fixed = torch.tensor(ref_max_pool(cam, *f.shape[-2:]), dtype=torch.float32)
    from fgray.losses import attention_kl

    kl = row_softmax_kl if form == "lcr" else attention_kl
    expected = backbone_grad(kl(fixed, w[:, 0]), m)
    for got, want in zip(backbone_grad(loss_iadm, m), expected):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


def step_grads(beta: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Backbone gradients of the total loss and of its L_IADM, one step of a fresh model."""
    m = make(beta=beta)
    parts = {}
    iadm = m._iadm
    m._iadm = lambda *args: parts.setdefault("iadm", iadm(*args))
    torch.manual_seed(7)  # the key encoder's shuffle-BN draws a permutation
    out = m(batch())
    of_iadm = backbone_grad(parts["iadm"], m)
    out["loss"].backward()
    return [p.grad.clone() for p in m.moco.backbone.parameters()], of_iadm


def test_beta_scales_the_backbone_gradient_of_l_iadm():
    """d(L_CL + alpha L_AIS + beta L_IADM)/d backbone moves by (beta' - beta) dL_IADM/d backbone."""
    low, iadm = step_grads(0.009)
    high, _ = step_grads(0.2)
    assert total(iadm) > 0 and total([h - l for h, l in zip(high, low)]) > 0
    for h, l, g in zip(high, low, iadm):
        torch.testing.assert_close(h - l, (0.2 - 0.009) * g, rtol=1e-3, atol=1e-4)


def short_run(beta: float, steps: int = 2) -> list[torch.Tensor]:
    """A few SGD steps from the same seed on the same batches; the backbone's weights at the end."""
    m = make(beta=beta, ais=False)  # IADM alone beside L_CL: any difference comes from beta
    optimizer = torch.optim.SGD(m.param_groups(), lr=0.05, momentum=0.9)
    torch.manual_seed(3)
    for step in range(steps):
        out = m(batch(seed=10 + step))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        m.after_step(step / steps)
    return [p.detach().clone() for p in m.moco.backbone.parameters()]


def test_short_runs_that_differ_only_in_beta_end_with_different_backbones():
    """Table 6's beta rows (0.009, 0.01, 0.2) train different encoders; the same beta twice, the same."""
    runs = {beta: short_run(beta) for beta in (0.009, 0.01, 0.2)}
    assert all(torch.equal(a, b) for a, b in zip(short_run(0.01), runs[0.01]))  # deterministic
    for one, other in [(0.009, 0.01), (0.009, 0.2), (0.01, 0.2)]:
        assert not all(torch.equal(a, b) for a, b in zip(runs[one], runs[other])), (one, other)
