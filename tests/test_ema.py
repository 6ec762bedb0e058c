"""train.ema_decay's average (tests/test_resume.py trains its reference run with EMA on: that the average is
what is validated, saved and evaluated, and that it survives a kill and resume bit for bit, is tested there)."""

from __future__ import annotations

import torch

from segdeploy.training.ema import WeightEma, warmed_up_decay


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))
    model[2].weight.requires_grad_(False)  # frozen: not shadowed
    return model


def test_the_average_follows_the_warmed_up_decay_and_the_training_weights_come_back():
    model = small_model()
    ema = WeightEma(model, decay=0.5)
    assert "2.weight" not in ema.shadow and "1.num_batches_tracked" in ema.shadow
    expected = model[0].weight.detach().clone()
    for step in range(1, 4):
        with torch.no_grad():
            model[0].weight.add_(torch.randn_like(model[0].weight))
            model[1].num_batches_tracked += 1
        ema.update(model)
        d = warmed_up_decay(0.5, step)
        expected = d * expected + (1 - d) * model[0].weight.detach()
    assert [warmed_up_decay(0.5, n) for n in (1, 2, 3)] == [2 / 11, 3 / 12, 4 / 13]
    torch.testing.assert_close(ema.shadow["0.weight"], expected)
    assert int(ema.shadow["1.num_batches_tracked"]) == 3
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.applied(model):
        assert torch.equal(model[0].weight, ema.shadow["0.weight"])
        assert not torch.equal(model[0].weight, trained["0.weight"])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())

