"""`training_loss` against the formulas, written here, and against diffusers' `DDPMScheduler` as the oracle.

A spy model records what the loss hands it; the test replays the loss's draws from a generator seeded
alike (label dropout, then ε, then t, all on the CPU) to know which noise and timesteps it used.
"""

import diffusers
import pytest
import torch

from diffusion.schedulers import BETA_SCHEDULES, PREDICTION_TYPES, NoiseSchedule, SchedulerConfig
from diffusion.training.loss import diffusion_loss, snr_weights, training_loss

SEED = 3
SHAPE = (16, 3, 4, 4)  # (b, c, h, w): 16 samples, so that the drawn timesteps spread


class Spy:
    """A model that records its inputs and returns ``output(x_t, t)``."""

    def __init__(self, output=lambda x_t, t: torch.zeros_like(x_t)) -> None:
        self.output, self.calls = output, []

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        self.calls.append((x_t.clone(), t.clone(), None if labels is None else labels.clone()))
        return self.output(x_t, t)


def schedule(prediction_type: str = "epsilon", **fields) -> NoiseSchedule:
    return NoiseSchedule(SchedulerConfig(prediction_type=prediction_type, **fields))


def oracle(s: NoiseSchedule) -> diffusers.DDPMScheduler:
    """diffusers' DDPMScheduler on the same schedule, every field pinned (its defaults differ from ours)."""
    c = s.config
    return diffusers.DDPMScheduler(
        num_train_timesteps=c.num_train_timesteps,
        beta_start=c.beta_start,
        beta_end=c.beta_end,
        beta_schedule="squaredcos_cap_v2" if c.beta_schedule == "cosine" else c.beta_schedule,
        trained_betas=None,
        rescale_betas_zero_snr=c.rescale_betas_zero_snr,
        prediction_type=c.prediction_type,
        variance_type="fixed_small",
        clip_sample=False,
        thresholding=False,
        timestep_spacing="trailing",
        steps_offset=0,
    )


def images(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=dtype)


def replay(s: NoiseSchedule, drop_prob: float | None = None) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The loss's draws from ``SEED``, in its order: the label dropout (conditional only), ε, t."""
    generator = torch.Generator().manual_seed(SEED)
    drop = None if drop_prob is None else torch.rand(SHAPE[0], generator=generator) < drop_prob
    noise = torch.randn(SHAPE, generator=generator)
    t = torch.randint(0, s.num_train_timesteps, (SHAPE[0],), generator=generator)
    return drop, noise, t


def formula_target(s: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ε (Ho et al. 2020, eq. 14), v = √ᾱ_t·ε - √(1-ᾱ_t)·x0 (Salimans & Ho 2022, sec. 4) or x0, in float64."""
    alphas_cumprod = s.alphas_cumprod[t].reshape(-1, 1, 1, 1)  # (b, 1, 1, 1)
    v = alphas_cumprod.sqrt() * noise.double() - (1 - alphas_cumprod).sqrt() * x0.double()
    return {"epsilon": noise.double(), "v_prediction": v, "sample": x0.double()}[s.config.prediction_type]


def loss_of(s: NoiseSchedule, model, x0: torch.Tensor, labels=None, **settings) -> torch.Tensor:
    return training_loss(model, s, x0, labels, torch.Generator().manual_seed(SEED), **settings)


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_the_model_sees_the_noised_images_and_their_timesteps(beta_schedule, rescale):
    s = schedule("v_prediction" if rescale else "epsilon", beta_schedule=beta_schedule, rescale_betas_zero_snr=rescale)
    x0, spy = images(), Spy()
    loss_of(s, spy, x0)
    _, noise, t = replay(s)
    ((x_t, seen_t, labels),) = spy.calls
    assert torch.equal(seen_t, t) and len(set(t.tolist())) > 8  # each image its own timestep, handed as drawn
    assert labels is None
    # q(x_t | x0) = √ᾱ_t·x0 + √(1-ᾱ_t)·ε (Ho et al. 2020, eq. 4), in float64 here, float32 there.
    alphas_cumprod = s.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    expected = alphas_cumprod.sqrt() * x0.double() + (1 - alphas_cumprod).sqrt() * noise.double()
    assert x_t.dtype == torch.float32
    torch.testing.assert_close(x_t.double(), expected, rtol=1e-6, atol=1e-6)
    # diffusers takes √ of a float32 ᾱ_t, we of a float64 one (tests/schedulers/test_schedule.py says how far).
    tol = {"rtol": 1e-5, "atol": 5e-5 if rescale else 1e-5}
    torch.testing.assert_close(x_t, oracle(s).add_noise(x0, noise, t), **tol)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_the_target_is_epsilon_v_or_x0(prediction_type):
    s = schedule(prediction_type, beta_schedule="cosine")
    x0 = images(torch.float64)
    _, noise, t = replay(s)
    # A model that outputs the exact target has zero loss; one that outputs zeros, the target's mean square.
    target = formula_target(s, x0, noise, t)
    assert loss_of(s, Spy(lambda x_t, t: target), x0).item() == pytest.approx(0.0, abs=1e-12)
    theirs = {"epsilon": noise, "v_prediction": oracle(s).get_velocity(x0, noise, t), "sample": x0}[prediction_type]
    # diffusers' float32 ᾱ_t: see the test above.
    torch.testing.assert_close(loss_of(s, Spy(), x0), theirs.float().square().mean(), rtol=1e-5, atol=1e-6)
    others = [p for p in PREDICTION_TYPES if p != prediction_type]
    for other in others:  # the prediction type decides the target
        assert loss_of(schedule(other, beta_schedule="cosine"), Spy(lambda x_t, t: target), x0) > 1e-3


@pytest.mark.parametrize("snr_gamma", [1.0, 5.0])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_min_snr_weights_each_sample(prediction_type, snr_gamma):
    s = schedule(prediction_type)
    x0 = images(torch.float64)
    output = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss = loss_of(s, Spy(lambda x_t, t: output), x0, weighting="min-snr", snr_gamma=snr_gamma)
    _, noise, t = replay(s)
    snr = s.alphas_cumprod[t] / (1 - s.alphas_cumprod[t])  # Kingma et al. 2021, eq. 2
    assert (snr > snr_gamma).any() and (snr < snr_gamma).any()  # both sides of the clip
    # Hang et al. 2023, eq. 8 and sec. 3.4: min(SNR, γ) in x0 space, over SNR for ε, over SNR + 1 for v.
    clipped = snr.clamp(max=snr_gamma)
    weights = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}[prediction_type]
    per_sample = (output - formula_target(s, x0, noise, t)).square().mean(dim=(1, 2, 3))  # (b,)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), (weights * per_sample).mean(), rtol=1e-6, atol=0)


def test_zero_terminal_snr_makes_the_last_timestep_pure_noise():
    s = schedule("v_prediction", num_train_timesteps=4, rescale_betas_zero_snr=True)  # T = 4: t = 3 gets drawn
    x0, spy = images(), Spy()
    _, noise, t = replay(s)
    last = t == 3
    assert last.any() and not last.all()
    # At ᾱ_{T-1} = 0 (Lin et al. 2023): x_t = ε exactly, and v = -x0.
    target = torch.where(last.reshape(-1, 1, 1, 1), -x0.double(), formula_target(s, x0, noise, t))
    assert loss_of(s, Spy(lambda x_t, t: target), x0.double()).item() == pytest.approx(0.0, abs=1e-12)
    loss = loss_of(s, spy, x0, weighting="min-snr")
    torch.testing.assert_close(spy.calls[0][0][last], noise[last], rtol=0, atol=0)
    torch.testing.assert_close(spy.calls[0][0], oracle(s).add_noise(x0, noise, t), rtol=1e-5, atol=5e-5)
    # Min-SNR gives the terminal timestep weight min(0, γ) / (0 + 1) = 0; the loss stays finite.
    snr = s.alphas_cumprod[t] / (1 - s.alphas_cumprod[t])
    per_sample = formula_target(s, x0, noise, t).square().mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss.double(), (snr.clamp(max=5.0) / (snr + 1) * per_sample).mean(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("drop_prob", [0.0, 0.5, 1.0])
def test_labels_are_dropped_to_the_null_class_before_the_noise_is_drawn(drop_prob):
    s, spy = schedule(), Spy()
    labels = torch.arange(SHAPE[0]) % 3
    loss_of(s, spy, images(), labels, cond_drop_prob=drop_prob, null_label=3)
    drop, noise, t = replay(s, drop_prob)
    ((x_t, seen_t, seen_labels),) = spy.calls
    torch.testing.assert_close(seen_labels, labels.masked_fill(drop, 3), rtol=0, atol=0)
    assert int(drop.sum()) in {0.0: [0], 1.0: [SHAPE[0]]}.get(drop_prob, range(1, SHAPE[0]))  # none, all, some
    assert torch.equal(seen_t, t)  # drawn after the dropout's draws, and ε too:
    torch.testing.assert_close(x_t, s.add_noise(images(), noise, t), rtol=0, atol=0)


def test_uniform_loss_is_the_mean_squared_error_in_float32():
    out = torch.randn(3, 2, 4, 4, dtype=torch.bfloat16)
    target = torch.randn(3, 2, 4, 4)
    loss = diffusion_loss(out, target, torch.ones(3), prediction_type="epsilon")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, (out.float() - target).square().mean())


@pytest.mark.parametrize(
    "prediction_type, expected",
    [
        # Hang et al. 2023: x0-space weight min(SNR, γ), divided by SNR for ε and by SNR + 1 for v.
        ("epsilon", [0.5 / 0.5, 5.0 / 20.0, 2.0 / 2.0]),
        ("v_prediction", [0.5 / 1.5, 5.0 / 21.0, 2.0 / 3.0]),
        ("sample", [0.5, 5.0, 2.0]),
    ],
)
def test_min_snr_weights(prediction_type, expected):
    snr = torch.tensor([0.5, 20.0, 2.0])
    torch.testing.assert_close(snr_weights(snr, prediction_type, "min-snr", 5.0), torch.tensor(expected))
    torch.testing.assert_close(snr_weights(snr, prediction_type, "uniform", 5.0), torch.ones(3))


def test_weights_scale_each_sample():
    out, target = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    snr = torch.tensor([1.0, 10.0])
    loss = diffusion_loss(out, target, snr, prediction_type="sample", weighting="min-snr", snr_gamma=5.0)
    assert loss.item() == pytest.approx((1.0 * 1 + 5.0 * 1) / 2)
