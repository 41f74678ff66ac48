"""DVA (paper 003, spec ../shared/specs/dva.md): ICA's parameter count and its adapted qkv projection
(§2.2), the proxy losses of Eqs. 7-8 (ProxyNCA and the Proxy-Anchor option, §2.4) against loop
references written from the equations, then the method's step (§3): what trains, the background class
of the OPA images, the detached proxies of DPT, the Table 8 / Table 1 variants, the config checks,
the retrieval embedding and the frozen backbone's mode. Small models (timm ``test_vit``, 32 px),
except the ViT-B/16 parameter count the paper's Tables 9-10 pin."""
from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from fgray.config import ExperimentConfig
from fgray.data.inputs import DatasetFacts
from fgray.engine import DeclaredBatch, build_method
from fgray.losses import proxy_anchor, proxy_nca
from fgray.methods.configs_supervised import DVAConfig, ICAConfig
from fgray.models.ica import AdaptedQKV, Bottleneck, add_ica
from tests.declared import declared_batch

FACTS = DatasetFacts(num_classes=4, class_names=("a", "b", "c", "d"), image_size=32)
C = FACTS.num_classes  # the background class index


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ references (loops)


def act_scalar(x: float, activation: str) -> float:
    if activation == "relu":
        return max(0.0, x)
    if activation == "gelu":  # nn.GELU's exact form
        return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))
    return x


def reference_bottleneck(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor, activation: str) -> torch.Tensor:
    """Eq. 5 by hand: rows x (N, C), W_down as nn.Linear stores it (r, C), W_up (C, r); no biases."""
    x, down, up = x.detach(), down.detach(), up.detach()
    n, dim = x.shape
    rank = down.shape[0]
    out = torch.zeros(n, up.shape[0], dtype=torch.float64)
    for i in range(n):
        hidden = [act_scalar(sum(float(x[i, c]) * float(down[j, c]) for c in range(dim)), activation)
                  for j in range(rank)]
        for o in range(up.shape[0]):
            out[i, o] = sum(hidden[j] * float(up[o, j]) for j in range(rank))
    return out


def reference_proxy_nca(f: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor, s: float) -> float:
    """Eq. 7: mean over samples of -log(exp(-s d(f^, c^_y)) / sum_c exp(-s d(f^, c^))), d = squared L2."""
    def unit(v):
        norm = math.sqrt(sum(float(a) ** 2 for a in v))
        return [float(a) / norm for a in v]

    cs = [unit(c) for c in proxies]
    total = 0.0
    for i in range(f.shape[0]):
        fi = unit(f[i])
        d = [sum((a - b) ** 2 for a, b in zip(fi, c)) for c in cs]
        numerator = math.exp(-s * d[int(labels[i])])
        denominator = sum(math.exp(-s * dc) for dc in d)
        total += -math.log(numerator / denominator)
    return total / f.shape[0]


def reference_proxy_anchor(f: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor,
                           alpha: float = 32.0, margin: float = 0.1) -> float:
    """Kim et al. 2020 Eq. 4, cosine similarity s(x, p); P+ = proxies with a positive in the batch."""
    def cos(a, b):
        dot = sum(float(x) * float(y) for x, y in zip(a, b))
        return dot / math.sqrt(sum(float(x) ** 2 for x in a)) / math.sqrt(sum(float(y) ** 2 for y in b))

    n, num_proxies = f.shape[0], proxies.shape[0]
    with_positive = [p for p in range(num_proxies) if any(int(labels[i]) == p for i in range(n))]
    pos = 0.0
    for p in with_positive:
        pos += math.log(1.0 + sum(math.exp(-alpha * (cos(f[i], proxies[p]) - margin))
                                  for i in range(n) if int(labels[i]) == p))
    neg = 0.0
    for p in range(num_proxies):
        neg += math.log(1.0 + sum(math.exp(alpha * (cos(f[i], proxies[p]) + margin))
                                  for i in range(n) if int(labels[i]) != p))
    return pos / len(with_positive) + neg / num_proxies


# ------------------------------------------------------------------------------ 1. ICA parameter count


@pytest.fixture(scope="module")
def vit_b16():
    """ViT-B/16, random weights, built once; each use restores the plain qkv Linears afterwards."""
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    originals = [block.attn.qkv for block in model.blocks]
    yield model, originals


@pytest.mark.parametrize("targets,expected", [(("q",), 294_912), (("q", "k"), 589_824),
                                              (("q", "k", "v"), 884_736)])
def test_ica_on_vit_b16_has_the_papers_parameter_count_and_no_biases(vit_b16, targets, expected):
    model, originals = vit_b16
    try:
        backbone_total = sum(p.numel() for p in model.parameters())
        params = add_ica(model, targets, 16)
        assert sum(p.numel() for p in params) == expected  # Tables 9-10: 0.295 / 0.590 / 0.885 M
        assert len(params) == 12 * 2 * len(targets)  # down + up per target per block, no bias tensors
        for block, qkv in zip(model.blocks, originals):
            wrapped = block.attn.qkv
            assert isinstance(wrapped, AdaptedQKV) and wrapped.qkv is qkv
            assert set(wrapped.adapters) == set(targets)
            for adapter in wrapped.adapters.values():
                assert adapter.down.bias is None and adapter.up.bias is None
                assert adapter.down.weight.shape == (16, 768) and adapter.up.weight.shape == (768, 16)
                assert torch.count_nonzero(adapter.up.weight) == 0  # W_up zero-initialised
        # The returned list is exactly the adapters inside the model (nothing else, nothing missed).
        inside = {id(p) for n, p in model.named_parameters() if ".adapters." in n}
        assert {id(p) for p in params} == inside
        if targets == ("q", "k"):  # spec §7.8: report our share, 0.590 / 85.8 M, not the text's 3.5 %
            assert backbone_total == 85_798_656
            assert abs(expected / backbone_total - 0.006875) < 1e-5
    finally:
        for block, qkv in zip(model.blocks, originals):
            block.attn.qkv = qkv


def test_add_ica_rejects_unknown_or_empty_targets():
    model = timm.create_model("test_vit", num_classes=0, img_size=32)
    for bad in ((), ("q", "o")):
        with pytest.raises(ValueError):
            add_ica(model, bad, 4)
    with pytest.raises(ValueError):
        ICAConfig(targets=("q", "q"))


# ------------------------------------------------------------------------------ 2. AdaptedQKV (Eq. 6)


@pytest.mark.parametrize("activation", ["relu", "gelu", "identity"])
@pytest.mark.parametrize("targets", [("q",), ("k",), ("v",), ("q", "k"), ("q", "k", "v")])
def test_adapted_qkv_starts_as_the_frozen_linear_and_adds_scaled_bottlenecks_to_its_slices(targets, activation):
    torch.manual_seed(3)
    dim, rank, scale = 6, 3, 0.7
    linear = nn.Linear(dim, 3 * dim).double()
    frozen = {k: v.clone() for k, v in linear.state_dict().items()}
    adapted = AdaptedQKV(linear, targets, rank, activation, scale).double()
    x = torch.randn(2, 5, dim, dtype=torch.float64)
    with torch.no_grad():
        plain = linear(x)
        assert torch.equal(adapted(x), plain)  # W_up = 0: exactly the frozen projection
        for adapter in adapted.adapters.values():
            assert isinstance(adapter.act, {"relu": nn.ReLU, "gelu": nn.GELU, "identity": nn.Identity}[activation])
            adapter.down.weight.copy_(torch.randn(rank, dim, dtype=torch.float64))
            adapter.up.weight.copy_(torch.randn(dim, rank, dtype=torch.float64))
        out = adapted(x)
    assert out.shape == plain.shape
    rows = x.reshape(-1, dim)
    for index, name in enumerate(("q", "k", "v")):
        got = (out - plain)[..., index * dim:(index + 1) * dim].reshape(-1, dim)
        if name in targets:
            a = adapted.adapters[name]
            expected = scale * reference_bottleneck(rows, a.down.weight, a.up.weight, activation)
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
            assert got.abs().max() > 1e-3
        else:
            assert torch.equal(got, torch.zeros_like(got)), f"{name} slice changed without an adapter"
    for k, v in linear.state_dict().items():
        assert torch.equal(v, frozen[k])  # the wrapped Linear is untouched


def test_ica_slices_reach_timms_attention_as_q_k_v():
    """The slices the adapters add to are the ones timm's Attention uses as q, k and v."""
    torch.manual_seed(4)
    model = timm.create_model("test_vit", num_classes=0, img_size=32).eval()
    attn = model.blocks[0].attn
    x = torch.randn(2, 5, model.embed_dim)
    with torch.no_grad():
        q, k, v = attn.qkv(x).chunk(3, dim=-1)
    add_ica(model, ("q", "k", "v"), 4, "relu", 1.0)
    with torch.no_grad():
        deltas = {}
        for name, adapter in attn.qkv.adapters.items():
            nn.init.normal_(adapter.up.weight, std=0.5)
            deltas[name] = adapter(x)
        q, k, v = q + deltas["q"], k + deltas["k"], v + deltas["v"]
        heads, hd = attn.num_heads, attn.head_dim

        def split(t):
            return t.reshape(2, 5, heads, hd).transpose(1, 2)

        weights = (split(q) @ split(k).transpose(-2, -1) / math.sqrt(hd)).softmax(-1)
        expected = attn.proj((weights @ split(v)).transpose(1, 2).reshape(2, 5, -1))
        torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


def test_adapted_vit_at_init_computes_the_frozen_vits_features():
    torch.manual_seed(5)
    model = timm.create_model("test_vit", num_classes=0, img_size=32).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = model.forward_features(x)
        add_ica(model, ("q", "k"), 8)
        after = model.forward_features(x)
    assert torch.equal(before, after)


# ------------------------------------------------------------------------------ 3. proxy losses


def test_proxy_nca_matches_the_loop_reference_at_several_scales():
    g = torch.Generator().manual_seed(6)
    f = torch.randn(7, 5, generator=g, dtype=torch.float64) * 3.0  # unnormalised on purpose
    proxies = torch.randn(4, 5, generator=g, dtype=torch.float64) * 0.2
    labels = torch.tensor([0, 1, 2, 3, 3, 0, 2])
    for s in (1.0, 3.0, 9.0, 16.0):
        got = float(proxy_nca(f, labels, proxies, s))
        assert abs(got - reference_proxy_nca(f, labels, proxies, s)) < 1e-5, s
    # Scale invariance of inputs (both are normalised first).
    torch.testing.assert_close(proxy_nca(f, labels, proxies, 9.0), proxy_nca(f * 7, labels, proxies * 0.01, 9.0))


def test_proxy_nca_exact_small_case():
    # f on c_0, c_1 orthogonal: d = 0 and 2, loss = -log(1 / (1 + e^{-2s})) = log(1 + e^{-2s})
    f = torch.tensor([[2.0, 0.0]])
    proxies = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    for s in (1.0, 9.0):
        got = float(proxy_nca(f, torch.tensor([0]), proxies, s))
        assert abs(got - math.log1p(math.exp(-2 * s))) < 1e-6


def test_proxy_anchor_matches_kim_et_al_eq4_including_proxies_without_positives():
    g = torch.Generator().manual_seed(7)
    f = torch.randn(6, 5, generator=g, dtype=torch.float64)
    proxies = torch.randn(5, 5, generator=g, dtype=torch.float64)
    for labels in (torch.tensor([0, 1, 2, 3, 4, 0]),  # every proxy has a positive
                   torch.tensor([1, 1, 3, 3, 3, 1])):  # proxies 0, 2, 4 have none
        got = float(proxy_anchor(f, labels, proxies))
        expected = reference_proxy_anchor(f, labels, proxies)
        assert abs(got - expected) < 1e-6 * max(1.0, abs(expected)), labels.tolist()
    # Other alpha / margin.
    labels = torch.tensor([2, 2, 0, 0, 0, 2])
    got = float(proxy_anchor(f, labels, proxies, alpha=8.0, margin=0.3))
    expected = reference_proxy_anchor(f, labels, proxies, alpha=8.0, margin=0.3)
    assert abs(got - expected) < 1e-6 * max(1.0, abs(expected))


# ------------------------------------------------------------------------------ 4. the method


def make(backbone: str = "test_vit", **overrides):
    torch.manual_seed(0)
    experiment = ExperimentConfig(method={"name": "dva", **overrides}, backbone={"name": backbone},
                                  data={"image_size": 32})
    return build_method(experiment, FACTS)


def batch_for(method, seed: int = 1) -> DeclaredBatch:
    inputs = method.cfg.inputs
    return DeclaredBatch(declared_batch(inputs, FACTS, n=8, seed=seed), "dva", inputs.keys)


def class_tokens(method, images: torch.Tensor) -> torch.Tensor:
    """The last layer's class token after the final norm, read off forward_features directly."""
    with torch.no_grad():
        return method.backbone.model.forward_features(images)[:, 0]


def adapters_of(method) -> dict[str, nn.Parameter]:
    return {n: p for n, p in method.backbone.named_parameters() if ".adapters." in n}


def test_ica_step_trains_only_the_adapters_and_the_proxies():
    method = make()
    method.train()
    with torch.no_grad():  # non-zero W_up so that W_down receives a non-zero gradient too
        for name, p in adapters_of(method).items():
            if name.endswith("up.weight"):
                p.normal_(std=0.1)
    adapters = adapters_of(method)
    depth, dim = len(method.backbone.model.blocks), method.embed_dim
    assert len(adapters) == depth * 2 * 2  # q and k, down and up
    assert method.proxies.shape == (C + 1, dim)
    out = method.training_step(batch_for(method))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    frozen = [(n, p) for n, p in method.backbone.named_parameters() if ".adapters." not in n]
    assert len(frozen) > 0
    for name, p in frozen:
        assert not p.requires_grad, name
        assert p.grad is None, f"frozen {name} got a gradient"
    for name, p in adapters.items():
        assert p.requires_grad and p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert method.proxies.grad is not None and float(method.proxies.grad.abs().sum()) > 0
    groups = method.param_groups()
    assert [g["name"] for g in groups] == ["adapters", "proxies"]
    in_groups = [p for g in groups for p in g["params"]]
    assert len({id(p) for p in in_groups}) == len(in_groups)
    expected = depth * 2 * 2 * dim * method.cfg.ica.rank + (C + 1) * dim
    assert sum(p.numel() for p in in_groups) == expected
    assert {id(p) for p in in_groups} == {id(p) for p in method.parameters() if p.requires_grad}


def test_background_images_get_the_extra_class_and_dpt_gets_the_original_labels(monkeypatch):
    method = make()
    method.train()
    batch = batch_for(method)
    has_bg = torch.tensor([True, False, True, True, False, False, True, False])
    batch["has_background"] = has_bg
    labels = batch["label"]
    calls = []
    real = method._proxy_loss

    def spy(embeddings, targets, proxies):
        calls.append((embeddings.detach().clone(), targets.clone(), proxies))
        return real(embeddings, targets, proxies)

    monkeypatch.setattr(method, "_proxy_loss", spy)
    out = method.training_step(batch)
    assert len(calls) == 2
    (f_pl, y_pl, c_pl), (f_dpt, y_dpt, c_dpt) = calls
    # L_pl: the object crops (labels y) then the 4 backgrounds, in batch order, labelled C.
    assert f_pl.shape == (8 + 4, method.embed_dim)
    assert y_pl.tolist() == labels.tolist() + [C] * 4
    assert y_pl.dtype == labels.dtype
    expected_images = torch.cat([batch["object"], batch["background"][[0, 2, 3, 6]]])
    torch.testing.assert_close(f_pl, class_tokens(method, expected_images), rtol=1e-5, atol=1e-5)
    assert c_pl is method.proxies
    # L_dpt: the original images with their own labels, against the (detached) same proxies.
    assert f_dpt.shape == (8, method.embed_dim)
    assert y_dpt.tolist() == labels.tolist()
    torch.testing.assert_close(f_dpt, class_tokens(method, batch["image"]), rtol=1e-5, atol=1e-5)
    assert not c_dpt.requires_grad and torch.equal(c_dpt, method.proxies.detach())
    # Eq. 9 with the loop reference: L = L_dpt + 3 L_pl.
    s = method.cfg.proxy_scale
    loss_pl = reference_proxy_nca(f_pl, y_pl, method.proxies.detach(), s)
    loss_dpt = reference_proxy_nca(f_dpt, y_dpt, method.proxies.detach(), s)
    assert abs(float(out["loss_pl"]) - loss_pl) < 1e-4
    assert abs(float(out["loss_dpt"]) - loss_dpt) < 1e-4
    assert abs(float(out["loss"].detach()) - (loss_dpt + 3.0 * loss_pl)) < 1e-4
    assert abs(float(out["background_share"]) - 0.5) < 1e-7


def test_no_background_image_means_no_background_label(monkeypatch):
    method = make()
    batch = batch_for(method)
    batch["has_background"] = torch.zeros(8, dtype=torch.bool)
    calls = []
    real = method._proxy_loss
    monkeypatch.setattr(method, "_proxy_loss",
                        lambda f, y, c: calls.append((f.shape, y.clone())) or real(f, y, c))
    out = method.training_step(batch)
    assert calls[0][0] == (8, method.embed_dim) and calls[0][1].tolist() == batch["label"].tolist()
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("detach,moves", [(True, False), (False, True)])
def test_dpt_detached_proxies_get_no_gradient_from_l_dpt(detach, moves):
    method = make(lam=0.0, detach_proxies=detach)  # L = L_dpt + 0 L_pl
    method.train()
    out = method.training_step(batch_for(method))
    assert abs(float(out["loss"].detach()) - float(out["loss_dpt"])) < 1e-6
    out["loss"].backward()
    grad = method.proxies.grad
    if moves:
        assert grad is not None and float(grad.abs().sum()) > 0
    else:
        assert grad is None or float(grad.abs().sum()) == 0.0
    # L_dpt trains the adapters either way (W_up's gradient; W_down's is 0 while W_up is 0).
    ups = [p for n, p in adapters_of(method).items() if n.endswith("up.weight")]
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in ups)


def test_full_tuning_has_no_adapters_and_trains_every_vit_weight():
    method = make(tune="full")
    method.train()
    assert not adapters_of(method)
    assert not any(isinstance(m, (AdaptedQKV, Bottleneck)) for m in method.modules())
    assert method.backbone.training  # not frozen: train mode stays on
    out = method.training_step(batch_for(method))
    out["loss"].backward()
    for name, p in method.backbone.named_parameters():
        assert p.requires_grad, name
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    groups = {g["name"]: g["params"] for g in method.param_groups()}
    assert {id(p) for p in groups["adapters"]} == {id(p) for p in method.backbone.parameters()}
    assert [id(p) for p in groups["proxies"]] == [id(method.proxies)]


def test_ica_only_variant_declares_image_and_label_and_is_proxynca_over_the_class_proxies():
    method = make(opa=False, dpt=False)
    assert set(method.cfg.inputs.keys) == {"image", "label"}
    batch = batch_for(method)  # a DeclaredBatch: reading any other key raises
    assert set(batch) == {"image", "label"}
    out = method.training_step(batch)
    assert "loss_dpt" not in out
    # Table 8's +ICA has no background class: the C class proxies only.
    expected = reference_proxy_nca(class_tokens(method, batch["image"]), batch["label"],
                                   method.proxies.detach()[:C], method.cfg.proxy_scale)
    assert abs(float(out["loss"].detach()) - expected) < 1e-4
    assert abs(float(out["loss_pl"]) - expected) < 1e-4


def test_proxy_anchor_option_is_used_for_both_terms():
    method = make(proxy_loss="proxy_anchor", lam=2.0)
    batch = batch_for(method)
    out = method.training_step(batch)
    has_bg = batch["has_background"].bool()
    f_pl = class_tokens(method, torch.cat([batch["object"], batch["background"][has_bg]]))
    y_pl = torch.cat([batch["label"], torch.full((int(has_bg.sum()),), C)])
    loss_pl = reference_proxy_anchor(f_pl, y_pl, method.proxies.detach())
    loss_dpt = reference_proxy_anchor(class_tokens(method, batch["image"]), batch["label"], method.proxies.detach())
    assert abs(float(out["loss_pl"]) - loss_pl) < 1e-3 * max(1.0, loss_pl)
    assert abs(float(out["loss"].detach()) - (loss_dpt + 2.0 * loss_pl)) < 1e-3 * max(1.0, loss_dpt + 2 * loss_pl)


def test_config_rejects_dpt_without_opa_and_a_cnn_backbone():
    with pytest.raises(ValueError, match="opa"):
        DVAConfig(opa=False)  # dpt defaults to true
    with pytest.raises(ValueError, match="opa"):
        ExperimentConfig(method={"name": "dva", "opa": False, "dpt": True}, backbone={"name": "test_vit"},
                         data={"image_size": 32})
    DVAConfig(opa=False, dpt=False)  # Table 8's +ICA row is fine
    DVAConfig(dpt=False)  # +ICA+OPA
    with pytest.raises(ValueError) as info:
        make(backbone="test_resnet")
    message = str(info.value)
    assert "test_resnet" in message and "\n" not in message


def test_embed_is_the_normalised_class_token_of_the_frozen_vit():
    method = make()
    method.eval()
    x = declared_batch(method.cfg.inputs, FACTS, n=5)["image"]
    got = method.embed(x)
    model = method.backbone.model
    assert got.shape == (5, method.embed_dim) and not got.requires_grad
    with torch.no_grad():
        head = F.normalize(model.forward_head(model.forward_features(x), pre_logits=True), dim=1)
    torch.testing.assert_close(got, head)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(5))
    # The same as a plain timm test_vit with these weights (adapters at init add nothing).
    plain = timm.create_model("test_vit", num_classes=0, img_size=32).eval()
    state = {k.replace("attn.qkv.qkv.", "attn.qkv."): v for k, v in model.state_dict().items()
             if ".adapters." not in k}
    plain.load_state_dict(state)
    with torch.no_grad():
        cls = plain.forward_features(x)[:, 0]
    torch.testing.assert_close(got, F.normalize(cls, dim=1), rtol=1e-5, atol=1e-6)


def test_frozen_backbone_stays_in_eval_mode_after_train():
    method = make()
    method.train()
    assert method.training
    assert not method.backbone.training
    assert not any(m.training for m in method.backbone.modules())
    method.train(False)
    assert not method.training and not method.backbone.training
    method.train()
    assert not any(m.training for m in method.backbone.modules())


@pytest.mark.parametrize("tune,part", [("attn_qkv", ".attn.qkv."), ("attn_out", ".attn.proj."), ("mlp", ".mlp.")])
def test_partial_fine_tuning_trains_exactly_one_part_of_every_block(tune, part):
    # Table 1's rows: no adapters; the named part of every block (and the proxies) train, the rest is frozen.
    method = make(tune=tune, opa=False, dpt=False)
    assert not any(".adapters." in name for name, _ in method.backbone.named_parameters())
    groups = method.param_groups()
    tuned = {id(p) for p in groups[0]["params"]}
    blocks = len(method.backbone.model.blocks)
    for name, p in method.backbone.named_parameters():
        assert (id(p) in tuned) == (part in name) == p.requires_grad, name
    # weight and bias of each block's part (two Linears for the MLP)
    assert len(tuned) == blocks * (4 if tune == "mlp" else 2)
    method.train()  # as the engine does: the partly frozen ViT stays in eval mode
    out = method.training_step(batch_for(method))
    out["loss"].backward()
    assert all(p.grad is not None for p in groups[0]["params"])
    assert all(p.grad is None for name, p in method.backbone.named_parameters() if part not in name)
    assert not any(m.training for m in method.backbone.modules())


def test_partial_fine_tuning_sizes_on_vit_b16():
    # Table 1 prints 21.5 M (attention projector), 7.3 M (output projector), 56.8 M (MLP); fgray's
    # counts on timm's ViT-B/16 (weights and biases of those Linears in the 12 blocks):
    method = make(backbone="vit_base_patch16_224", tune="attn_qkv", opa=False, dpt=False)
    sizes = {tune: sum(p.numel() for name, p in method.backbone.named_parameters() if part in name)
             for tune, part in (("attn_qkv", ".attn.qkv."), ("attn_out", ".attn.proj."), ("mlp", ".mlp."))}
    assert sizes == {"attn_qkv": 21_261_312, "attn_out": 7_087_104, "mlp": 56_669_184}
    assert sum(p.numel() for p in method.param_groups()[0]["params"]) == sizes["attn_qkv"]
