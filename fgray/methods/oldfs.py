"""OLDFS (paper 002; spec ``../shared/specs/oldfs.md``): discriminative features from synthesized
feature pairs, on a MoCo v2 or a SimSiam base.

One joint step (spec §3), x the clean image, x1 / x2 its augmented views (B images each):

1. ``base``: the base method's loss L_C on (x1, x2) (MoCo v2's InfoNCE with the queue, or
   SimSiam's symmetric negative cosine).
2. ``clean``: v = f(x), (B, n) pooled features, with gradients (L_R trains f too).
3. ``perturb``: v_p = v + v~g + v~var (Eqs. 3-6, ``oldfs_noise``), detached. The Grad-CAM score
   is the gradient of L_C(g(v), g(x2's key)) w.r.t. v alone (``autograd.grad``: no parameter
   receives it, and it is not part of the loss).
4. ``render``: x^ = h(v), x^_p = h(v_p) (``FeatureDecoder``); L_R = mse(x^, x) (Eq. 2).
5. ``synthesized``: L_Cp on (x^, x^_p) through f and g (Eq. 7: NT-Xent for MoCo, SimSiam's loss for
   SimSiam); with ``detach_generated`` the rendered images are data, so L_Cp trains f and g only.
   With ``bn_guard`` (default) these passes run train-mode BatchNorm on their own batch statistics
   but leave every running statistic as the real images left it (``parts.frozen_running_stats``):
   passing last in each step, the decoded images (input variance ~10x below real images') would
   otherwise make ~half of f's running statistics, which the test embedding normalises with. The
   heads' (SimSiam's projector and predictor; MoCo v2's head has no BatchNorm) are guarded too:
   no embedding reads them today, but they then describe the real images like f's.

L = L_C + alpha L_R + nu L_Cp (Eq. 8); alpha = nu = 0 is the base method alone. Stage 0
(``decoder``) trains h alone on L_R with f frozen (weights and BatchNorm statistics: f runs in
eval mode). In the joint stage h trains with an optimiser of its own (``decoder.joint_optimizer``:
the early code's Adam at 1e-4, spec §3) beside the encoder's (``train.optimizer``), declared as the
stage's ``group_optimizers``; both checkpoint together. The bank receives v after each optimiser
step. Retrieval embeds normalize(f(x)).
"""
from __future__ import annotations

import contextlib
import io

import torch
import torch.nn.functional as F
from torch import Tensor

from fgray.data.inputs import DatasetFacts
from fgray.losses import info_nce, negative_cosine, nt_xent, symmetric_negative_cosine
from fgray.methods.base import Method
from fgray.methods.configs import OLDFSConfig, Stage
from fgray.methods.oldfs_noise import FeatureBank, gradcam_noise, gradcam_scores, lowvar_noise, lowvar_scores
from fgray.methods.parts import MoCoEncoders, frozen_running_stats
from fgray.methods.registry import register_method
from fgray.models.backbone import Backbone
from fgray.models.decoder import FeatureDecoder
from fgray.models.heads import ProjectionHead


@register_method("oldfs")
class OLDFS(Method):
    # MoCo base: the momentum encoder and queue are identical on every rank; the bank too (every
    # rank pushes its own v, so it is per-rank state DDP must not broadcast).
    ddp_ignore_prefixes = (*(f"moco.{p}" for p in MoCoEncoders.IGNORED), "bank.")
    per_rank_prefixes = ("bank.",)

    def __init__(self, cfg: OLDFSConfig, backbone: Backbone, facts: DatasetFacts):
        super().__init__(cfg, facts)
        n = backbone.num_features
        self.embed_dim = n
        if cfg.base == "mocov2":
            self.moco = MoCoEncoders(backbone, cfg)  # MoCo v2's Linear-ReLU-Linear head
        else:  # SimSiam's projector (BN on every layer) and predictor, as fgray.methods.simsiam
            self.projector = ProjectionHead(n, cfg.hidden_dim, cfg.proj_dim, layers=3, last_bn=True)
            self.predictor = ProjectionHead(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim, layers=2)
            self.simsiam_backbone = backbone
        if cfg.synthesizes:
            self.decoder = FeatureDecoder(n, facts.image_size, cfg.decoder.width, cfg.decoder.blocks)
            if cfg.decoder.weights:
                self.decoder.load_state_dict(load_decoder(cfg.decoder.weights))
        self.bank = FeatureBank(n, cfg.bank_size)
        self.stage_name = "train"
        self.pending_features: Tensor | None = None

    @property
    def backbone(self) -> Backbone:
        return self.moco.backbone if self.cfg.base == "mocov2" else self.simsiam_backbone

    @classmethod
    def smoke_overrides(cls, config: dict) -> dict:
        decoder = {**(config.get("decoder") or {}), "width": 32, "pretrain_epochs": 1}
        return {"queue_size": min(int(config.get("queue_size", 65536)), 256), "hidden_dim": 128,
                "bank_size": min(int(config.get("bank_size", 5632)), 64), "decoder": decoder}

    def start_stage(self, stage: Stage) -> None:
        self.stage_name = stage.name

    def param_groups(self) -> list[dict]:
        """encoder (f, g and SimSiam's predictor) and decoder (h); by name, not by requires_grad:
        the decoder stage freezes the encoder and the joint stage must find it again."""
        frozen = ("decoder.", "moco.key_backbone.", "moco.key_head.")  # h, and MoCo's momentum copy
        encoder = [p for name, p in self.named_parameters() if not name.startswith(frozen)]
        groups = [{"name": "encoder", "params": encoder}]
        if self.cfg.synthesizes:
            groups.append({"name": "decoder", "params": list(self.decoder.parameters())})
        return groups

    # ---------------------------------------------------------------------------------------- stages

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.stage_name == "decoder":
            return self._decoder_step(batch["clean"])
        x, cfg = batch["clean"], self.cfg
        loss_c, side_loss = self._base(batch["view1"], batch["view2"])
        loss, parts = loss_c, {"loss_c": loss_c.detach()}
        if not cfg.synthesizes:  # alpha = nu = 0: the base method alone (Table 4's MoCo v2 row)
            return {"loss": loss, **parts}
        v = self.backbone(x)  # (B, n) "clean"
        self.pending_features = v.detach()
        v_p, noise_parts = self._perturb(v, side_loss)
        parts.update(noise_parts)
        x_hat, x_hat_p = self.decoder(v), self.decoder(v_p)  # "render"
        loss_r = F.mse_loss(x_hat.float(), x.float())  # Eq. 2
        loss, parts["loss_r"] = loss + cfg.alpha * loss_r, loss_r.detach()
        if cfg.nu > 0:  # "synthesized"
            if cfg.detach_generated:
                x_hat, x_hat_p = x_hat.detach(), x_hat_p.detach()
            # the decoded images' batch statistics stay out of the running ones the test embedding uses
            with frozen_running_stats(self) if cfg.bn_guard else contextlib.nullcontext():
                loss_cp = self._pair_loss(x_hat, x_hat_p)
            loss, parts["loss_cp"] = loss + cfg.nu * loss_cp, loss_cp.detach()
        return {"loss": loss, **parts}

    def _decoder_step(self, x: Tensor) -> dict[str, Tensor]:
        """Stage 0: L_R of h(f(x)) with f frozen (no gradient, BatchNorm statistics untouched)."""
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            v = self.backbone(x)
        self.backbone.train(was_training)
        loss_r = F.mse_loss(self.decoder(v).float(), x.float())
        return {"loss": loss_r, "loss_r": loss_r.detach()}

    def _base(self, x1: Tensor, x2: Tensor):
        """L_C on the augmented pair, and the function of v whose gradient is Eq. 3's
        (the same loss with g(v) in the query's place)."""
        if self.cfg.base == "mocov2":
            query = self.moco.query(self.backbone.feature_map(x1))
            key = self.moco.key(x2)
            self.moco.enqueue_after_step(key)
            negatives = self.moco.queue.keys.detach()
            side = lambda v: info_nce(F.normalize(self.moco.head(v), dim=1), key, negatives,  # noqa: E731
                                      self.cfg.temperature)
            return self.moco.contrastive_loss(query, key), side
        loss, z2 = self._simsiam(x1, x2)
        side = lambda v: negative_cosine(self.predictor(self.projector(v)), z2)  # noqa: E731
        return loss, side

    def _simsiam(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """SimSiam's symmetric loss on the pair (a, b), and b's projection."""
        za, zb = self.projector(self.backbone(a)), self.projector(self.backbone(b))
        return symmetric_negative_cosine(self.predictor(za), self.predictor(zb), za, zb), zb

    def _perturb(self, v: Tensor, side_loss) -> tuple[Tensor, dict[str, Tensor]]:
        """v_p = v + v~g + v~var (Eqs. 3-6), detached; parts: the noises' mean magnitudes and the
        share of dimensions below kappa."""
        cfg, parts = self.cfg, {}
        noise = torch.zeros_like(v, dtype=torch.float32)
        if cfg.noise in ("gradcam", "both"):
            grad = torch.autograd.grad(side_loss(v), v, retain_graph=True)[0]  # Eq. 3, w.r.t. v only
            noise_g = gradcam_noise(gradcam_scores(grad, v), cfg.eps_g, cfg.noise_param)
            noise, parts["noise_g"] = noise + noise_g, noise_g.abs().mean()
        rows = self.bank.rows()
        if cfg.noise in ("lowvar", "both") and rows.shape[0] >= 2 * v.shape[0]:  # >= 2 batches in the bank
            s, s_bar = lowvar_scores(rows, cfg.lowvar_normalize)
            noise_var = lowvar_noise(s, s_bar, v.shape[0], cfg.eps_var, cfg.kappa, cfg.noise_param)
            noise, parts["noise_var"] = noise + noise_var, noise_var.abs().mean()
            parts["lowvar_frac_below_kappa"] = (s < cfg.kappa).float().mean()
        return (v.detach().float() + noise).to(v.dtype), parts

    def _pair_loss(self, a: Tensor, b: Tensor) -> Tensor:
        """Eq. 7 on the rendered pair: NT-Xent of g(f(.)) (MoCo base), SimSiam's loss (SimSiam base)."""
        if self.cfg.base == "mocov2":
            return nt_xent(self.moco.head(self.backbone(a)), self.moco.head(self.backbone(b)), self.cfg.temperature)
        return self._simsiam(a, b)[0]

    # ---------------------------------------------------------------------------------------- rest

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        if self.pending_features is not None:
            self.bank.push(self.pending_features)
            self.pending_features = None
        if self.cfg.base == "mocov2":
            self.moco.after_step(progress)

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        return F.normalize(self.backbone(images).float(), dim=1)


def load_decoder(path: str) -> dict[str, Tensor]:
    """A decoder's state dict from a file of it, or from an oldfs checkpoint (folder or state file);
    local, or a URI pyarrow reads (s3://, gs://, file://)."""
    import pyarrow.fs as pafs

    from fgray import storage
    from fgray.checkpoint import STATE_FILE

    fs, where = storage.filesystem(path)
    if fs.get_file_info(where).type == pafs.FileType.Directory:
        where = f"{where.rstrip('/')}/{STATE_FILE}"
    with fs.open_input_stream(where) as stream:
        state = torch.load(io.BytesIO(stream.read()), map_location="cpu", weights_only=False)
    if "method" in state:  # an fgray checkpoint: the method's decoder.* entries
        state = {k[len("decoder."):]: v for k, v in state["method"].items() if k.startswith("decoder.")}
        if not state:
            raise ValueError(f"{path}: the checkpoint holds no decoder (not an oldfs run with a decoder)")
    return state
