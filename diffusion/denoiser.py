"""`Denoiser`: the network as the sampling loop sees it, ``denoiser(x, t, labels) -> model output``.

It owns everything between a sampler's sample and the UNet: the UNet's dtype and memory format (the
sampling math stays in float32 whatever they are), classifier-free guidance (`diffusion.guidance`), and
the conversion of the output to ε̂ for code that needs the noise whatever the `prediction_type`
(DDIM inversion). A guidance-distilled UNet (``UNetConfig.guidance_embedding``, Meng et al. 2023) takes w
as an input and gives the guided prediction in one pass, so it is never run on two branches.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .guidance import classifier_free_guidance
from .schedulers import NoiseSchedule


@dataclass(frozen=True)
class Denoiser:
    """The model output for a sample: unconditional (no labels), conditional (scale 1), the null class
    (scale 0), else classifier-free guidance of both branches, evaluated in one batched forward, or for
    a guidance-embedded UNet its one guided pass."""

    forward: Callable[..., torch.Tensor]  # the UNet, or its compiled form: forward(x, t, labels=None)
    null_class: int | None  # the label of the unconditional branch (num_classes); None if unconditional
    device: torch.device  # of the UNet's weights
    dtype: torch.dtype  # of the UNet's inputs
    memory_format: torch.memory_format  # of the UNet's inputs
    guidance_scale: float | None = None  # w; None (or 1) is the conditional branch alone
    guidance_rescale: float = 0.0  # φ of guidance rescale
    guidance_embedded: bool = False  # the UNet takes w as an input: forward(x, t, labels, guidance_scale=w)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """ε̂, v̂ or x̂_0 (float32, the shape of ``x``) at the 0-d timestep ``t``."""
        n, scale = x.shape[0], self.guidance_scale
        x = x.to(self.dtype, memory_format=self.memory_format)
        if labels is None or scale is None or scale == 1:  # w = 1: the conditional prediction, guided or not
            return self.forward(x, t.expand(n), labels).float()
        if scale == 0 and self.guidance_rescale == 0:
            return self.forward(x, t.expand(n)).float()  # the null class
        if self.guidance_embedded:
            assert self.guidance_rescale == 0, "a guidance-embedded UNet's guided output is not rescaled"
            return self.forward(x, t.expand(n), labels, guidance_scale=scale).float()  # the guided pass
        null = torch.full_like(labels, self.null_class)
        x2 = torch.cat([x, x]).contiguous(memory_format=self.memory_format)  # (2n, c, h, w)
        both = self.forward(x2, t.expand(2 * n), torch.cat([null, labels])).float()  # (2n, c, h, w)
        uncond, cond = both.chunk(2)
        return classifier_free_guidance(uncond, cond, scale, self.guidance_rescale)

    def epsilon(self, x: torch.Tensor, t: int, labels: torch.Tensor | None, schedule: NoiseSchedule) -> torch.Tensor:
        """ε̂ at the integer timestep ``t`` of ``schedule``, whatever its `prediction_type`."""
        model_output = self(x, torch.tensor(t, device=x.device), labels)
        return schedule.pred_epsilon(model_output, x, t)
