"""A frozen CLIP teacher (open_clip) for PP-SSL's Anti-Interference Strategy (paper 001, §3.2).

``CLIPTeacher`` wraps an open_clip model: ``encode_image`` takes fgray's batches as they are
(ImageNet-normalised, at the trial's image size), converts them to CLIP's normalisation and
input size inside, and returns L2-normalised embeddings u_t (B, d); ``encode_text`` embeds a
prompt corpus once (T, (N, d), L2-normalised) and caches it; ``logit_scale`` is the model's own
exp(logit_scale), the factor CLIP's zero-shot logits put on the cosines. The teacher never trains: its
parameters do not require gradients and it stays in eval mode when its parent is ``.train()``ed.

Weights (``TeacherConfig.pretrained``): an open_clip tag (``openai``: looked up in the local
Hugging Face / open_clip caches, downloaded when the hub is reachable), a file (local,
``file:///mount/...``, or ``s3://`` / ``gs://``: copied once per node, ``fgray.weights_uri``), or
``random`` (seeded random init, nothing downloaded: tests and ``--profile smoke`` use it with
the ~1.6M-parameter ``fgray-tiny-clip`` architecture). ``check_weights`` is the preflight
check that fails with one line before any trial starts when weights cannot be found.

open_clip is imported lazily (it takes seconds): importing fgray never needs it.
"""
from __future__ import annotations

import copy
import difflib
import functools
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgray.methods.configs import TeacherConfig
from fgray.node_paths import is_object_store
from fgray.weights_uri import StoreUnreachable, local_weights, stored_file

# fgray's batches are normalised with ImageNet statistics (fgray.engine.normalize_images).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's default when a config names none
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")

TINY_MODEL = "fgray-tiny-clip"
# An open_clip CLIP model config (the schema of open_clip/model_configs/*.json), small enough
# for unit tests and smoke sweeps: 32-d embeddings, 2-layer ViT (8 px patches at 32 px) and text towers.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def is_weights_path(pretrained: str) -> bool:
    """A file rather than a tag: has a folder part (a URI has), starts with ~ or ., or ends like a weights file."""
    return ("/" in pretrained or os.sep in pretrained or pretrained.startswith(("~", "."))
            or pretrained.endswith(WEIGHT_SUFFIXES))


def _known_models() -> list[str]:
    import open_clip

    return [TINY_MODEL, *open_clip.list_models()]


def check_weights(cfg: TeacherConfig, key: str = "method.teacher") -> None:
    """Raise ConfigError (one line) unless ``cfg``'s architecture exists and its weights can be loaded."""
    from fgray.config import ConfigError

    models = _known_models()
    if cfg.model not in models:
        close = difflib.get_close_matches(cfg.model, models, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{key}.model: unknown open_clip model '{cfg.model}'{hint}")
    tag = "openai" if cfg.pretrained == "random" or is_weights_path(cfg.pretrained) else cfg.pretrained
    how = (f"on a machine with internet run `python -c \"import open_clip; open_clip.create_model('{cfg.model}', "
           f"pretrained='{tag}')\"`, copy the file it downloads (under ~/.cache/huggingface) where every node can "
           f"read it (s3://BUCKET/PREFIX/FILE, or a mount) and set {key}.pretrained=/path/to/it "
           f"(or {key}.pretrained=random for a plumbing test)")
    if cfg.pretrained == "random":
        return
    if is_weights_path(cfg.pretrained):
        path = cfg.pretrained if is_object_store(cfg.pretrained) else os.path.abspath(local_weights(cfg.pretrained))
        try:
            found = stored_file(path)
        except StoreUnreachable as err:  # the store cannot be asked: no credentials, no network
            raise ConfigError(f"{key}.pretrained: {err}") from None
        if not found:
            raise ConfigError(f"{key}.pretrained: CLIP weights file not found: fgray looked for {path}; {how}")
        return
    if cfg.model == TINY_MODEL:
        raise ConfigError(f"{key}.pretrained: {TINY_MODEL} has no published weights: use random or a file path")
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    tag_cfg = get_pretrained_cfg(cfg.model, cfg.pretrained)
    if not tag_cfg:
        raise ConfigError(f"{key}.pretrained: '{cfg.pretrained}' is neither a file nor an open_clip tag of {cfg.model} "
                          f"(tags: {list_pretrained_tags_by_model(cfg.model)})")
    found, looked = _cached_tag_file(tag_cfg)
    if found is None and not (tag_cfg.get("hf_hub") and _hub_reachable(*_hub_file(tag_cfg))):
        raise ConfigError(f"{key}.pretrained: CLIP weights {cfg.model}/{cfg.pretrained} not found (fgray looked in "
                          f"{' and '.join(looked)}) and huggingface.co is unreachable: {how}")


def _hub_file(tag_cfg: dict) -> tuple[str, tuple[str, ...]]:
    """(repo id, candidate file names) of an open_clip tag's hub entry (safetensors first, as open_clip)."""
    repo, filename = os.path.split(tag_cfg["hf_hub"])  # "org/repo/" -> default file; "org/repo/file.bin"
    if not filename:
        return repo, ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    stem, ext = os.path.splitext(filename)
    return repo, ((f"{stem}.safetensors",) if ext in (".bin", ".pth") else ()) + (filename,)


def _cached_tag_file(tag_cfg: dict) -> tuple[str | None, list[str]]:
    """(a locally cached weights file of the tag or None, the places looked in)."""
    looked: list[str] = []
    if tag_cfg.get("hf_hub"):
        from huggingface_hub import constants, try_to_load_from_cache

        repo, names = _hub_file(tag_cfg)
        looked.append(f"{constants.HF_HUB_CACHE} for {repo}")
        for name in names:
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit, looked
    if tag_cfg.get("url"):
        path = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(tag_cfg["url"]))
        looked.append(path)
        if os.path.isfile(path):
            return path, looked
    return None, looked


@functools.lru_cache(maxsize=None)
def _hub_reachable(repo: str, names: tuple[str, ...], timeout: float = 5.0) -> bool:
    """Whether the hub answers for the tag's weights (once per process: preflight checks every trial)."""
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        get_hf_file_metadata(hf_hub_url(repo, names[-1]), timeout=timeout)
        return True
    except Exception:  # offline mode, no route, DNS failure, HTTP error: not reachable for our purpose
        return False


def build_clip(cfg: TeacherConfig):
    """(open_clip model in eval mode on the CPU, its tokenizer); random weights are seeded by ``cfg.seed``."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    random_init = cfg.pretrained == "random"
    path = None if random_init or not is_weights_path(cfg.pretrained) else local_weights(cfg.pretrained)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.model == TINY_MODEL:
            model = open_clip.CLIP(**copy.deepcopy(TINY_CLIP_CONFIG))
            if path is not None:
                open_clip.load_checkpoint(model, path)
            tokenizer = open_clip.SimpleTokenizer(context_length=TINY_CLIP_CONFIG["text_cfg"]["context_length"])
        else:
            tag_cfg = {} if random_init or path else get_pretrained_cfg(cfg.model, cfg.pretrained)
            model = open_clip.create_model(cfg.model, pretrained=None if random_init else (path or cfg.pretrained),
                                           pretrained_text=False, force_quick_gelu=bool(tag_cfg.get("quick_gelu")))
            tokenizer = open_clip.get_tokenizer(cfg.model)
    return model.eval(), tokenizer


class CLIPTeacher(nn.Module):
    """Frozen CLIP: ``encode_image`` (B, 3, H, W) ImageNet-normalised -> (B, d); ``encode_text`` -> (N, d)."""

    def __init__(self, cfg: TeacherConfig):
        super().__init__()
        import open_clip

        self.cfg = cfg
        model, self.tokenizer = build_clip(cfg)
        self.model = model.requires_grad_(False)
        side = cfg.image_size or model.visual.image_size
        self.image_size: tuple[int, int] = (side, side) if isinstance(side, int) else tuple(side)
        self.embed_dim: int = int(model.visual.output_dim)
        # CLIP's learned temperature: its zero-shot logits are exp(logit_scale) * cosine (100 for OpenAI's
        # weights, where training clamped it; 1 / 0.07 at random init). PP-SSL's ``logit_scale: teacher``.
        self.logit_scale: float = float(model.logit_scale.detach().float().exp().mean())
        pre = open_clip.get_model_preprocess_cfg(model)
        mean = torch.tensor(pre.get("mean", OPENAI_CLIP_MEAN)).view(1, 3, 1, 1)
        std = torch.tensor(pre.get("std", OPENAI_CLIP_STD)).view(1, 3, 1, 1)
        in_mean, in_std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        # x_clip = (x * in_std + in_mean - mean) / std = x * scale + shift
        self.register_buffer("scale", in_std / std, persistent=False)
        self.register_buffer("shift", (in_mean - mean) / std, persistent=False)
        self._text_cache: dict[tuple[str, ...], Tensor] = {}
        self.text_encoder_calls = 0  # how often the text tower actually ran (tests: once per corpus)
        self.eval()

    def train(self, mode: bool = True) -> "CLIPTeacher":
        return super().train(False)  # frozen: BN/dropout stay in inference mode whatever the parent does

    @torch.no_grad()
    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) ImageNet-normalised at any size -> (B, d) L2-normalised CLIP image embeddings u_t."""
        x = images.detach().to(self.scale.device, torch.float32) * self.scale + self.shift
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False, antialias=True)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """N prompts -> (N, d) L2-normalised text embeddings T; computed once per corpus, then cached."""
        key = tuple(prompts)
        if key not in self._text_cache:
            self.text_encoder_calls += 1
            tokens = self.tokenizer(list(key)).to(self.scale.device)
            self._text_cache[key] = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return self._text_cache[key]
