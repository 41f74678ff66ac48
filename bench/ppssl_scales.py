"""PP-SSL's loss weights on their scales: the backbone-gradient norm of alpha * L_AIS and of
beta * L_IADM (in both of ``method.iadm_form``'s forms) over that of L_CL, at the paper's values
(alpha 1.2, beta 0.01), ResNet-50 at 224 px, random init, MoCo v2's views of synthetic birds.

    python bench/ppssl_scales.py                      # 3 batches of 8: ~2-3 minutes on 2 cores
    python bench/ppssl_scales.py --batches 2 --threads 1

Why: beta was set on the authors' form of L_IADM (LCR's ``F.kl_div(att_max.softmax(-1).log(),
gradcam.softmax(-1), reduction='sum')``, nu = 0.01); a form that normalises differently puts the
same beta on another scale. A ratio says how hard a term pulls the backbone against L_CL; the paper
reports none, so these are for comparing forms, not targets. The AIS teacher here is the tiny
*random* CLIP (``fgray-tiny-clip``; no weights offline): the alpha ratio measures the plumbing's
scale, not CLIP ViT-B/32's. Every term is evaluated on the same forward pass of the same batch
(train mode, as a training step), its gradient taken with ``autograd.grad``. "lcr target peak": the
largest entry of softmax(raw Grad-Img row) times the row's length, 1.00 for uniform rows: how much of
Grad-Img survives LCR's softmax of the unnormalised map (L_CL is a batch mean, so the raw Grad-CAM,
and with it this peak, shrinks as the batch grows).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from fgray.data.inputs import DatasetFacts
from fgray.data.sources.synthetic import SyntheticSpec, render
from fgray.data.views import build_recipe
from fgray.engine import normalize_images
from fgray.methods.configs import PPSSLConfig, TeacherConfig
from fgray.methods.parts import attention_map, grad_cam_target
from fgray.methods.ppssl import PPSSL
from fgray.models import build_backbone
from fgray.models.clip import TINY_MODEL

FORMS = ("lcr", "normalized")


def synthetic_views(cfg: PPSSLConfig, size: int, n: int, seed: int) -> dict[str, torch.Tensor]:
    """n synthetic birds (distinct classes and instances) through the method's own MoCo v2 pair recipe."""
    spec = SyntheticSpec(num_classes=48, images_per_class=40, image_size=size + size // 8, seed=0)
    recipe = build_recipe(cfg.views.recipe(), size)
    rng = np.random.default_rng(seed)
    views: dict[str, list[torch.Tensor]] = {}
    torch.manual_seed(seed)
    for c, i in zip(rng.choice(48, n, replace=False), rng.integers(0, 40, n)):
        image, _ = render(spec, int(c), int(i))
        for key, view in recipe(torch.from_numpy(image).permute(2, 0, 1).contiguous()).items():
            views.setdefault(key, []).append(view)
    return {key: normalize_images(torch.stack(v)) for key, v in views.items()}


def grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


def measure(method: PPSSL, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """One step's terms (the method's own stages) and their backbone-gradient norms."""
    cfg = method.cfg
    x = batch["view1"].detach().requires_grad_("image" in cfg.guidance)  # Eq. 5 w.r.t. the image
    f, stages = method._features(x)
    loss_cl, _ = method._contrastive(f, batch["view2"])
    psi_out = method.psi(f)  # once, as in training_step: AIS's z' and IADM's w
    loss_ais = method._ais(f, attention_map(psi_out), x, None)
    terms = {"L_CL": loss_cl, "alpha L_AIS": cfg.alpha * loss_ais}
    values = {"L_CL": float(loss_cl.detach()), "L_AIS": float(loss_ais.detach())}
    for form in FORMS:  # the same batch and graph, each form of Eq. 8
        method.cfg = cfg.model_copy(update={"iadm_form": form})
        loss_iadm = method._iadm(loss_cl, x, stages, psi_out)
        terms[f"beta L_IADM {form}"] = cfg.beta * loss_iadm
        values[f"L_IADM {form}"] = float(loss_iadm.detach())
    method.cfg = cfg
    # How far LCR's target is from uniform: the raw Grad-Img's rows through a softmax (1.00: uniform rows).
    source = x if cfg.guidance.split("+")[0] == "image" else stages[cfg.guidance.split("+")[0]]
    (grad,) = torch.autograd.grad(loss_cl, source, retain_graph=True)
    target = F.adaptive_max_pool2d(grad_cam_target(source, grad).unsqueeze(1), f.shape[-2:])[:, 0]
    values["target peak"] = float(target.softmax(dim=-1).amax() * target.shape[-1])
    params = [p for p in method.moco.backbone.parameters() if p.requires_grad]
    norms = {name: grad_norm(term, params) for name, term in terms.items()}
    return {**values, **{f"|g| {k}": v for k, v in norms.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--alpha", type=float, default=1.2)
    parser.add_argument("--beta", type=float, default=0.01)
    parser.add_argument("--guidance", default="image", help="IADM's Grad-CAM source (layer4: LCR's own)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = PPSSLConfig(alpha=args.alpha, beta=args.beta, guidance=args.guidance,
                      teacher=TeacherConfig(model=TINY_MODEL, pretrained="random"))
    method = PPSSL(cfg, build_backbone(args.backbone, image_size=args.size),
                   DatasetFacts(num_classes=2, image_size=args.size))
    method.train()
    print(f"{args.backbone} random init, {args.size} px, batch {args.batch_size}, alpha {cfg.alpha}, beta {cfg.beta}, "
          f"AIS teacher {TINY_MODEL} random (logit scale {method.logit_scale:.1f}), guidance {cfg.guidance}, "
          f"{args.threads} threads")
    header = ("| batch | L_CL | L_AIS | L_IADM lcr | L_IADM normalized | lcr target peak | alpha L_AIS / L_CL | "
              "beta L_IADM lcr / L_CL | beta L_IADM normalized / L_CL |")
    print(header + "\n|" + " --- |" * 9, flush=True)
    ratios: dict[str, list[float]] = {k: [] for k in ("alpha L_AIS", *(f"beta L_IADM {f}" for f in FORMS))}
    start = time.perf_counter()
    for b in range(args.batches):
        row = measure(method, synthetic_views(cfg, args.size, args.batch_size, seed=b))
        for k, values in ratios.items():
            values.append(row[f"|g| {k}"] / row["|g| L_CL"])
        shares = " | ".join(f"{100 * values[-1]:.3f} %" for values in ratios.values())
        print(f"| {b} | {row['L_CL']:.3f} | {row['L_AIS']:.4f} | {row['L_IADM lcr']:.3f} | "
              f"{row['L_IADM normalized']:.3f} | {row['target peak']:.3f} | {shares} |", flush=True)
    spans = " | ".join(f"{100 * min(v):.3f}-{100 * max(v):.3f} % (mean {100 * statistics.mean(v):.3f} %)"
                       for v in ratios.values())
    print(f"| all | | | | | | {spans} |")
    print(f"wall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
