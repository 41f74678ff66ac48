"""PP-SSL (Li et al., paper 001): MoCo v2 + Anti-Interference Strategy + Image-Aided Distinction.

One training step, in named stages (B images, C channels and h x w grid of the last feature map):
  _features / _contrastive  x = view1 -> f (B, C, h, w) -> q; k = momentum encoder(view2);
          L_CL (Eq. 1)
  _attention  z' = A(psi(f)) (B, 1, h, w) (Eq. 2); A = ReLU, channel max, min-max (``attention_map``)
  _ais    u_s = Projector(AvgPool(f * z')) (Eq. 3); l_s, l_t = s * u T^T against the N prompt
          embeddings T, s = ``logit_scale`` (default: the CLIP teacher's own exp(logit_scale));
          L_AIS (Eq. 4). Teacher u_t: the frozen CLIP image encoder on x
          (teacher_mode online, as the paper) or the batch's ``teacher_embedding`` column, CLIP on
          the un-augmented image, computed once by the embedding cache (teacher_mode cached: Train
          workers load CLIP once, on the CPU, to embed the prompts, then drop it).
  _iadm   Grad-Img = ReLU(sum_c g * dL_CL/dg) for the guidance input g (the image: Eqs. 5-6; or a
          stage's feature map: Table 4), max-pooled to h x w, a constant target; w = the network's
          attention map of psi(f) (Eq. 7, see below); L_IADM = KL(Grad-Img || w) (Eq. 8, in the form
          ``iadm_form``, see below), averaged over the guidance sources.
  L = L_CL + alpha L_AIS + beta L_IADM (Eq. 9); embedding v = normalize(AvgPool(z' * f)) (Eq. 10).

What w is (Eq. 7). The paper prints w = max(norm(relu(psi(x)))) and says it applies "the same series
of operations on the original image x as in the AIS framework", i.e. those of Eq. 2, which run on
f(x): w is the network's own attention map of x, z'. Read literally (a 1x1 conv psi_g on the RGB
image, as fgray first did) w depends on the image and psi_g alone, Grad-Img is a constant target,
and beta * L_IADM has no path into the encoder: beta would train a 3->32 conv that the embedding
never uses, contradicting the text (Grad-Img "guiding the network to focus on subtle details") and
Fig. 5 (the network's Grad-CAM changes with IADM). PP-SSL builds on LCR (Shu et al. 2023,
GANPerf/LCR), whose ``moco/builder.py`` settles it: ``max_mask`` (lines 125-148) is Eq. 2 and
Eq. 10 (conv16 + bn16 = psi, ReLU, channel max, min-max, f * att_max, average pool, the retrieval
feature of ``inference``, lines 293-318); ``forward`` returns that same ``att_max`` as the map the
Grad-CAM supervises (lines 231, 277-291) and ``main_moco.py`` (lines 360-364) adds
nu * KL(gradcam || att_max) to the contrastive loss, nu = 0.01 (PP-SSL's beta). So w is z' (LCR
min-max normalises it over the batch, see below), from the same psi as AIS: L_IADM trains psi and,
through f, the backbone, whatever the guidance source, and it shapes the attention the embedding
(Eq. 10) pools with. What PP-SSL changes is where Grad-CAM is
taken: LCR differentiates L_CL w.r.t. the last feature map (fgray's guidance ``layer4``), PP-SSL
w.r.t. the input image (Eqs. 5-6, guidance ``image``; Table 4 compares the stages). One departure
from LCR's code, from PP-SSL's text: LCR leaves ``gradcam`` attached to the feature map (the KL also
pushes the target); fgray detaches it, the paper's "pseudo-label", which is what the image source
gives anyway. Without AIS (``ais: false``) psi and z' remain for IADM, and v is still Eq. 10.

The form of Eq. 8 (``iadm_form``). The paper prints Grad-Img * log(Grad-Img / w) and no normalisation;
its beta (0.009-0.2, 0.01 best) is LCR's nu = 0.01, set on LCR's form. So the default ``lcr`` is LCR's
code, the rule where the paper is silent: w = ``att_max``, the channel max of ReLU(psi(f)) min-max
normalised over the whole batch (``parts.batch_attention_map``); the target is Grad-Img max-pooled
to the grid and not normalised (LCR's raw ``gradcam``); and
L_IADM = sum over the batch and the map rows of KL(softmax(Grad-Img row) || softmax(w row))
(``losses.row_softmax_kl``: ``F.kl_div(att_max.softmax(-1).log(), gradcam.softmax(-1), reduction='sum')``,
whose softmax runs along the last dim, each row of a map, not over its h*w cells). Its gradient
w.r.t. w is softmax(w row) - softmax(target row), within [-1, 1] per cell. ``normalized`` is fgray's
former form (w = the per-image z', both maps normalised to sum 1, log(q + 1e-7), batch mean,
``losses.attention_kl``): it puts beta on another scale (bench/ppssl_scales.py measures both against
L_CL), and its gradient grows like 1 / w where the target's mass meets w's exact-zero cell. LCR's
softmax of the raw Grad-Img (small: L_CL is a batch mean) leaves the target's rows near uniform, as in
the authors' code; fgray keeps that rather than invent a normalisation. In both forms AIS (Eq. 3) and the
embedding (Eq. 10) use the per-image z': an image's embedding must not depend on its batch-mates; only
the loss term, a sum over the batch anyway, sees the batch-wide map.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgray.data.inputs import DatasetFacts
from fgray.losses import attention_kl, distillation_kl, row_softmax_kl
from fgray.methods.base import Method
from fgray.methods.configs import PPSSLConfig
from fgray.methods.parts import MoCoEncoders, attention_map, batch_attention_map, grad_cam_target
from fgray.methods.registry import register_method
from fgray.models.backbone import Backbone
from fgray.models.clip import TINY_MODEL, CLIPTeacher, check_weights
from fgray.models.heads import ProjectionHead


def _psi(in_channels: int, out_channels: int) -> nn.Module:
    """psi: 1x1 conv + BN (LCR's conv16 + bn16; the ReLU is part of ``attention_map``)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))


def stage_feature_index(backbone: Backbone, stage: int) -> int:
    """Index into timm's ``feature_info`` of PP-SSL's layer1..layer4: the ends of four equal parts.

    ResNet (stem + 4 stages): layer1..layer4; 4-stage CNNs: their stages; a 12-block ViT: blocks 3, 6, 9, 12.
    """
    count = len(backbone.model.feature_info)
    return math.ceil(stage * count / 4) - 1


@register_method("ppssl")
class PPSSL(Method):
    state_exclude = ("teacher.",)  # the frozen CLIP is rebuilt from its own weights, never checkpointed
    # Frozen or identical on every rank by construction: DDP neither broadcasts nor tracks them.
    ddp_ignore_prefixes = (*(f"moco.{p}" for p in MoCoEncoders.IGNORED), "teacher.", "text_embeddings")

    def __init__(self, cfg: PPSSLConfig, backbone: Backbone, facts: DatasetFacts):
        super().__init__(cfg, facts)
        self.embed_dim = backbone.num_features  # embed(): the pooled backbone feature
        channels = backbone.num_features
        # PP-SSL's own head ("two fully connected layers with ReLU and a linear layer with BN"),
        # not MoCo v2's Linear-ReLU-Linear.
        head = ProjectionHead(channels, cfg.hidden_dim, cfg.proj_dim, last_bn=True)
        self.moco = MoCoEncoders(backbone, cfg, head=head)
        self.use_ais = cfg.ais and cfg.alpha > 0
        self.sources = tuple(cfg.guidance.split("+")) if cfg.iadm and cfg.beta > 0 else ()
        if self.use_ais or self.sources:
            self.psi = _psi(channels, cfg.psi_channels)  # Eq. 2; IADM's w (Eq. 7) is the same z'
        if self.use_ais:
            teacher = CLIPTeacher(cfg.teacher)
            self.register_buffer("text_embeddings", teacher.encode_text(cfg.prompts).clone(), persistent=False)
            if cfg.teacher_mode == "online":
                self.teacher = teacher  # cached mode: CLIP is dropped here, u_t comes with the batch
            self.projector = nn.Linear(channels, teacher.embed_dim)
            # s of l = s * u T^T, read now: in cached mode the teacher is dropped after construction.
            self.logit_scale = teacher.logit_scale if cfg.logit_scale == "teacher" else float(cfg.logit_scale)

    # ---------------------------------------------------------------------------------------- hooks

    @classmethod
    def preflight(cls, config: PPSSLConfig) -> None:
        if config.ais and config.alpha > 0:
            check_weights(config.teacher)

    @classmethod
    def smoke_overrides(cls, config: dict) -> dict:
        teacher = {**(config.get("teacher") or {}), "model": TINY_MODEL, "pretrained": "random", "image_size": None}
        return {"queue_size": min(int(config.get("queue_size", 65536)), 256), "hidden_dim": 128, "teacher": teacher}

    # ---------------------------------------------------------------------------------------- stages

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = batch["view1"]
        if "image" in self.sources:
            x = x.detach().requires_grad_(True)  # Eq. 5 differentiates L_CL w.r.t. the input image
        f, stage_outputs = self._features(x)
        loss_cl, key = self._contrastive(f, batch["view2"])
        loss, parts = loss_cl, {"loss_cl": loss_cl.detach()}
        psi_out = self.psi(f) if hasattr(self, "psi") else None  # (B, K, h, w), once: AIS's z' and IADM's w
        z = attention_map(psi_out) if psi_out is not None else None  # Eq. 2, per image
        if self.use_ais:
            cached = batch["teacher_embedding"] if self.cfg.teacher_mode == "cached" else None
            loss_ais = self._ais(f, z, x, cached)
            loss, parts["loss_ais"] = loss + self.cfg.alpha * loss_ais, loss_ais.detach()
        if self.sources:
            loss_iadm = self._iadm(loss_cl, x, stage_outputs, psi_out)
            loss, parts["loss_iadm"] = loss + self.cfg.beta * loss_iadm, loss_iadm.detach()
        self.moco.enqueue_after_step(key)
        return {"loss": loss, **parts}

    def _features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Last feature map (B, C, h, w) and the raw outputs of the guidance stages, captured by forward
        hooks so they are the tensors on the autograd path ((B, C', h', w') maps, or (B, T, C') ViT tokens)."""
        captured: dict[str, Tensor] = {}
        with contextlib.ExitStack() as stack:
            for src in self.sources:
                if src != "image":
                    module = self.moco.backbone.model.get_submodule(self._stage_info(int(src[-1]))["module"])
                    hook = module.register_forward_hook(lambda _m, _i, out, src=src: captured.__setitem__(src, out))
                    stack.callback(hook.remove)
            f = self.moco.backbone.feature_map(x)
        return f, captured

    def _contrastive(self, f: Tensor, view2: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 1 between q = head(AvgPool(f)) and the momentum encoder's key of view2, vs the queue."""
        query = self.moco.query(f)
        key = self.moco.key(view2)
        return self.moco.contrastive_loss(query, key), key

    def _attention(self, f: Tensor) -> Tensor:
        """Eq. 2: z' = A(psi(f)), (B, C, h, w) -> (B, 1, h, w) in [0, 1], per image: AIS's mask, the
        embedding's (Eq. 10), and IADM's w in form normalized."""
        return attention_map(self.psi(f))

    def _ais(self, f: Tensor, z: Tensor, x: Tensor, cached_teacher: Tensor | None) -> Tensor:
        """Eqs. 3-4: distil CLIP's distribution over the N prompts into the attended features f * z'."""
        u_s = self.projector(self.moco.backbone.pool(f * z))  # (B, d), Eq. 3
        u_s = F.normalize(u_s.float(), dim=1)
        u_t = cached_teacher if self.cfg.teacher_mode == "cached" else self.teacher.encode_image(x)
        u_t = F.normalize(u_t.detach().float(), dim=1)
        text = self.text_embeddings  # (N, d), L2-normalised, computed once at construction
        scale = self.logit_scale
        return distillation_kl(scale * u_t @ text.t(), scale * u_s @ text.t(), self.cfg.kd_temperature)

    def _iadm_map(self, psi_out: Tensor) -> Tensor:
        """Eq. 7: w (B, 1, h, w) from psi(f) (B, K, h, w): LCR's batch-wide min-max ``att_max`` (form
        lcr) or the per-image z' of Eq. 2 (form normalized)."""
        return batch_attention_map(psi_out) if self.cfg.iadm_form == "lcr" else attention_map(psi_out)

    def _iadm(self, loss_cl: Tensor, x: Tensor, stage_outputs: dict[str, Tensor],
              psi_out: Tensor) -> Tensor:
        """Eqs. 5-8 for each guidance source, averaged: KL(Grad-Img || w), w = ``_iadm_map(psi(f))``.

        Grad-Img is a constant target; the gradient reaches the backbone through w = A(psi(f)).
        ``autograd.grad`` w.r.t. the inputs only (no parameter .grad is written, so DDP's reducer
        hooks do not fire); ``retain_graph`` keeps the graph for the backward of the total loss.
        """
        inputs = [x if src == "image" else stage_outputs[src] for src in self.sources]
        grads = torch.autograd.grad(loss_cl, inputs, retain_graph=True)  # Eq. 5
        w = self._iadm_map(psi_out)[:, 0]  # (B, h, w), Eq. 7: already on the last feature map's grid
        kl = row_softmax_kl if self.cfg.iadm_form == "lcr" else attention_kl  # Eq. 8's form
        losses = []
        for inp, grad in zip(inputs, grads):
            if inp.ndim == 3:  # ViT tokens (B, T, C): Grad-CAM per token, laid on the patch grid
                cam = F.relu((inp.detach() * grad).float().sum(-1, keepdim=True))  # (B, T, 1)
                target = self.moco.backbone.tokens_to_map(cam)[:, 0]
            else:
                target = grad_cam_target(inp, grad)  # (B, H', W'), Eq. 6
            target = F.adaptive_max_pool2d(target.unsqueeze(1), w.shape[-2:])[:, 0]  # (B, h, w)
            losses.append(kl(target, w))  # Eq. 8
        return torch.stack(losses).mean()

    def _stage_info(self, stage: int) -> dict:
        return self.moco.backbone.model.feature_info[stage_feature_index(self.moco.backbone, stage)]

    # ---------------------------------------------------------------------------------------- rest

    def after_step(self, progress: float) -> None:
        self.moco.after_step(progress)

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Eq. 10: v = normalize(AvgPool(z' * f)); with neither AIS nor IADM (no psi, no z'):
        v = normalize(AvgPool(f))."""
        f = self.moco.backbone.feature_map(images)
        if hasattr(self, "psi"):
            f = f * self._attention(f)
        return F.normalize(self.moco.backbone.pool(f).float(), dim=1)
