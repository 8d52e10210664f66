"""The persona plug module alone: shapes, masking, ablations, scaling, gradients."""

from __future__ import annotations

import pytest
import torch

from pplug.plug import ABLATIONS, PersonaPlug, PlugConfig


def _inputs(b: int = 3, n: int = 5, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hist = torch.nn.functional.normalize(torch.randn(b, n, d, generator=g), dim=-1)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 3:] = False  # user 1 has 3 items
    mask[2] = False  # user 2 has none
    query = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=-1)
    return query, hist, mask


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_shapes_and_masks(ablation):
    torch.manual_seed(0)
    cfg = PlugConfig(n_persona_tokens=2, ablation=ablation, top_k=2)
    plug = PersonaPlug(cfg, d_enc=8, d_lm=16, target_norm=3.0)
    out = plug(*_inputs())
    assert out.soft.shape == (3, cfg.n_soft, 16)
    assert cfg.n_soft == {"no_instruction": 2, "no_persona": 1}.get(ablation, 3)
    if cfg.use_persona:
        assert out.soft_mask[:, -1].tolist() == [True, True, False]  # no history -> persona masked out
        assert torch.allclose(out.weights.sum(1), torch.tensor([1.0, 1.0, 0.0]))
        assert (out.weights[1, 3:] == 0).all()  # padding gets no weight
    else:
        assert out.weights is None and out.soft_mask.all()


def test_soft_tokens_have_backbone_norm_and_gain():
    plug = PersonaPlug(PlugConfig(n_persona_tokens=1), 8, 16, target_norm=3.2)
    out = plug(*_inputs())
    assert torch.allclose(out.soft[:2].norm(dim=-1), torch.full((2, 2), 3.2), atol=1e-5)
    with torch.no_grad():
        plug.gain[1] = 2.0
    assert torch.allclose(plug(*_inputs()).soft[0, 1].norm(), torch.tensor(6.4), atol=1e-5)
    scaled = PersonaPlug(PlugConfig(n_persona_tokens=1, gain_init=3.0), 8, 16, target_norm=3.2)
    assert torch.allclose(scaled(*_inputs()).soft[:2].norm(dim=-1), torch.full((2, 2), 9.6), atol=1e-4)


def test_temperature_sharpens_and_mean_pool_is_uniform():
    q, h, m = _inputs()
    sharp = PersonaPlug(PlugConfig(temperature=0.01), 8, 16, 1.0).aggregate_weights(q, h, m)
    flat = PersonaPlug(PlugConfig(temperature=100.0), 8, 16, 1.0).aggregate_weights(q, h, m)
    assert sharp[0].max() > flat[0].max()
    assert torch.allclose(flat[0], torch.full((5,), 0.2), atol=1e-2)
    mean = PersonaPlug(PlugConfig(ablation="mean_pool"), 8, 16, 1.0).aggregate_weights(q, h, m)
    assert torch.allclose(mean[1, :3], torch.full((3,), 1 / 3))


def test_top_k_keeps_the_k_best_items():
    q, h, m = _inputs()
    plug = PersonaPlug(PlugConfig(ablation="top_k", top_k=2), 8, 16, 1.0)
    w = plug.aggregate_weights(q, h, m)
    assert ((w[0] > 0).sum(), (w[1] > 0).sum()) == (2, 2)
    best = torch.einsum("bd,bnd->bn", q, h)[0].topk(2).indices
    assert set(best.tolist()) == set(torch.nonzero(w[0]).flatten().tolist())


def test_weights_follow_the_query():
    """An item identical to the query gets the largest weight."""
    q, h, m = _inputs()
    h = h.clone()
    h[0, 3] = q[0]
    w = PersonaPlug(PlugConfig(), 8, 16, 1.0).aggregate_weights(q, h, m)
    assert int(w[0].argmax()) == 3


def test_gradients_reach_every_trainable_part():
    plug = PersonaPlug(PlugConfig(n_persona_tokens=2), 8, 16, 3.0)
    q, h, m = _inputs()
    q = q.clone().requires_grad_(True)
    plug(q, h, m).soft[:, :, 0].sum().backward()
    for name, p in plug.named_parameters():
        assert p.grad is not None, name
    assert q.grad is not None
    # trainable count: proj (8*16+16 + 16*32+32) + proj_I (8*16+16 + 16*16+16) + I0 (8) + tau (1) + gain (3)
    assert sum(p.numel() for p in plug.parameters()) == (144 + 544) + (144 + 272) + 8 + 1 + 3


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="ablation"):
        PlugConfig(ablation="nope")
    with pytest.raises(ValueError):
        PlugConfig(n_persona_tokens=0)


def test_centered_persona_removes_the_average_users_persona():
    torch.manual_seed(0)
    cfg = PlugConfig(n_persona_tokens=2, center_persona=True, center_momentum=0.5, normalize_soft=False,
                     learn_gain=False)
    plug = PersonaPlug(cfg, 8, 16, target_norm=1.0)
    q, h, m = _inputs()
    plain = PersonaPlug(PlugConfig(n_persona_tokens=2, normalize_soft=False, learn_gain=False), 8, 16, 1.0)
    plain.load_state_dict({k: v for k, v in plug.state_dict().items() if not k.startswith("persona_mean")})
    raw = plain(q, h, m).soft[:, 1:]  # [3, 2, 16] uncentered personas
    plug.train()
    first = plug(q, h, m).soft[:, 1:]  # the first batch sets the mean: the users with items average to zero
    assert torch.allclose(first[:2].mean(dim=0), torch.zeros(2, 16), atol=1e-5)
    assert torch.allclose(first[2], raw[2])  # a user with no history is left as is (masked out anyway)
    assert torch.allclose(plug.persona_mean, raw[:2].mean(dim=0))
    plug(q[:1], h[:1], m[:1])  # a later batch moves the running mean by center_momentum
    assert torch.allclose(plug.persona_mean, 0.5 * raw[:2].mean(dim=0) + 0.5 * raw[0], atol=1e-5)
    plug.eval()
    frozen = plug.persona_mean.clone()
    assert torch.allclose(plug(q, h, m).soft[:2, 1:], raw[:2] - frozen, atol=1e-5)  # eval: no update
    assert torch.equal(plug.persona_mean, frozen) and "persona_mean" in plug.state_dict()
    assert "persona_mean" not in plain.state_dict()  # off by default: old weight files load unchanged
    first.sum().backward()  # gradients flow through the centered persona
    assert plug.proj[0].weight.grad is not None
