"""Classifier-free guidance: one class-conditional model, two predictions, extrapolated.

Ho & Salimans 2022 ("Classifier-Free Diffusion Guidance") train one model on labels that are
dropped to a null class with probability p (see `diffusion.training.trainer.drop_labels`), then
sample with ε̃ = ε̂(x, ∅) + w·(ε̂(x, c) - ε̂(x, ∅)): w = 0 is the unconditional model, w = 1 the
conditional one, w > 1 trades diversity for fidelity to the class. The paper writes the same rule
with weight w' = w - 1 (eq. 6). Being linear, it applies alike to ε, v and x̂_0 predictions, and
so to every sampler.
"""

import torch


def classifier_free_guidance(
    uncond: torch.Tensor, cond: torch.Tensor, scale: float, rescale: float = 0.0
) -> torch.Tensor:
    """The guided prediction from the two branches, optionally rescaled.

    ``rescale`` = φ is Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are
    Flawed"), sec. 3.4, eqs. 15-16: a large w inflates the prediction's standard deviation, so the
    guided prediction is scaled back to the conditional one's standard deviation (per image) and
    mixed with the unscaled one by φ; φ = 0 turns it off. Computed in float32 at least.

    Args:
        uncond: the null-class prediction ``(b, c, h, w)``.
        cond: the class-conditional prediction, same shape.
        scale: w.
        rescale: φ in [0, 1].

    Returns:
        The guided prediction, same shape, float32 (or wider).
    """
    uncond, cond = uncond.float(), cond.float()
    guided = uncond + scale * (cond - uncond)
    if rescale == 0:
        return guided
    dims = tuple(range(1, cond.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)  # (b, 1, 1, 1)
    std_guided = guided.std(dim=dims, keepdim=True)  # (b, 1, 1, 1)
    rescaled = guided * (std_cond / std_guided)  # eq. 15
    return rescale * rescaled + (1 - rescale) * guided  # eq. 16
