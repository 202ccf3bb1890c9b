"""The training loss: a per-sample MSE to the prediction target, optionally Min-SNR weighted; and the
label dropout of classifier-free guidance training."""

from typing import Literal

import torch

LossWeighting = Literal["uniform", "min-snr"]


def snr_weights(snr: torch.Tensor, prediction_type: str, weighting: LossWeighting, snr_gamma: float) -> torch.Tensor:
    """Per-sample loss weights ``(b,)``.

    ``min-snr`` is Hang et al. 2023 ("Efficient Diffusion Training via Min-SNR Weighting"), eq. 8 and
    sec. 3.4: the x0-space weight ``min(SNR, γ)`` expressed for the model's prediction type, i.e.
    divided by SNR for ε and by SNR + 1 for v.
    """
    if weighting == "uniform":
        return torch.ones_like(snr)
    clipped = torch.clamp(snr, max=snr_gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
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
    """Weighted mean squared error, computed in float32 whatever the model's dtype.

    Args:
        model_output: ``(b, c, h, w)``.
        target: ``(b, c, h, w)``, from ``NoiseSchedule.training_target``.
        snr: ``(b,)`` signal-to-noise ratio of each sample's timestep.
        prediction_type: epsilon, v_prediction or sample.
        weighting: uniform or min-snr.
        snr_gamma: γ of Min-SNR.

    Returns:
        A float32 scalar.
    """
    per_sample = (model_output.float() - target.float()).square().mean(dim=(1, 2, 3))  # (b,)
    weights = snr_weights(snr.float(), prediction_type, weighting, snr_gamma)  # (b,)
    return (weights * per_sample).mean()


def drop_labels(labels: torch.Tensor, null_label: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by ``null_label`` with probability ``p`` (classifier-free guidance training, Ho &
    Salimans 2022, Algorithm 1): the one model learns the unconditional prediction as the null class.

    Args:
        labels: ``(b,)`` int64 class indices.
        null_label: the null class, ``num_classes``.
        p: the drop probability, in [0, 1].
        generator: the source of the ``(b,)`` uniform draws.
    """
    drop = torch.rand(labels.shape, generator=generator) < p  # (b,)
    return labels.masked_fill(drop, null_label)
