"""The training loop on a toy regression problem: schedule, accumulation, best epoch, resume."""

from __future__ import annotations

import pytest
import torch

from pplug.training import TrainConfig, lr_lambda, train_loop


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(32, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    model = torch.nn.Linear(4, 1)
    examples = list(range(32))

    def loss_fn(idx):
        i = torch.tensor(idx)
        return ((model(x[i]).squeeze(-1) - y[i]) ** 2).mean()

    return model, examples, loss_fn


def test_schedule_warms_up_then_decays_to_zero():
    f = lr_lambda(total=20, warmup=0.1)
    assert [round(f(s), 3) for s in (0, 1, 2, 11, 20)] == [0.5, 1.0, 1.0, 0.5, 0.0]


def test_loss_decreases_and_best_epoch_is_kept():
    model, examples, loss_fn = _problem()
    scores, saved = iter([0.3, 0.9, 0.5]), []
    res = train_loop(list(model.parameters()), loss_fn, examples,
                     TrainConfig(epochs=3, lr=0.05, batch_size=8, progress=False),
                     evaluate=lambda: next(scores), on_best=lambda: saved.append(1))
    assert res.steps == 12 and res.best_epoch == 2 and res.best_score == 0.9 and len(saved) == 2
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]


def test_max_steps_and_grad_accumulation():
    model, examples, loss_fn = _problem()
    res = train_loop(list(model.parameters()), loss_fn, examples,
                     TrainConfig(epochs=5, batch_size=4, grad_accum=2, max_steps=5, progress=False))
    assert res.steps == 5


def test_frozen_params_are_not_optimized():
    model, examples, loss_fn = _problem()
    model.bias.requires_grad_(False)
    before = model.bias.clone()
    train_loop(list(model.parameters()), loss_fn, examples, TrainConfig(epochs=1, progress=False))
    assert torch.equal(model.bias, before)


def test_resume_continues_from_the_checkpoint(tmp_path):
    """A run killed in epoch 2 and resumed lands on the same weights as an uninterrupted run."""
    ck = tmp_path / "last.pt"
    model, examples, loss_fn = _problem()
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=8, progress=False)
    calls = {"n": 0}

    def dying_loss(idx):
        calls["n"] += 1
        if calls["n"] == 6:  # second step of epoch 2
            raise RuntimeError("killed")
        return loss_fn(idx)

    args = dict(checkpoint=ck, state=model.state_dict, load_state=model.load_state_dict)
    with pytest.raises(RuntimeError, match="killed"):
        train_loop(list(model.parameters()), dying_loss, examples, cfg, **args)
    assert ck.is_file()
    res = train_loop(list(model.parameters()), loss_fn, examples, cfg, **args)
    assert res.epochs_done == 2 and res.steps == 8 and len(res.history) == 2
    model2, examples2, loss_fn2 = _problem()
    train_loop(list(model2.parameters()), loss_fn2, examples2, cfg)
    assert torch.allclose(model.weight, model2.weight, atol=1e-6)


@pytest.mark.parametrize("warmup", [0.0, 0.5])
def test_schedule_never_negative(warmup):
    f = lr_lambda(total=7, warmup=warmup)
    assert all(0.0 <= f(s) <= 1.0 for s in range(10))
