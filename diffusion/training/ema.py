"""Exponential moving average of model weights, kept in float32 whatever the model trains in."""

import torch
from torch import nn


class EMA:
    """An fp32 shadow copy of a model's parameters, updated after each optimiser step.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that early
    averages are not dominated by the random initialisation (the schedule of Ho et al.'s and
    Dhariwal & Nichol's reference code).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        assert 0.0 <= decay < 1.0, decay  # TrainConfig checks --ema-decay
        self.decay = decay
        self.num_updates = 0
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters()}

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``shadow <- d * shadow + (1 - d) * param`` with the warmed-up decay ``d``."""
        d = self.current_decay()
        for name, param in model.named_parameters():
            self.shadow[name].lerp_(param.detach().float(), 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model`` (cast to its parameters' dtype)."""
        for name, param in model.named_parameters():
            param.copy_(self.shadow[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-ready): the shadow weights and the update count."""
        return {**self.shadow, "__num_updates__": torch.tensor(self.num_updates, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        num_updates = state.pop("__num_updates__")
        if state.keys() != self.shadow.keys():
            raise ValueError("EMA state does not match the model's parameters")
        self.shadow = {n: t.to(self.shadow[n].device, torch.float32).clone() for n, t in state.items()}
        self.num_updates = int(num_updates)
