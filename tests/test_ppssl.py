"""PP-SSL (paper 001): AIS against slow references of Eqs. 2-4 and 10, gradient routing, the frozen
CLIP teacher, guidance sources, ViT backbones, preflight, cached teacher embeddings and the sweep files
(IADM's Eqs. 5-8 and its forms: tests/test_ppssl_iadm.py).

CPU only, a tiny randomly initialised CLIP (fgray-tiny-clip) and timm's test_resnet / test_vit at 64 px.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fgray.config import ConfigError, ExperimentConfig, validate
from fgray.sweep_file import load_sweep
from fgray.methods.configs import PPSSLConfig, TeacherConfig, read_corpus
from fgray.methods.parts import attention_map
from fgray.methods.ppssl import PPSSL
from fgray.models import build_backbone
from fgray.models.clip import TINY_MODEL
from ppssl_refs import make, batch, SIZE, TINY, ref_attention, softmax, numpy


@pytest.fixture(scope="module")
def method() -> PPSSL:
    return make()


# ------------------------------------------------------------------------------------------------
# Equations


def test_attention_map_matches_reference():
    x = torch.randn(3, 5, 4, 6)
    x[0, 1] = -1.0  # an all-negative channel is all zero after relu and must stay finite
    np.testing.assert_allclose(numpy(attention_map(x))[:, 0], ref_attention(numpy(x)), atol=1e-6)
    one_cell = torch.tensor([[[[2.0]], [[-1.0]]], [[[-3.0]], [[-1.0]]]])  # (2, 2, 1, 1): a 1 x 1 grid
    np.testing.assert_allclose(numpy(attention_map(one_cell)).ravel(), [1.0, 0.0], atol=1e-6)


def test_attention_map_takes_the_channel_max_before_the_min_max():
    # By hand: relu -> channel max [3, 3, 2] -> min-max [1, 1, 0]. The other order (min-max per
    # channel: [0, .5, 1] and [1, 1, 0], then max) would give [1, 1, 1].
    x = torch.tensor([[[[0.0, 1.0, 2.0]], [[3.0, 3.0, -5.0]]]])  # (1, 2, 1, 3)
    np.testing.assert_allclose(numpy(attention_map(x)).ravel(), [1.0, 1.0, 0.0], atol=1e-6)
    # The min-max is per image: a batch-mate with larger values changes nothing.
    pair = torch.cat([x, 10 * x + 1])
    np.testing.assert_allclose(numpy(attention_map(pair))[0], numpy(attention_map(x))[0], atol=1e-6)


@pytest.mark.parametrize("tau, logit_scale", [(1.0, "teacher"), (0.5, "teacher"), (3.0, "teacher"), (1.0, 100.0)])
def test_ais_loss_matches_eqs_2_to_4(tau, logit_scale):
    method = make(kd_temperature=tau, iadm=False, logit_scale=logit_scale)
    x = batch()["view1"]
    f = method.moco.backbone.feature_map(x)
    got = method._ais(f, method._attention(f), x, None)
    # Reference: psi's output (a module call) and the weights, then plain numpy.
    psi_out, f_np = numpy(method.psi(f)), numpy(f)
    z = ref_attention(psi_out)  # (B, h, w)
    pooled = (f_np * z[:, None]).mean(axis=(2, 3))  # AvgPool(f * z')
    u_s = pooled @ numpy(method.projector.weight).T + numpy(method.projector.bias)
    u_s /= np.linalg.norm(u_s, axis=1, keepdims=True)
    u_t = numpy(method.teacher.encode_image(x))
    text = numpy(method.text_embeddings)
    scale, tau = method.logit_scale, method.cfg.kd_temperature
    assert scale == pytest.approx(1 / 0.07 if logit_scale == "teacher" else logit_scale, rel=1e-5)
    p_t, p_s = softmax(scale * u_t @ text.T / tau), softmax(scale * u_s @ text.T / tau)
    expected = tau**2 * np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1))
    assert float(got.detach()) == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_config_defaults_are_lcr_and_teacher_scale():
    cfg = PPSSLConfig()
    assert cfg.iadm_form == "lcr" and cfg.logit_scale == "teacher"
    assert PPSSLConfig(logit_scale=100).logit_scale == 100.0
    for bad, where in [({"iadm_form": "flat"}, "method.iadm_form"), ({"logit_scale": 0}, "method.logit_scale"),
                       ({"logit_scale": "clip"}, "method.logit_scale")]:
        with pytest.raises(ConfigError) as err:
            validate(ExperimentConfig, {"method": {"name": "ppssl", **bad}})
        assert str(err.value).startswith(where), (bad, str(err.value))


def test_logit_scale_teacher_reads_clips_own_scale(tmp_path):
    """logit_scale: teacher is the CLIP model's exp(logit_scale) (CLIP's zero-shot convention; 1 / 0.07
    for open_clip's random init, 100 in a checkpoint trained to CLIP's clamp), read at construction,
    so cached mode (no teacher kept) has it too."""
    m = make()
    assert m.logit_scale == pytest.approx(float(m.teacher.model.logit_scale.exp()), rel=1e-6)
    assert m.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    assert make(teacher_mode="cached").logit_scale == pytest.approx(m.logit_scale)
    assert make(logit_scale=100.0).logit_scale == 100.0
    state = m.teacher.model.state_dict()
    state["logit_scale"] = torch.tensor(math.log(100.0))  # as OpenAI's ViT-B/32 checkpoint holds it
    torch.save(state, tmp_path / "clip100.pt")
    trained = TeacherConfig(model=TINY_MODEL, pretrained=str(tmp_path / "clip100.pt"))
    assert make(teacher=trained).logit_scale == pytest.approx(100.0, rel=1e-5)


def test_embedding_is_eq_10(method):
    method.eval()
    x = batch()["view1"]
    try:
        got = method.embed(x)
        with torch.no_grad():
            f = method.moco.backbone.feature_map(x)
            z = ref_attention(numpy(method.psi(f)))
        v = (numpy(f) * z[:, None]).mean(axis=(2, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        np.testing.assert_allclose(numpy(got), v, atol=1e-5)
    finally:
        method.train()


def test_total_loss_is_eq_9(method):
    out = method(batch())
    alpha, beta = method.cfg.alpha, method.cfg.beta
    expected = out["loss_cl"] + alpha * out["loss_ais"] + beta * out["loss_iadm"]
    assert float(out["loss"].detach()) == pytest.approx(float(expected), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# Gradient routing


def test_gradients_reach_student_only():
    m = make(guidance="image+layer2")
    m.train()
    m(batch())["loss"].backward()
    students = ["moco.backbone.", "moco.head.", "psi.", "projector."]
    for name, p in m.named_parameters():
        if name.startswith(("teacher.", "moco.key_")):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert any(name.startswith(s) for s in students), name
            assert p.grad is not None, f"{name} got no gradient"
    for prefix in students:
        grads = [p.grad.abs().sum() for n, p in m.named_parameters() if n.startswith(prefix)]
        assert grads and sum(grads) > 0, prefix
    assert {g["params"][0].requires_grad for g in m.param_groups()} == {True}
    trained = {id(p) for g in m.param_groups() for p in g["params"]}
    assert not any(id(p) in trained for p in m.teacher.parameters())


def test_teacher_frozen_eval_and_not_checkpointed(method):
    from fgray.checkpoint import method_state

    method.train()
    assert method.moco.backbone.training and not method.teacher.training and not method.teacher.model.training
    assert not any(p.requires_grad for p in method.teacher.parameters())
    state = method_state(method)
    assert state and not any(k.startswith("teacher.") or k == "text_embeddings" for k in state)
    from fgray.methods.parts import ddp_ignore

    ignored = ddp_ignore(method, method.ddp_ignore_prefixes)
    assert ignored == method._ddp_params_and_buffers_to_ignore  # the attribute DDP reads
    assert {n for n in ignored if n.startswith(("teacher.", "text_embeddings"))}
    assert all(n.startswith(("teacher.", "text_embeddings", "moco.key_", "moco.queue.")) for n in ignored)


def test_text_embeddings_computed_once():
    m = make()
    teacher = m.teacher
    calls = []
    original = teacher.model.encode_text
    teacher.model.encode_text = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        for _ in range(2):
            m(batch())
    finally:
        del teacher.model.encode_text
    assert calls == [] and teacher.text_encoder_calls == 1  # once, at construction
    assert m.text_embeddings.shape == (8, teacher.embed_dim)
    np.testing.assert_allclose(m.text_embeddings.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert teacher.encode_text(m.cfg.prompts) is teacher.encode_text(list(m.cfg.prompts))  # cached per corpus
    assert teacher.text_encoder_calls == 1


def test_teacher_converts_imagenet_input_to_clip(method):
    from fgray.models.clip import IMAGENET_MEAN, IMAGENET_STD

    teacher = method.teacher
    x = batch()["view1"]
    raw = x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    clip_in = F.interpolate((raw - mean) / std, size=teacher.image_size, mode="bicubic", antialias=True)
    with torch.no_grad():
        expected = F.normalize(teacher.model.encode_image(clip_in), dim=-1)
    torch.testing.assert_close(teacher.encode_image(x), expected, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# Variants


@pytest.mark.parametrize("guidance", ["layer1", "layer2", "layer3", "layer4", "image+layer4"])
def test_guidance_layers_run(guidance):
    m = make(guidance=guidance, alpha=0.0)  # AIS off: no teacher, IADM alone
    out = m(batch())
    assert torch.isfinite(out["loss"]) and "loss_iadm" in out and "loss_ais" not in out
    out["loss"].backward()
    assert all(p.grad is not None for p in m.psi.parameters())
    assert sum(float(p.grad.abs().sum()) for p in m.moco.backbone.parameters()) > 0
    assert not hasattr(m, "teacher") and not hasattr(m, "projector")


@pytest.mark.parametrize("guidance", ["image", "layer2"])
def test_vit_backbone(guidance):
    m = make("test_vit", guidance=guidance)
    out = m(batch(2))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and set(out) == {"loss", "loss_cl", "loss_ais", "loss_iadm"}
    assert all(p.grad is not None for n, p in m.named_parameters() if p.requires_grad)
    m.eval()
    emb = m.embed(batch(2)["view1"])
    assert emb.shape == (2, m.moco.backbone.num_features)


def test_switches_skip_the_computation():
    m = make(ais=False, iadm=False)
    out = m(batch())
    assert set(out) == {"loss", "loss_cl"} and not hasattr(m, "psi")
    assert not hasattr(m, "teacher") and not hasattr(m, "text_embeddings")
    m.eval()
    f = m.moco.backbone.feature_map(batch()["view1"])
    torch.testing.assert_close(m.embed(batch()["view1"]), F.normalize(f.mean(dim=(2, 3)), dim=1))


def test_iadm_without_ais_keeps_z_and_embeds_with_eq_10():
    m = make(ais=False)
    assert hasattr(m, "psi") and not hasattr(m, "teacher") and not hasattr(m, "projector")
    assert set(m(batch())) == {"loss", "loss_cl", "loss_iadm"}
    m.eval()
    x = batch()["view1"]
    with torch.no_grad():
        f = m.moco.backbone.feature_map(x)
        z = ref_attention(numpy(m.psi(f)))
    v = (numpy(f) * z[:, None]).mean(axis=(2, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    np.testing.assert_allclose(numpy(m.embed(x)), v, atol=1e-5)


def test_online_teacher_sees_view1():
    m = make()
    seen = []
    original = m.teacher.encode_image
    m.teacher.encode_image = lambda images: seen.append(images.detach().clone()) or original(images)
    b = batch()
    out = m(b)
    assert len(seen) == 1 and torch.equal(seen[0], b["view1"]) and not torch.equal(seen[0], b["view2"])
    # ... and u_t is the teacher's embedding of view1: L_AIS recomputed from it agrees.
    f = m.moco.backbone.feature_map(b["view1"])
    again = m._ais(f, m._attention(f), b["view1"], None)
    assert float(out["loss_ais"]) == pytest.approx(float(again.detach()), rel=1e-5)


def test_cached_teacher_mode_uses_the_batch_embedding():
    m = make(teacher_mode="cached")
    g = torch.Generator().manual_seed(5)
    dim = m.text_embeddings.shape[1]
    first, second = (F.normalize(torch.randn(4, dim, generator=g), dim=1) for _ in "ab")
    x = batch()["view1"]
    f = m.moco.backbone.feature_map(x)
    z = m._attention(f)
    losses = []
    for cached in (first, second):
        got = float(m._ais(f, z, x, cached).detach())
        # Eq. 4 with u_t = the cached embedding (tau = 1): KL(softmax(l_t) || softmax(l_s)).
        u_s = (numpy(f) * ref_attention(numpy(m.psi(f)))[:, None]).mean(axis=(2, 3))
        u_s = u_s @ numpy(m.projector.weight).T + numpy(m.projector.bias)
        u_s /= np.linalg.norm(u_s, axis=1, keepdims=True)
        text, scale = numpy(m.text_embeddings), m.logit_scale
        p_t, p_s = softmax(scale * numpy(cached) @ text.T), softmax(scale * u_s @ text.T)
        expected = float(np.mean(np.sum(p_t * np.log(p_t / p_s), axis=1)))
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)
        b = batch()
        b["teacher_embedding"] = cached
        losses.append(float(m(b)["loss_ais"]))
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)  # the batch's value is what L_AIS reads


def test_cached_teacher_mode_reads_the_batch():
    m = make(teacher_mode="cached")
    assert not hasattr(m, "teacher") and m.text_embeddings.shape[0] == 8
    assert m.cfg.inputs.keys == ("view1", "view2", "teacher_embedding")
    assert make().cfg.inputs.keys == ("view1", "view2")
    assert dict(m.cfg.inputs.embeddings)["teacher_embedding"] == m.cfg.teacher.encoder()
    b = batch()
    with pytest.raises(KeyError, match="teacher_embedding"):
        m(b)
    b["teacher_embedding"] = F.normalize(torch.randn(4, m.text_embeddings.shape[1]), dim=1)
    out = m(b)
    assert torch.isfinite(out["loss"]) and "loss_ais" in out


def test_loss_falls_on_a_fixed_batch():
    m = make(alpha=1.2, beta=0.01)
    m.train()
    optimizer = torch.optim.SGD(m.param_groups(), lr=0.03, momentum=0.9)
    b = batch(4)
    losses = []
    for _ in range(3):
        out = m(b)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        m.after_step(0.5)
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0], losses


# ------------------------------------------------------------------------------------------------
# Configuration, preflight, weights


def test_preflight_missing_weights_file_is_one_line(tmp_path):
    missing = tmp_path / "nowhere" / "clip.safetensors"
    cfg = PPSSLConfig(teacher=TeacherConfig(pretrained=str(missing)))
    with pytest.raises(ConfigError) as err:
        PPSSL.preflight(cfg)
    message = str(err.value)
    assert "\n" not in message and message.startswith("method.teacher.pretrained:") and str(missing) in message
    PPSSL.preflight(PPSSLConfig(teacher=TINY))  # random weights: nothing to look for
    PPSSL.preflight(PPSSLConfig(alpha=0.0, teacher=TeacherConfig(pretrained=str(missing))))  # no AIS, no teacher


def test_preflight_uncached_tag_offline_names_where_it_looked(tmp_path, monkeypatch):
    import huggingface_hub.constants

    import fgray.models.clip as clip

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(clip, "_hub_reachable", lambda *a, **k: False)
    with pytest.raises(ConfigError) as err:
        PPSSL.preflight(PPSSLConfig())  # ViT-B-32 / openai
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "hf") in message and "pretrained=" in message
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        PPSSL.preflight(PPSSLConfig(teacher=TeacherConfig(model="ViT-B-33")))


def test_local_weights_file_loads(tmp_path, method):
    path = tmp_path / "tiny.pt"
    torch.save(method.teacher.model.state_dict(), path)
    cfg = TeacherConfig(model=TINY_MODEL, pretrained=str(path), seed=123)
    PPSSL.preflight(PPSSLConfig(teacher=cfg))
    from fgray.models.clip import CLIPTeacher

    loaded = CLIPTeacher(cfg)
    x = batch()["view1"]
    torch.testing.assert_close(loaded.encode_image(x), method.teacher.encode_image(x))


def test_config_validation(tmp_path):
    corpus = tmp_path / "prompts.txt"
    corpus.write_text("# fine-grained\na bird\n\na dog\na car\n")
    cfg = PPSSLConfig(corpus=str(corpus), corpus_size=2)
    assert cfg.prompts == ("a bird", "a dog") and read_corpus(str(corpus)) == ("a bird", "a dog", "a car")
    base = {"name": "ppssl"}
    for bad, where in [({"guidance": "layer5"}, "method.guidance"), ({"corpus": ["a bird"]}, "method.corpus"),
                       ({"corpus": str(tmp_path / "none.txt")}, "method.corpus"), ({"corpus_size": 9}, "method"),
                       ({"teacher_mode": "lazy"}, "method.teacher_mode"),
                       ({"teacher": {"modle": "x"}}, "method.teacher")]:
        with pytest.raises(ConfigError) as err:
            validate(ExperimentConfig, {"method": {**base, **bad}})
        assert str(err.value).startswith(where), (bad, str(err.value))


@pytest.mark.parametrize("name", ["ppssl_alpha_beta", "ppssl_guidance", "ppssl_text", "ppssl_search"])
def test_sweep_files_validate_with_and_without_smoke(name):
    from fgray.report import _paper_row
    from fgray.sweep import planned_trials

    sweep = load_sweep(f"sweeps/{name}.yaml")
    assert sweep.method.name == "ppssl" and sweep.resources.gpus_per_worker == 1 and sweep.paper.rows
    for row in sweep.search.points:  # every table row has its published numbers
        assert _paper_row(sweep, row) is not None or "method.corpus_size" in row and row["method.corpus_size"] < 8, row
    smoke = load_sweep(f"sweeps/{name}.yaml", profile="smoke")
    assert smoke.method.teacher.model == TINY_MODEL and smoke.method.teacher.pretrained == "random"
    assert smoke.resources.gpus_per_worker == 0 and planned_trials(smoke)[1] <= planned_trials(sweep)[1]
    PPSSL.preflight(smoke.method)


def test_mechanism_sweep_file():
    """sweeps/ppssl_mechanism.yaml: 5 rows x 3 seeds, all tested; the MoCo v2 row shares the PP-SSL rows'
    MoCo settings and backbone; IADM runs on an 8 x 8 map (output_stride 8 at 64 px), not on 2 x 2."""
    from fgray.sweep import planned_trials

    sweep = load_sweep("sweeps/ppssl_mechanism.yaml")
    _, count = planned_trials(sweep)
    assert count == 15 and sweep.eval.test_top >= count and sweep.data.val_fraction == 0
    rows = [sweep.experiment(p) for p in sweep.search.points]
    assert [r.method.name for r in rows] == ["mocov2"] + ["ppssl"] * 4
    moco_keys = ("temperature", "momentum", "queue_size", "proj_dim", "hidden_dim", "views")
    assert all(getattr(rows[0].method, k) == getattr(r.method, k) for r in rows[1:] for k in moco_keys)
    assert [(r.method.ais, r.method.beta) for r in rows[1:]] == [(False, 0.0), (False, 0.01), (False, 0.1),
                                                                 (True, 0.01)]
    assert all(r.method.iadm_form == "lcr" and r.method.teacher.pretrained == "random" for r in rows[1:])
    backbone = build_backbone(rows[0].backbone.name, model_kwargs=rows[0].backbone.model_kwargs)
    assert all(r.backbone == rows[0].backbone for r in rows)
    with torch.no_grad():
        assert backbone.feature_map(torch.zeros(1, 3, 64, 64)).shape[-2:] == (8, 8)
    PPSSL.preflight(rows[-1].method)


# ------------------------------------------------------------------------------------------------
# Cached teacher embeddings (the embedding cache's actor and reader, called directly: no Ray cluster)


def test_cached_teacher_embeddings_roundtrip(tmp_path, method):
    import functools
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from fgray.config import DataConfig
    from fgray.data.frozen.embedding_cache import EmbedActor, frozen_encoder
    from fgray.data.view_actor import lookup_embeddings, read_embeddings
    from fgray.engine import normalize_images

    rng = np.random.default_rng(0)
    encoded, arrays = [], []
    for _ in range(3):
        array = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
        arrays.append(array)
    data = DataConfig(image_size=SIZE, eval_crop=1.0)
    factory = functools.partial(frozen_encoder, TINY.encoder().model_dump_json(), data.image_size)
    actor = EmbedActor([factory], data.image_size, data.eval_crop)
    ids = np.array(["a/1", "a/2", "b/3"])
    out = actor({"image": np.array(encoded, dtype=object), "image_id": ids})
    flat = pa.array(out["embedding_0"].reshape(-1), type=pa.float32())
    pq.write_table(pa.table({"image_id": out["image_id"],
                             "embedding": pa.FixedSizeListArray.from_arrays(flat, out["embedding_0"].shape[1])}),
                   tmp_path / "part-0.parquet")
    got_ids, embeddings = read_embeddings(str(tmp_path))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    expected = method.teacher.encode_image(normalize_images(images)).numpy()  # same seed -> same teacher
    np.testing.assert_allclose(embeddings[np.argsort(got_ids)], expected, atol=1e-5)
    positions, matrix = lookup_embeddings(str(tmp_path), ids[:2][::-1])
    np.testing.assert_allclose(matrix[[positions[i] for i in ids[:2][::-1]]], expected[[1, 0]], atol=1e-5)
    with pytest.raises(KeyError, match="no cached embedding"):
        lookup_embeddings(str(tmp_path), np.array(["zz/9"]))
