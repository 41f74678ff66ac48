"""PP-SSL (Li et al., paper 001): MoCo v2 + Anti-Interference Strategy + Image-Aided Distinction.

One training step, in named stages (B images, C channels and h x w grid of the last feature map):
  _features / _contrastive  x = view1 -> f (B, C, h, w) -> q; k = momentum encoder(view2); L_CL (Eq. 1)
  _ais    z' = A(psi(f)) (B, 1, h, w) (Eq. 2); u_s = Projector(AvgPool(f * z')) (Eq. 3);
          l_s, l_t = logit_scale * u T^T against the N prompt embeddings T; L_AIS (Eq. 4).
          Teacher u_t: the frozen CLIP image encoder on x (teacher_mode online, as the paper) or the
          batch's ``teacher_embedding`` column, CLIP on the un-augmented image, computed once by
          the embedding cache (teacher_mode cached: Train workers load CLIP once, on the CPU, to
          embed the prompts, then drop it; no CLIP runs per step or sits on the GPU).
  _iadm   Grad-Img = ReLU(sum_c g * dL_CL/dg) for the guidance input g (the image: Eqs. 5-6; or a
          stage's feature map: Table 4), a constant target; w = A(psi_g(g)) (Eq. 7); both max-pooled
          to h x w; L_IADM = KL(Grad-Img || w) (Eq. 8).
  L = L_CL + alpha L_AIS + beta L_IADM (Eq. 9); embedding v = normalize(AvgPool(z' * f)) (Eq. 10).
A(.) = channel max of per-channel min-max-normalised ReLU maps (``attention_map``).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgray.data.inputs import DatasetFacts
from fgray.losses import attention_kl, distillation_kl
from fgray.methods.base import Method
from fgray.methods.configs import PPSSLConfig
from fgray.methods.parts import MoCoEncoders, attention_map, grad_cam_target
from fgray.methods.registry import register_method
from fgray.models.backbone import Backbone
from fgray.models.clip import TINY_MODEL, CLIPTeacher, check_weights


def _psi(in_channels: int, out_channels: int) -> nn.Module:
    """psi: 1x1 conv + BN (the ReLU is part of ``attention_map``)."""
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
        self.moco = MoCoEncoders(backbone, cfg, last_bn=True)  # PP-SSL's head: ... a linear layer with BN
        self.use_ais = cfg.ais and cfg.alpha > 0
        self.sources = tuple(cfg.guidance.split("+")) if cfg.iadm and cfg.beta > 0 else ()
        channels = backbone.num_features
        if self.use_ais:
            teacher = CLIPTeacher(cfg.teacher)
            self.register_buffer("text_embeddings", teacher.encode_text(cfg.prompts).clone(), persistent=False)
            if cfg.teacher_mode == "online":
                self.teacher = teacher  # cached mode: CLIP is dropped here, u_t comes with the batch
            self.psi = _psi(channels, cfg.psi_channels)
            self.projector = nn.Linear(channels, teacher.embed_dim)
        self.psi_guidance = nn.ModuleDict({
            src: _psi(3 if src == "image" else self._stage_info(int(src[-1]))["num_chs"], cfg.psi_channels)
            for src in self.sources
        })

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
        if self.use_ais:
            cached = batch["teacher_embedding"] if self.cfg.teacher_mode == "cached" else None
            loss_ais = self._ais(f, x, cached)
            loss, parts["loss_ais"] = loss + self.cfg.alpha * loss_ais, loss_ais.detach()
        if self.sources:
            loss_iadm = self._iadm(loss_cl, x, stage_outputs, f.shape[-2:])
            loss, parts["loss_iadm"] = loss + self.cfg.beta * loss_iadm, loss_iadm.detach()
        self.moco.enqueue(key)
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

    def _ais(self, f: Tensor, x: Tensor, cached_teacher: Tensor | None) -> Tensor:
        """Eqs. 2-4: distil CLIP's distribution over the N prompts into the student's attended features."""
        z = attention_map(self.psi(f))  # (B, 1, h, w), Eq. 2
        u_s = F.normalize(self.projector(self.moco.backbone.pool(f * z)).float(), dim=1)  # (B, d), Eq. 3
        u_t = cached_teacher if self.cfg.teacher_mode == "cached" else self.teacher.encode_image(x)
        u_t = F.normalize(u_t.detach().float(), dim=1)
        text = self.text_embeddings  # (N, d), L2-normalised, computed once at construction
        scale = self.cfg.logit_scale
        return distillation_kl(scale * u_t @ text.t(), scale * u_s @ text.t(), self.cfg.kd_temperature)

    def _iadm(self, loss_cl: Tensor, x: Tensor, stage_outputs: dict[str, Tensor], grid: tuple[int, int]) -> Tensor:
        """Eqs. 5-8 for each guidance source, averaged; the Grad-CAM target is a constant.

        ``autograd.grad`` w.r.t. the inputs only (no parameter .grad is written, so DDP's reducer
        hooks do not fire); ``retain_graph`` keeps the graph for the real backward of the total loss.
        """
        inputs = [x if src == "image" else stage_outputs[src] for src in self.sources]
        grads = torch.autograd.grad(loss_cl, inputs, retain_graph=True)
        losses = []
        for src, inp, grad in zip(self.sources, inputs, grads):
            if inp.ndim == 3:  # ViT tokens (B, T, C): Grad-CAM per token, laid on the patch grid
                target = self.moco.backbone.tokens_to_map(F.relu((inp.detach() * grad).float().sum(-1, keepdim=True)))[:, 0]
                guide = self.moco.backbone.tokens_to_map(inp)
            else:
                target, guide = grad_cam_target(inp, grad), inp
            target = F.adaptive_max_pool2d(target.unsqueeze(1), grid)[:, 0]  # (B, h, w)
            w = F.adaptive_max_pool2d(attention_map(self.psi_guidance[src](guide)), grid)[:, 0]  # Eq. 7
            losses.append(attention_kl(target, w))  # Eq. 8
        return torch.stack(losses).mean()

    def _stage_info(self, stage: int) -> dict:
        return self.moco.backbone.model.feature_info[stage_feature_index(self.moco.backbone, stage)]

    # ---------------------------------------------------------------------------------------- rest

    def after_step(self, progress: float) -> None:
        self.moco.update_momentum(progress)

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Eq. 10: v = normalize(AvgPool(z' * f)); without AIS (no psi) v = normalize(AvgPool(f))."""
        f = self.moco.backbone.feature_map(images)
        if self.use_ais:
            f = f * attention_map(self.psi(f))
        return F.normalize(self.moco.backbone.pool(f).float(), dim=1)
