"""The diffusers oracle: our scheduler and diffusers' built from one parameter set, every field pinned."""

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import diffusers
import pytest
import torch

from diffusion.schedulers import DDIMConfig, DDIMScheduler, DDPMConfig, DDPMScheduler, Scheduler

T = 1000  # num_train_timesteps of every oracle pair


@dataclasses.dataclass
class Pair:
    """Our scheduler and the diffusers scheduler built from the same settings."""

    ours: Scheduler
    theirs: Any  # diffusers.DDPMScheduler | diffusers.DDIMScheduler
    eta: float | None  # DDIM's eta, which diffusers takes as a step() argument; None for DDPM

    def set_timesteps(self, n: int) -> None:
        self.ours.set_timesteps(n)
        self.theirs.set_timesteps(n)
        torch.testing.assert_close(self.ours.timesteps, self.theirs.timesteps, rtol=0, atol=0)

    def their_step(self, model_output: torch.Tensor, t: int, sample: torch.Tensor, generator=None):
        kwargs = {} if self.eta is None else {"eta": self.eta}
        out = self.theirs.step(model_output, t, sample, generator=generator, **kwargs)
        return out.prev_sample, out.pred_original_sample

    @staticmethod
    def assert_matches(actual: torch.Tensor, expected: torch.Tensor, extra_atol: float = 0.0) -> None:
        # Looser than float32 ulps: diffusers builds ᾱ_t in float32 (a cumprod of up to 1000 factors,
        # relative error up to ~1e-5 near t = T-1), we in float64; x̂_0 divides by √ᾱ_t, which carries
        # that relative error into the outputs. equal_nan: with zero terminal SNR and epsilon
        # prediction, both sides divide by √ᾱ_{T-1} = 0 at t = T-1 and agree on the inf/nan pattern.
        # extra_atol: a known float32 cancellation on diffusers' side, stated by the caller.
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 + extra_atol, equal_nan=True)


def build_pair(
    kind: str,
    *,
    beta_schedule: str = "linear",
    rescale_betas_zero_snr: bool = False,
    prediction_type: str = "epsilon",
    timestep_spacing: str = "trailing",
    steps_offset: int = 0,
    processing: str = "none",
    variance_type: str = "fixed_small",
    eta: float = 0.0,
    set_alpha_to_one: bool = True,
) -> Pair:
    """Build (ours, diffusers') with every config field passed explicitly on both sides.

    Args:
        kind: "ddpm" or "ddim".
        processing: what happens to x̂_0: "none", "clip" (clip_sample) or "threshold" (thresholding).
        The others: fields of our config, with our names.
    """
    assert processing in ("none", "clip", "threshold"), processing
    common = dict(
        num_train_timesteps=T,
        beta_start=1e-4,
        beta_end=0.02,
        rescale_betas_zero_snr=rescale_betas_zero_snr,
        prediction_type=prediction_type,
        timestep_spacing=timestep_spacing,
        steps_offset=steps_offset,
        clip_sample=processing == "clip",
        clip_sample_range=1.0,
        thresholding=processing == "threshold",
        dynamic_thresholding_ratio=0.995,
        sample_max_value=1.0,
    )
    diffusers_schedule = {"cosine": "squaredcos_cap_v2"}.get(beta_schedule, beta_schedule)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers warns about deprecated defaults we do not use
        if kind == "ddpm":
            ours = DDPMScheduler(DDPMConfig(beta_schedule=beta_schedule, variance_type=variance_type, **common))
            theirs = diffusers.DDPMScheduler(
                beta_schedule=diffusers_schedule, trained_betas=None, variance_type=variance_type, **common
            )
            return Pair(ours, theirs, eta=None)
        assert kind == "ddim", kind
        ours = DDIMScheduler(
            DDIMConfig(beta_schedule=beta_schedule, eta=eta, set_alpha_to_one=set_alpha_to_one, **common)
        )
        trained_betas = None
        if beta_schedule == "sigmoid":
            # diffusers' DDIM lacks "sigmoid"; give it the betas of diffusers' own sigmoid schedule
            # (from its DDPM, before any rescale: DDIM applies rescale_betas_zero_snr to trained_betas too).
            sigmoid = diffusers.DDPMScheduler(
                num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="sigmoid"
            )
            trained_betas = sigmoid.betas.tolist()
            diffusers_schedule = "linear"  # ignored when trained_betas is given
        theirs = diffusers.DDIMScheduler(
            beta_schedule=diffusers_schedule,
            trained_betas=trained_betas,
            set_alpha_to_one=set_alpha_to_one,
            **common,
        )
        return Pair(ours, theirs, eta=eta)


@pytest.fixture
def make_pair() -> Callable[..., Pair]:
    """`build_pair` as a fixture, so test modules need not import this conftest."""
    return build_pair


def dummy_model(sample: torch.Tensor, t: int) -> torch.Tensor:
    """A fixed, deterministic stand-in for a network: 0.1·x_t + t/1000."""
    return 0.1 * sample + t / 1000


@pytest.fixture
def model() -> Callable[[torch.Tensor, int], torch.Tensor]:
    return dummy_model


@pytest.fixture
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """(sample, model_output) of shape (2, 3, 8, 8), from a fixed seed."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 3, 8, 8, generator=generator)
    model_output = torch.randn(2, 3, 8, 8, generator=generator)
    return sample, model_output
