"""What derives from `TrainConfig`: the learning-rate schedule, the run's length, the batch split."""

import math

import pytest

from diffusion.training.config import TrainConfig, lr_factor, model_config, total_steps, unused_settings


def run(**fields) -> TrainConfig:
    return TrainConfig(**({"data": "d", "out": "o", "preset": "tiny", "sample_every": 0} | fields))


@pytest.mark.parametrize("warmup, total", [(0, 10), (3, 10), (4, 5), (7, 7)])
def test_cosine_learning_rate_follows_its_formula(warmup, total):
    """Step s uses lr·f(s): linear warmup f = (s + 1) / W for s < W, then a half cosine from 1 at W to 0 at N
    (Loshchilov & Hutter 2017, SGDR, eq. 5 without restarts)."""
    c = run(warmup_steps=warmup, lr_schedule="cosine")
    for s in range(total + 2):
        if s < warmup:
            expected = (s + 1) / warmup
        else:
            progress = min(1.0, (s - warmup) / max(1, total - warmup))  # of the decay, held at 1 past the end
            expected = 0.5 * (1 + math.cos(math.pi * progress))
        assert lr_factor(s, c, total) == pytest.approx(expected, abs=1e-12), s


def test_cosine_schedule_at_its_landmarks():
    c = run(warmup_steps=2, lr_schedule="cosine")
    # 0.5 at the first step of a 2-step warmup, 1 at its end, cos(π/4) a quarter through the decay, 0 at the end.
    landmarks = {0: 0.5, 1: 1.0, 2: 1.0, 3: 0.5 + 0.5 * math.cos(math.pi / 4), 4: 0.5, 6: 0.0, 9: 0.0}
    assert {s: lr_factor(s, c, 6) for s in landmarks} == pytest.approx(landmarks, abs=1e-12)


def test_constant_learning_rate_after_the_warmup():
    c = run(warmup_steps=4)
    assert [lr_factor(s, c, 10) for s in range(10)] == pytest.approx([0.25, 0.5, 0.75, 1.0] + [1.0] * 6)


def test_the_run_ends_at_max_steps_or_epochs_whichever_comes_first():
    assert total_steps(run(max_steps=5), steps_per_epoch=2.0) == 5
    assert total_steps(run(epochs=2.5), steps_per_epoch=3.0) == 8  # ceil(7.5)
    assert total_steps(run(epochs=0.01), steps_per_epoch=3.0) == 1  # at least one step
    assert total_steps(run(max_steps=5, epochs=1.0), steps_per_epoch=3.0) == 3


def test_a_batch_the_processes_cannot_share_is_refused():
    c = run(batch_size=6, grad_accum=2)
    assert model_config(c, num_processes=1).sample_size == (32, 32)
    message = r"^--batch-size 6 must be divisible by --grad-accum \(2\) times the number of processes \(2\)$"
    with pytest.raises(ValueError, match=message):
        model_config(c, num_processes=2)


def test_a_background_is_one_of_its_choices_and_refused_with_four_channels():
    with pytest.raises(ValueError, match=r"^unknown background 'grey'; expected one of 'white', 'black', 'random'$"):
        run(background="grey")
    with pytest.raises(ValueError) as refused:
        run(channels=4, background="random")
    assert str(refused.value) == (
        "--background random has no effect with --channels 4, which keeps transparency as the alpha channel: leave "
        "--background out, or train at --channels 1 or 3"
    )
    assert (run(channels=4).background, run().background) == ("white", "white")
    unet = model_config(run(channels=4))
    assert (unet.in_channels, unet.out_channels) == (4, None)  # None: as many as in_channels


def test_a_background_typed_with_four_channels_is_unused_even_white():
    """White, the default, is what a 4-channel run holds, so train.py refuses --background when it was typed."""
    four = run(channels=4)
    assert unused_settings(four, model_config(four))["background"] == (
        "--background white has no effect with --channels 4, which keeps transparency as the alpha channel: leave "
        "--background out, or train at --channels 1 or 3"
    )
    assert "background" not in unused_settings(run(background="black"), model_config(run()))
