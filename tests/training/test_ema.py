import pytest
import torch
from torch import nn

from diffusion.training.ema import EMA


def test_update_follows_the_warmed_up_decay():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.99)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # n = 0: decay min(0.99, 1/10) = 0.1
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 0.9))
    ema.update(model)  # n = 1: decay 2/11
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 1 - 0.1 * 2 / 11))
    ema.num_updates = 10_000
    assert ema.current_decay() == 0.99


def test_shadow_stays_fp32_and_state_round_trips():
    model = nn.Linear(3, 3).to(torch.bfloat16)
    ema = EMA(model, decay=0.9)
    assert {t.dtype for t in ema.shadow.values()} == {torch.float32}
    ema.update(model)
    other = EMA(nn.Linear(3, 3), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1
    for name in ema.shadow:
        torch.testing.assert_close(other.shadow[name], ema.shadow[name], rtol=0, atol=0)
    target = nn.Linear(3, 3)
    ema.copy_to(target)
    torch.testing.assert_close(target.weight, ema.shadow["weight"], rtol=0, atol=0)


def test_mismatched_state_is_refused():
    with pytest.raises(ValueError, match="EMA state does not match"):
        EMA(nn.Linear(1, 1), 0.5).load_state_dict(EMA(nn.Linear(1, 2, bias=False), 0.5).state_dict())
