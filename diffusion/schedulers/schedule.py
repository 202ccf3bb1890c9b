"""`NoiseSchedule`: the forward process q(x_t | x_0) and the conversions between model outputs.

A plain class (no module, no buffers): its tables are float64 CPU tensors of shape (T,), cast to the
sample's dtype and device at each use, and its methods check their timesteps, for training and other
callers. Samplers' steps instead read the coefficients `set_timesteps` takes from these tables once,
and call the module-level `pred_original_sample` and `pred_epsilon`. Notation: see the table in
`diffusion.schedulers.base`.
"""

import copy

import torch

from diffusion.schedulers.betas import make_betas, rescale_zero_terminal_snr
from diffusion.schedulers.config import SchedulerConfig

Timesteps = int | torch.Tensor  # a Python int, or an integer tensor of shape () or (b,)


def pred_original_sample(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_t: float | torch.Tensor,
    sigma_t: float | torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """x̂_0 from the model output at the VP noise level α_t = √ᾱ_t, σ_t = √(1-ᾱ_t) of the sample x_t.

    `model_output` (ε̂, v̂ or x̂_0, per `prediction_type`, one of `PREDICTION_TYPES`) and `sample` (x_t) have
    shape (b, ...); `alpha_t` and `sigma_t` are floats, or tensors that broadcast against `sample`.
    """
    if prediction_type == "epsilon":  # x̂_0 = (x_t - σ_t·ε̂) / α_t (Ho et al. 2020, eq. 4 solved for x_0; eq. 15)
        return (sample - sigma_t * model_output) / alpha_t
    if prediction_type == "v_prediction":  # x̂_0 = α_t·x_t - σ_t·v̂ (Salimans & Ho 2022, sec. 4)
        return alpha_t * sample - sigma_t * model_output
    assert prediction_type == "sample", prediction_type
    return model_output  # x̂_0 = model output


def pred_epsilon(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_t: float | torch.Tensor,
    sigma_t: float | torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """ε̂ from the model output at the VP noise level α_t = √ᾱ_t, σ_t = √(1-ᾱ_t) of the sample x_t.

    Arguments and shapes as `pred_original_sample`.
    """
    if prediction_type == "epsilon":  # ε̂ = model output
        return model_output
    if prediction_type == "v_prediction":  # ε̂ = α_t·v̂ + σ_t·x_t (Salimans & Ho 2022, sec. 4)
        return alpha_t * model_output + sigma_t * sample
    assert prediction_type == "sample", prediction_type
    # ε̂ = (x_t - α_t·x̂_0) / σ_t (Ho et al. 2020, eq. 4 solved for ε)
    return (sample - alpha_t * model_output) / sigma_t


class NoiseSchedule:
    """The β_t, α_t and ᾱ_t of a `SchedulerConfig`, and the closed-form maths built on them.

    Attributes:
        config: the settings the tables were built from (schedule and `prediction_type`).
        num_train_timesteps: T.
        betas: β_t, float64, shape (T,).
        alphas: α_t = 1 - β_t, float64, shape (T,).
        alphas_cumprod: ᾱ_t = ∏_{s≤t} α_s, float64, shape (T,).
    """

    def __init__(self, config: SchedulerConfig) -> None:
        betas = make_betas(config.beta_schedule, config.num_train_timesteps, config.beta_start, config.beta_end)  # (T,)
        if config.rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.config = config
        self.num_train_timesteps = config.num_train_timesteps
        self.betas = betas
        self.alphas = 1 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self._sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()  # √ᾱ_t
        self._sqrt_one_minus_alphas_cumprod = (1 - self.alphas_cumprod).sqrt()  # √(1-ᾱ_t)
        assert self.alphas_cumprod.dtype == torch.float64 and self.alphas_cumprod.shape == betas.shape

    def to(self, device: torch.device | str) -> "NoiseSchedule":
        """A copy with its tables on ``device`` (float64; float32 where the device has no float64: MPS)."""
        moved = copy.copy(self)
        dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
        for name in ("betas", "alphas", "alphas_cumprod", "_sqrt_alphas_cumprod", "_sqrt_one_minus_alphas_cumprod"):
            setattr(moved, name, getattr(self, name).to(device, dtype))
        return moved

    def _timesteps_tensor(
        self, timesteps: Timesteps, device: torch.device, batch_size: int | None = None
    ) -> torch.Tensor:
        """Check `timesteps` and return them as an integer tensor on `device`, shape () or (b,).

        Raises:
            ValueError: for timesteps of the wrong dtype, shape or range.
        """
        if not isinstance(timesteps, torch.Tensor):
            timesteps = torch.tensor(timesteps)
        if timesteps.is_floating_point() or timesteps.is_complex() or timesteps.dtype == torch.bool:
            raise ValueError(f"timesteps must be integers, got dtype {timesteps.dtype}")
        if timesteps.ndim > 1 or (
            batch_size is not None and timesteps.ndim == 1 and timesteps.shape[0] not in (1, batch_size)
        ):
            raise ValueError(
                f"timesteps must be a scalar or of shape (batch,) = ({batch_size},), got shape {tuple(timesteps.shape)}"
            )
        # Out-of-range indices would fail obscurely on an accelerator; checking costs one sync there.
        if timesteps.numel() and (timesteps.min() < 0 or timesteps.max() >= self.num_train_timesteps):
            raise ValueError(
                f"timesteps must be in [0, {self.num_train_timesteps - 1}], "
                f"got values in [{int(timesteps.min())}, {int(timesteps.max())}]"
            )
        return timesteps.to(device)

    def _gather(self, table: torch.Tensor, timesteps: Timesteps, like: torch.Tensor) -> torch.Tensor:
        """`table[timesteps]` in `like`'s dtype, on its device, of shape () for a scalar timestep, else
        (b, 1, ..., 1) to broadcast against `like` (b, ...).

        Raises:
            ValueError: for a non-float `like`, or timesteps of the wrong dtype, shape or range.
        """
        if not like.is_floating_point():
            raise ValueError(f"samples must be a floating-point tensor, got dtype {like.dtype}")
        batch_size = like.shape[0] if like.ndim else None
        timesteps = self._timesteps_tensor(timesteps, like.device, batch_size)
        table = table.to(dtype=like.dtype).to(device=like.device)  # cast first: some devices lack float64
        values = table[timesteps]  # () or (b,)
        if values.ndim == 1:
            values = values.reshape(-1, *([1] * (like.ndim - 1)))  # (b, 1, ..., 1)
        return values

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Timesteps) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0): x_t = √ᾱ_t·x_0 + √(1-ᾱ_t)·ε (Ho et al. 2020, eq. 4).

        Args:
            original_samples: x_0, shape (b, ...).
            noise: ε, same shape as `original_samples`.
            timesteps: t, int or integer tensor of shape () or (b,).

        Returns:
            x_t, shape (b, ...), in the dtype of `original_samples`.
        """
        sqrt_alpha_prod = self._gather(self._sqrt_alphas_cumprod, timesteps, original_samples)
        sqrt_one_minus_alpha_prod = self._gather(self._sqrt_one_minus_alphas_cumprod, timesteps, original_samples)
        return sqrt_alpha_prod * original_samples + sqrt_one_minus_alpha_prod * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: Timesteps) -> torch.Tensor:
        """The velocity v = √ᾱ_t·ε - √(1-ᾱ_t)·x_0 (Salimans & Ho 2022, sec. 4).

        Args:
            sample: x_0 (named as in diffusers), shape (b, ...).
            noise: ε, same shape.
            timesteps: t, int or integer tensor of shape () or (b,).

        Returns:
            v, shape (b, ...), in the dtype of `sample`.
        """
        sqrt_alpha_prod = self._gather(self._sqrt_alphas_cumprod, timesteps, sample)
        sqrt_one_minus_alpha_prod = self._gather(self._sqrt_one_minus_alphas_cumprod, timesteps, sample)
        return sqrt_alpha_prod * noise - sqrt_one_minus_alpha_prod * sample

    def snr(self, timesteps: Timesteps, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 - ᾱ_t) (Kingma et al. 2021, eq. 2), e.g. for loss weights.

        Args:
            timesteps: t, int or integer tensor of shape () or (b,).
            dtype: dtype of the result.

        Returns:
            SNR(t), shape of `timesteps`, on the device of `timesteps`.
        """
        device = timesteps.device if isinstance(timesteps, torch.Tensor) else torch.device("cpu")
        timesteps = self._timesteps_tensor(timesteps, device)
        snr = self.alphas_cumprod / (1 - self.alphas_cumprod)  # (T,) float64
        return snr.to(dtype=dtype).to(device=device)[timesteps]

    def pred_original_sample(
        self, model_output: torch.Tensor, sample: torch.Tensor, timesteps: Timesteps
    ) -> torch.Tensor:
        """x̂_0 from the model output, for the configured `prediction_type`.

        epsilon: x̂_0 = (x_t - √(1-ᾱ_t)·ε̂) / √ᾱ_t (Ho et al. 2020, eq. 4 solved for x_0; eq. 15).
        v_prediction: x̂_0 = √ᾱ_t·x_t - √(1-ᾱ_t)·v̂ (Salimans & Ho 2022, sec. 4).
        sample: x̂_0 = model output.

        Args:
            model_output: ε̂, v̂ or x̂_0, shape (b, ...).
            sample: x_t, same shape.
            timesteps: t, int or integer tensor of shape () or (b,).

        Returns:
            x̂_0, shape (b, ...). Infinite where ᾱ_t = 0 for epsilon (zero terminal SNR at t = T-1).
        """
        sqrt_alpha_prod = self._gather(self._sqrt_alphas_cumprod, timesteps, sample)
        sqrt_one_minus_alpha_prod = self._gather(self._sqrt_one_minus_alphas_cumprod, timesteps, sample)
        return pred_original_sample(
            model_output, sample, sqrt_alpha_prod, sqrt_one_minus_alpha_prod, self.config.prediction_type
        )

    def pred_epsilon(self, model_output: torch.Tensor, sample: torch.Tensor, timesteps: Timesteps) -> torch.Tensor:
        """ε̂ from the model output, for the configured `prediction_type`.

        epsilon: ε̂ = model output.
        v_prediction: ε̂ = √ᾱ_t·v̂ + √(1-ᾱ_t)·x_t (Salimans & Ho 2022, sec. 4).
        sample: ε̂ = (x_t - √ᾱ_t·x̂_0) / √(1-ᾱ_t) (Ho et al. 2020, eq. 4 solved for ε).

        Args:
            model_output: ε̂, v̂ or x̂_0, shape (b, ...).
            sample: x_t, same shape.
            timesteps: t, int or integer tensor of shape () or (b,).

        Returns:
            ε̂, shape (b, ...).
        """
        sqrt_alpha_prod = self._gather(self._sqrt_alphas_cumprod, timesteps, sample)
        sqrt_one_minus_alpha_prod = self._gather(self._sqrt_one_minus_alphas_cumprod, timesteps, sample)
        return pred_epsilon(
            model_output, sample, sqrt_alpha_prod, sqrt_one_minus_alpha_prod, self.config.prediction_type
        )

    def training_target(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Timesteps
    ) -> torch.Tensor:
        """What the model should output for x_t = `add_noise(original_samples, noise, timesteps)`.

        epsilon: ε (Ho et al. 2020, eq. 14); v_prediction: v (Salimans & Ho 2022, sec. 4); sample: x_0.

        Args:
            original_samples: x_0, shape (b, ...).
            noise: ε, same shape.
            timesteps: t, int or integer tensor of shape () or (b,).

        Returns:
            the target, shape (b, ...), in the dtype of `original_samples`.
        """
        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":
            return noise.to(original_samples.dtype)
        if prediction_type == "v_prediction":
            return self.get_velocity(original_samples, noise, timesteps)
        assert prediction_type == "sample", prediction_type
        return original_samples
