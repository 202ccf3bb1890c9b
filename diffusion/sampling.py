"""The sampling loop: noise in, `scale_model_input`, the denoiser, `step`, out. Every sampler, every
edit and every pipeline call goes through `sampling_loop`; notation and the protocol are in
`diffusion.schedulers.base`.

Editing hooks into the loop rather than living inside it (`diffusion.editing`):
- img2img starts at a later grid entry, from the image noised to that entry's level (``start``, ``x``);
- inpainting pastes the known pixels back after every step (``after_step``);
- RePaint visits runs of entries more than once (``order``); where the order goes back, the loop
  diffuses the sample back up to that entry's level (`diffusion.editing.renoise`) and the sampler starts afresh there.
"""

from collections.abc import Callable, Sequence

import torch

from .denoiser import Denoiser
from .editing import renoise
from .rng import Generators, randn_tensor
from .schedulers import Scheduler

# after_step(sample, level) -> sample: called after each step with the grid entry the sample is now at.
AfterStep = Callable[[torch.Tensor, int], torch.Tensor]
# callback(step_index, timestep, sample), after each model evaluation.
Callback = Callable[[int, int | float, torch.Tensor], None]


def sampling_loop(
    denoiser: Denoiser,
    scheduler: Scheduler,
    x: torch.Tensor,
    labels: torch.Tensor | None,
    generator: Generators,
    order: Sequence[int],
    after_step: AfterStep | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Walk ``x`` ``(b, c, h, w)``, a sample at the level of grid entry ``order[0]`` (plain sampling: noise
    times `init_noise_sigma`), through the grid entries of ``order`` of the ``scheduler`` (timesteps set).

    ``labels`` are ``(b,)`` class ids or None; ``generator`` (one per image, one for the batch, or None)
    draws the steps' noise; ``after_step`` and ``callback`` are the hooks `AfterStep` and `Callback`.
    """
    timesteps = scheduler.timesteps.tolist()  # host values: looking them up never waits for the device
    level = order[0] if order else 0
    state = None if level == 0 else scheduler.initial_state(level)  # a multistep history starts empty
    for i in order:
        if i != level:  # the order goes back up the grid (RePaint): diffuse x to entry i's level
            z = randn_tensor(x.shape, generator, device=x.device, dtype=torch.float32)
            x = renoise(x, scheduler.noise_level(level), scheduler.noise_level(i), z)
            state = scheduler.initial_state(i)
        t = timesteps[i]
        model_output = denoiser(scheduler.scale_model_input(x, t), scheduler.timesteps[i], labels)
        x, _, state = scheduler.step(model_output, t, x, generator=generator, state=state)
        level = i + 1
        if after_step is not None:
            x = after_step(x, level)
        if callback is not None:
            callback(i, t, x)
    return x
