"""The training objective, whole, in one pure function: `training_loss`.

It takes a batch of clean images and returns the scalar the optimiser minimises; everything random in
it (label dropout, noise, timesteps) comes from the ``generator`` it is given, drawn on the generator's
device in that order, so that a resumed run replays the same draws and a step never waits for the host.
`snr_weights`, `diffusion_loss` and `drop_labels` are its pieces, each usable on its own.
"""

from collections.abc import Callable
from typing import Literal

import torch

from ..schedulers import NoiseSchedule

LossWeighting = Literal["uniform", "min-snr"]


def training_loss(
    model: Callable[..., torch.Tensor],
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    labels: torch.Tensor | None,
    generator: torch.Generator,
    *,
    weighting: LossWeighting = "uniform",
    snr_gamma: float = 5.0,
    cond_drop_prob: float = 0.0,
    null_label: int | None = None,
) -> torch.Tensor:
    """The denoising loss of one batch (Ho et al. 2020, Algorithm 1), for the schedule's ``prediction_type``.

    Args:
        model: called as ``model(x_t, t, labels)``; returns ``(b, c, h, w)``.
        schedule: the noise schedule; its ``config.prediction_type`` is what the model predicts.
        x0: ``(b, c, h, w)`` clean images, on the model's device.
        labels: ``(b,)`` class indices, or None for an unconditional model.
        generator: the label dropout, then ε, then t are drawn from it, on its device (the training
            device's, for a step that never waits for the host; a CPU one works on any device).
        weighting: uniform, or min-snr (`snr_weights`).
        snr_gamma: γ of Min-SNR.
        cond_drop_prob: chance that a label becomes ``null_label`` (classifier-free guidance).
        null_label: the null class, ``num_classes``; needed with labels.

    Returns:
        A float32 scalar.
    """
    prediction_type = schedule.config.prediction_type
    if labels is not None:  # drawn only here, so that unconditional runs keep their random streams
        labels = drop_labels(labels, null_label, cond_drop_prob, generator).to(x0.device)
    draws = {"generator": generator, "device": generator.device}
    noise = torch.randn(x0.shape, **draws).to(x0.device)  # ε ~ N(0, I), (b, c, h, w)
    t = torch.randint(0, schedule.num_train_timesteps, (x0.shape[0],), **draws)  # (b,)
    alphas_cumprod = schedule.alphas_cumprod.to(t.device)[t]  # ᾱ_t, (b,); the table moves only if it lives elsewhere
    alpha_t = _per_sample(alphas_cumprod.sqrt(), x0)  # √ᾱ_t, (b, 1, 1, 1)
    sigma_t = _per_sample((1 - alphas_cumprod).sqrt(), x0)  # √(1-ᾱ_t), (b, 1, 1, 1)
    x_t = alpha_t * x0 + sigma_t * noise  # q(x_t | x0), Ho et al. 2020, eq. 4
    if prediction_type == "v_prediction":
        target = alpha_t * noise - sigma_t * x0  # v, Salimans & Ho 2022, sec. 4
    else:
        target = noise if prediction_type == "epsilon" else x0  # Ho et al. 2020, eq. 14; or x0 itself
    snr = (alphas_cumprod / (1 - alphas_cumprod)).float().to(x0.device)  # Kingma et al. 2021, eq. 2, (b,)
    output = model(x_t, t.to(x0.device), labels)
    return diffusion_loss(
        output, target, snr, prediction_type=prediction_type, weighting=weighting, snr_gamma=snr_gamma
    )


def _per_sample(coefficient: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A float64 ``(b,)`` coefficient in ``like``'s dtype and device, shaped to scale ``(b, c, h, w)``."""
    return coefficient.to(like.dtype).to(like.device).reshape(-1, 1, 1, 1)  # cast first: some devices lack float64


def snr_weights(snr: torch.Tensor, prediction_type: str, weighting: LossWeighting, snr_gamma: float) -> torch.Tensor:
    """Per-sample loss weights ``(b,)``.

    ``min-snr`` is Hang et al. 2023 ("Efficient Diffusion Training via Min-SNR Weighting"), eq. 8 and
    sec. 3.4: the x0-space weight ``min(SNR, γ)`` expressed for the model's prediction type, i.e.
    divided by SNR for ε and by SNR + 1 for v.
    """
    assert weighting in ("uniform", "min-snr"), weighting
    if weighting == "uniform":
        return torch.ones_like(snr)
    clipped = torch.clamp(snr, max=snr_gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    assert prediction_type == "sample", prediction_type
    return clipped


def diffusion_loss(
    model_output: torch.Tensor,
    target: torch.Tensor,
    snr: torch.Tensor,
    *,
    prediction_type: str,
    weighting: LossWeighting = "uniform",
    snr_gamma: float = 5.0,
) -> torch.Tensor:
    """The mean over the batch of each sample's squared error, ``(b, c, h, w)`` to ``(b,)``, weighted by
    `snr_weights` of its ``(b,)`` SNR: a float32 scalar whatever the model's dtype."""
    assert model_output.shape == target.shape and model_output.ndim == 4, (model_output.shape, target.shape)
    per_sample = (model_output.float() - target.float()).square().mean(dim=(1, 2, 3))  # (b,)
    weights = snr_weights(snr.float(), prediction_type, weighting, snr_gamma)  # (b,)
    return (weights * per_sample).mean()


def drop_labels(labels: torch.Tensor, null_label: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Each label becomes the null class with probability ``p`` (Ho & Salimans 2022, Algorithm 1)."""
    drop = torch.rand(labels.shape, generator=generator, device=generator.device) < p  # (b,)
    return labels.masked_fill(drop.to(labels.device), null_label)  # the null class is num_classes
