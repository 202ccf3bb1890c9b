"""The shared scheduler protocol: timesteps and their lookup, step errors, noise, x̂_0 processing, imports."""

import re

import pytest
import torch

from diffusion.schedulers import (
    SCHEDULERS,
    TIMESTEP_SPACINGS,
    DDIMConfig,
    DDIMScheduler,
    DDPMScheduler,
    SigmaScheduler,
    dynamic_threshold,
    get_scheduler,
)

T = 1000


@pytest.mark.parametrize("steps_offset", [0, 1])
@pytest.mark.parametrize("n", [1, 7, 10, 50, 1000])
@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
def test_timesteps_match_diffusers(make_pair, spacing, n, steps_offset):
    pair = make_pair("ddpm", timestep_spacing=spacing, steps_offset=steps_offset)
    pair.theirs.set_timesteps(n)
    if spacing == "leading" and n == T and steps_offset == 1:
        # diffusers returns timesteps 1000..1 here, and 1000 is not a training timestep (its step() then
        # fails with an IndexError). We refuse it up front.
        assert pair.theirs.timesteps[0] == T
        with pytest.raises(ValueError, match="gives timestep 1000, past the last training timestep 999"):
            pair.ours.set_timesteps(n)
        return
    pair.ours.set_timesteps(n)
    timesteps = pair.ours.timesteps
    assert timesteps.dtype == torch.int64 and timesteps.shape == (n,)
    torch.testing.assert_close(timesteps, pair.theirs.timesteps, rtol=0, atol=0)
    assert pair.ours.num_inference_steps == n


def test_trailing_timesteps_have_n_entries_where_diffusers_has_n_plus_one(make_pair):
    # np.arange(1000, 0, -1000/61) has 62 entries: diffusers' trailing schedule then ends with
    # timestep -1. Ours stops at n = 61 entries, equal to diffusers' first 61.
    pair = make_pair("ddpm", timestep_spacing="trailing")
    pair.theirs.set_timesteps(61)
    pair.ours.set_timesteps(61)
    assert len(pair.theirs.timesteps) == 62 and pair.theirs.timesteps[-1] == -1
    torch.testing.assert_close(pair.ours.timesteps, pair.theirs.timesteps[:61], rtol=0, atol=0)


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
def test_previous_timestep_is_the_next_entry(scheduler_class, spacing):
    scheduler = scheduler_class(scheduler_class.config_class(timestep_spacing=spacing))
    scheduler.set_timesteps(7)
    timesteps = scheduler.timesteps.tolist()
    assert [scheduler.previous_timestep(t) for t in timesteps] == [*timesteps[1:], -1]


@pytest.mark.parametrize("n", [0, -3, T + 1])
def test_out_of_range_step_counts_raise(n):
    scheduler = DDIMScheduler()
    with pytest.raises(ValueError, match=rf"num_inference_steps must be in \[1, 1000\].*got {n}"):
        scheduler.set_timesteps(n)


def test_non_integer_step_count_raises():
    with pytest.raises(ValueError, match="num_inference_steps must be an int"):
        DDIMScheduler().set_timesteps(10.0)


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler])
def test_timesteps_and_step_before_set_timesteps_raise(scheduler_class):
    scheduler = scheduler_class()
    assert scheduler.num_inference_steps is None
    with pytest.raises(RuntimeError, match=r"call set_timesteps\(num_inference_steps\) first"):
        _ = scheduler.timesteps
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(RuntimeError, match=r"call set_timesteps\(num_inference_steps\) first"):
        scheduler.step(x, 999, x)


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize("timestep", [998, -1, 1000, torch.tensor([999, 899])])
def test_timestep_not_in_schedule_raises(scheduler_class, timestep):
    scheduler = scheduler_class()
    scheduler.set_timesteps(10)
    x = torch.zeros(2, 3, 4, 4)
    match = "not one of the 10 timesteps" if isinstance(timestep, int) else "1-element integer tensor"
    with pytest.raises(ValueError, match=match):
        scheduler.step(x, timestep, x)


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler])
def test_mismatched_shapes_raise(scheduler_class):
    scheduler = scheduler_class()
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match=r"model_output shape \(2, 6, 4, 4\) differs from sample shape"):
        scheduler.step(torch.zeros(2, 6, 4, 4), 999, torch.zeros(2, 3, 4, 4))


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler])
def test_step_is_pure_and_takes_any_timestep_form(scheduler_class, inputs):
    scheduler = scheduler_class(scheduler_class.config_class(clip_sample=True))
    scheduler.set_timesteps(10)
    sample, model_output = inputs
    copies = (sample.clone(), model_output.clone(), scheduler.timesteps.clone())
    t = scheduler.timesteps[3]
    outputs = [
        scheduler.step(model_output, timestep, sample, generator=torch.Generator().manual_seed(5))
        for timestep in (int(t), t, t.reshape(1), int(t))
    ]
    for output in outputs[1:]:
        torch.testing.assert_close(output, outputs[0], rtol=0, atol=0)
    torch.testing.assert_close((sample, model_output, scheduler.timesteps), copies, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_everything_set_timesteps_builds_is_refused_before_it(name):
    scheduler = get_scheduler(name)
    x = torch.zeros(1, 1, 2, 2)
    calls = [
        lambda: scheduler.timesteps,
        lambda: scheduler.coefficients,
        lambda: scheduler.step_index(999),
        lambda: scheduler.step(x, 999, x),
        lambda: scheduler.noise_level(0),
    ]
    if isinstance(scheduler, SigmaScheduler):
        calls += [lambda: scheduler.sigmas, lambda: scheduler.sigma_of(999)]
        if scheduler.ve_sample:
            calls += [lambda: scheduler.init_noise_sigma, lambda: scheduler.scale_model_input(x, 999)]
    else:
        calls += [lambda: scheduler.previous_timestep(999)]
    for call in calls:
        with pytest.raises(RuntimeError, match=r"^no timesteps yet: call set_timesteps\(num_inference_steps\) first$"):
            call()


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_step_index_maps_each_form_of_a_timestep_to_its_entry(name):
    """An int, a 0-d or 1-element tensor give the first entry equal to it; a state names the entry (Heun's
    grid repeats timesteps: the corrector at σ_{i+1} shares its timestep with the next predictor)."""
    scheduler = get_scheduler(name)
    scheduler.set_timesteps(4)
    timesteps = scheduler.timesteps.tolist()
    for i, t in enumerate(timesteps):
        tensor = scheduler.timesteps[i]
        assert {scheduler.step_index(t), scheduler.step_index(tensor), scheduler.step_index(tensor.reshape(1))} == {
            timesteps.index(t)
        }
        if isinstance(scheduler, SigmaScheduler):
            assert scheduler.step_index(t, scheduler.initial_state(i)) == i
    assert len(set(timesteps)) == 4 and len(timesteps) == (7 if name == "heun" else 4)  # Heun: t_1..t_3 twice


@pytest.mark.parametrize(
    ("name", "timestep", "message"),
    [
        ("ddim", 998, "timestep 998 is not one of the 4 timesteps set by set_timesteps (999 ... 249)"),
        ("ddpm", -1, "timestep -1 is not one of the 4 timesteps set by set_timesteps (999 ... 249)"),
        ("dpmsolver++", 1000, "timestep 1000 is not one of the 4 timesteps set by set_timesteps (999 ... 249)"),
        ("euler", 998.5, "timestep 998.5 is not one of the 4 timesteps set by set_timesteps (999.0 ... 249.0)"),
        ("heun", 500, "timestep 500.0 is not one of the 7 timesteps set by set_timesteps (999.0 ... 249.0)"),
        (
            "ddim",
            torch.tensor([999, 749]),
            "timestep must be an int or a 1-element integer tensor, got shape (2,) dtype torch.int64",
        ),
        (
            "unipc",
            torch.tensor(999.0),
            "timestep must be an int or a 1-element integer tensor, got shape () dtype torch.float32",
        ),
        (
            "ddpm",
            torch.tensor(True),
            "timestep must be an int or a 1-element integer tensor, got shape () dtype torch.bool",
        ),
        ("ddim", 999.0, "timestep must be an int, got 999.0"),
        ("dpmsolver++", "999", "timestep must be an int, got '999'"),
        ("euler", torch.tensor([999.0, 749.0]), "timestep must have one element, got shape (2,)"),
    ],
)
def test_step_index_errors(name, timestep, message):
    scheduler = get_scheduler(name)
    scheduler.set_timesteps(4)  # trailing: 999, 749, 499, 249
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        scheduler.step_index(timestep)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):  # the one check `step` makes
        scheduler.step(x, timestep, x)


def test_step_index_refuses_a_state_for_another_entry():
    scheduler = get_scheduler("dpmsolver++")
    scheduler.set_timesteps(4)
    assert scheduler.step_index(749, scheduler.initial_state(1)) == 1
    with pytest.raises(ValueError, match=r"^state expects timestep 749 at step 1, got 999$"):
        scheduler.step_index(999, scheduler.initial_state(1))
    with pytest.raises(ValueError, match=r"^state expects timestep none \(all steps done\) at step 4, got 249$"):
        scheduler.step_index(249, scheduler.initial_state(4))


def test_timesteps_go_to_the_requested_device():
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10, device="meta")
    assert scheduler.timesteps.device.type == "meta"


@pytest.mark.parametrize(
    ("ratio", "max_value"), [(0.995, 1.0), (0.9, 2.5), (0.5, 1.5), (1.0, 4.0)], ids=lambda v: str(v)
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dynamic_threshold_matches_diffusers(make_pair, dtype, ratio, max_value):
    pair = make_pair("ddpm", processing="threshold")
    theirs = pair.theirs
    theirs.register_to_config(dynamic_thresholding_ratio=ratio, sample_max_value=max_value)
    x0 = (torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2).to(dtype)
    actual = dynamic_threshold(x0, ratio, max_value)
    assert actual.dtype == dtype and actual.shape == x0.shape
    torch.testing.assert_close(actual, theirs._threshold_sample(x0), rtol=0, atol=0)


def test_thresholding_wins_over_clipping(inputs):
    sample, _ = inputs
    x0 = sample * 3
    config = DDIMConfig(clip_sample=True, clip_sample_range=0.5, thresholding=True, sample_max_value=2.0)
    processed = DDIMScheduler(config)._process_pred_original_sample(x0)
    torch.testing.assert_close(processed, dynamic_threshold(x0, 0.995, 2.0), rtol=0, atol=0)
    assert processed.abs().max() == 1  # thresholding divides by s; clipping to 0.5 would not reach 1


@pytest.mark.parametrize("name", ["ddim", "ddpm"])
def test_a_step_under_inference_mode_leaves_the_scheduler_usable_with_autograd(name):
    """The per-dtype cache a step builds outlives the pipeline call (run under inference mode) that built it."""
    scheduler = get_scheduler(name)
    scheduler.set_timesteps(4)
    t = scheduler.timesteps[0].item()
    with torch.inference_mode():
        scheduler.step(torch.zeros(1, 1, 2, 2), t, torch.zeros(1, 1, 2, 2), torch.Generator().manual_seed(0))
    x = torch.ones(1, 1, 2, 2, requires_grad=True)
    scheduler.step(2 * x, t, x, torch.Generator().manual_seed(0)).prev_sample.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_a_timestep_of_the_wrong_type_is_named_before_missing_timesteps():
    with pytest.raises(ValueError, match=r"^timestep must be an int, got 'x'$"):
        get_scheduler("ddim").step(torch.zeros(1), "x", torch.zeros(1))
