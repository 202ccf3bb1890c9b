"""Scheduler configs: validation, JSON round trips, diffusers dicts, and the registry built on them."""

import dataclasses

import pytest

from diffusion.io.diffusers_folder import SCHEDULER_CLASSES
from diffusion.models.diffusers_map import diffusers_defaults
from diffusion.schedulers import (
    SCHEDULERS,
    ConsistencyScheduler,
    DDIMConfig,
    DDIMScheduler,
    DDPMConfig,
    DDPMScheduler,
    DPMSolverConfig,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunConfig,
    HeunDiscreteScheduler,
    SchedulerConfig,
    SigmaConfig,
    UniPCConfig,
    UniPCMultistepScheduler,
    get_scheduler,
)

CONFIG_CLASSES = [SchedulerConfig, DDPMConfig, DDIMConfig, SigmaConfig, DPMSolverConfig, HeunConfig, UniPCConfig]


def non_default(config_class):
    """A config of `config_class` with every field away from its default."""
    values = dict(
        num_train_timesteps=500,
        beta_start=2e-4,
        beta_end=0.03,
        beta_schedule="cosine",
        rescale_betas_zero_snr=True,
        prediction_type="v_prediction",
        timestep_spacing="leading",
        steps_offset=1,
        clip_sample=True,
        clip_sample_range=2.0,
        thresholding=True,
        dynamic_thresholding_ratio=0.9,
        sample_max_value=3.0,
        variance_type="fixed_large",
        eta=0.5,
        set_alpha_to_one=False,
        use_karras_sigmas=True,
        solver_order=3,
        algorithm_type="sde-dpmsolver++",
        solver_type="heun",
        lower_order_final=False,
        s_churn=1.0,
        s_tmin=0.5,
        s_tmax=10.0,
        s_noise=1.003,
    )
    names = {f.name for f in dataclasses.fields(config_class)}
    assert names <= set(values), names - set(values)
    if config_class.__name__ == "UniPCConfig":
        values["solver_type"] = "bh1"
    config = config_class(**{k: v for k, v in values.items() if k in names})
    assert all(getattr(config, f.name) != f.default for f in dataclasses.fields(config_class))
    return config


@pytest.mark.parametrize("config_class", CONFIG_CLASSES)
def test_config_dict_round_trip(config_class):
    config = non_default(config_class)
    assert config_class.from_dict(config.to_dict()) == config
    assert config_class.from_dict(config_class().to_dict()) == config_class()


@pytest.mark.parametrize("config_class", CONFIG_CLASSES)
def test_config_save_load_round_trip(config_class, tmp_path):
    config = non_default(config_class)
    config.save(tmp_path / "scheduler_config.json")
    assert config_class.load(tmp_path / "scheduler_config.json") == config


def test_load_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        SchedulerConfig.load(tmp_path / "nope.json")


def test_our_defaults():
    # Where we differ from diffusers on purpose: no surprising defaults (trailing spacing, no x̂_0 clipping).
    config = SchedulerConfig()
    assert config.timestep_spacing == "trailing" and config.clip_sample is False


def test_from_dict_reads_diffusers_names_and_defaults():
    # A diffusers scheduler_config.json as an old diffusers version writes it: no timestep_spacing,
    # no clip_sample. Missing keys mean diffusers' defaults (leading, clip_sample=True), not ours.
    d = {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": "0.1.1",
        "beta_schedule": "squaredcos_cap_v2",
        "num_train_timesteps": 1000,
        "trained_betas": None,
        "variance_type": "fixed_large",
        "use_karras_sigmas": False,  # a key of other diffusers schedulers: ignored
    }
    config = DDPMConfig.from_dict(d)
    assert config.beta_schedule == "cosine" and config.variance_type == "fixed_large"
    assert config.timestep_spacing == "leading" and config.clip_sample is True
    assert DDIMConfig.from_dict(d).beta_schedule == "cosine"  # DDIM does not model variance_type: ignored
    # Without diffusers' "_" keys the dict is ours, and our defaults fill the gaps.
    assert SchedulerConfig.from_dict({"beta_schedule": "linear"}) == SchedulerConfig()


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("trained_betas", [0.1, 0.2], r"trained_betas=\[0.1, 0.2\]"),
        ("variance_type", "learned_range", r"'learned_range'.*'fixed_small', 'fixed_large'"),
        ("beta_schedule", "laplace", r"'laplace'.*'linear', 'scaled_linear', 'cosine', 'sigmoid'"),
    ],
)
def test_from_dict_refuses_what_it_cannot_honour(key, value, match):
    with pytest.raises(ValueError, match=match):
        DDPMConfig.from_dict({"_class_name": "DDPMScheduler", key: value})


@pytest.mark.parametrize(
    ("config_class", "kwargs", "match"),
    [
        (
            SchedulerConfig,
            {"beta_schedule": "quadratic"},
            r"unknown beta schedule 'quadratic'; expected one of 'linear', 'scaled_linear', 'cosine', "
            r"'sigmoid'",
        ),
        (
            SchedulerConfig,
            {"timestep_spacing": "even"},
            r"unknown timestep spacing 'even'; expected one of 'leading', 'trailing', 'linspace'",
        ),
        (
            SchedulerConfig,
            {"prediction_type": "score"},
            r"unknown prediction type 'score'; expected one of 'epsilon', 'v_prediction', 'sample'",
        ),
        (
            DDPMConfig,
            {"variance_type": "learned"},
            r"unknown variance type 'learned'; expected one of 'fixed_small', 'fixed_large'",
        ),
        (DDIMConfig, {"eta": -0.1}, r"eta must be >= 0, got -0.1"),
        (SchedulerConfig, {"beta_start": 0.0}, "0 < beta_start <= beta_end < 1"),
        (SchedulerConfig, {"beta_start": 0.03, "beta_end": 0.02}, "0 < beta_start <= beta_end < 1"),
        (SchedulerConfig, {"num_train_timesteps": 1}, "num_train_timesteps must be >= 2, got 1"),
        (SchedulerConfig, {"num_train_timesteps": 10.0}, "num_train_timesteps must be an int"),
        (SchedulerConfig, {"steps_offset": -1}, "steps_offset must be >= 0, got -1"),
        (SchedulerConfig, {"clip_sample_range": 0.0}, "clip_sample_range must be > 0"),
        (
            SchedulerConfig,
            {"dynamic_thresholding_ratio": 1.5},
            r"dynamic_thresholding_ratio must be in \(0, 1\]",
        ),
        (SchedulerConfig, {"sample_max_value": -1.0}, "sample_max_value must be > 0"),
    ],
)
def test_bad_config_values_raise(config_class, kwargs, match):
    with pytest.raises(ValueError, match=match):
        config_class(**kwargs)


def test_registry_builds_each_scheduler_from_a_dict_or_config():
    assert dict(SCHEDULERS) == {
        "ddpm": DDPMScheduler,
        "ddim": DDIMScheduler,
        "dpmsolver++": DPMSolverMultistepScheduler,
        "euler": EulerDiscreteScheduler,
        "euler-ancestral": EulerAncestralDiscreteScheduler,
        "heun": HeunDiscreteScheduler,
        "unipc": UniPCMultistepScheduler,
        "consistency": ConsistencyScheduler,
    }
    for name, cls in SCHEDULERS.items():
        config = non_default(cls.config_class)
        assert get_scheduler(name).config == cls.config_class()
        assert get_scheduler(name, config).config == config
        assert get_scheduler(name, config.to_dict()).config == config
        assert cls.from_config(config).config == config and cls.from_dict(config.to_dict()).config == config
    # One saved dict serves every scheduler: DDIM ignores DDPM's variance_type.
    ddim = get_scheduler("ddim", DDPMConfig(beta_schedule="cosine").to_dict())
    assert isinstance(ddim, DDIMScheduler) and ddim.config.beta_schedule == "cosine"


def test_unknown_scheduler_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown scheduler 'lms'; expected one of 'ddpm', 'ddim', 'dpmsolver\+\+'"):
        get_scheduler("lms")


def test_config_of_another_scheduler_raises():
    with pytest.raises(TypeError, match="DDIMScheduler needs a DDIMConfig"):
        DDIMScheduler(DDPMConfig())


@pytest.mark.parametrize("class_name", SCHEDULER_CLASSES)
def test_a_diffusers_dict_without_keys_means_its_class_defaults(class_name):
    """The oracle: the defaults of diffusers' own class (its __init__ signature). A dict of that class with
    no settings must give our scheduler for it diffusers' default of every field both have, and ours for
    the fields the class lacks (a class without clip_sample never clips)."""
    theirs = diffusers_defaults(class_name)
    config_class = SCHEDULERS[SCHEDULER_CLASSES[class_name]].config_class
    config = config_class.from_dict({"_class_name": class_name, "_diffusers_version": "0.42.1"})
    ours = config_class()
    for field in dataclasses.fields(config_class):
        value = getattr(config, field.name)
        if field.name not in theirs:
            assert value == getattr(ours, field.name), field.name
        elif field.name == "beta_schedule":
            assert value == {"squaredcos_cap_v2": "cosine"}.get(theirs[field.name], theirs[field.name])
        else:
            assert value == theirs[field.name], field.name


def test_a_dpmsolver_dict_does_not_clip_or_space_leading():
    """DPMSolverMultistepScheduler has no clip_sample and spaces "linspace" by default: an old dict
    without those keys is read so, not with DDPM's leading spacing and clipping."""
    d = {"_class_name": "DPMSolverMultistepScheduler", "_diffusers_version": "0.30.0", "solver_order": 3}
    config = DPMSolverConfig.from_dict(d)
    assert (config.clip_sample, config.timestep_spacing, config.solver_order) == (False, "linspace", 3)
    # get_scheduler reads a dict as its own class's settings, whichever scheduler it builds from it.
    assert get_scheduler("ddim", d).config.clip_sample is False
    heun = HeunConfig.from_dict({"_class_name": "HeunDiscreteScheduler", "_diffusers_version": "0.30.0"})
    assert (heun.beta_start, heun.beta_end, heun.clip_sample) == (0.00085, 0.012, False)


@pytest.mark.parametrize(
    "class_name", ["PNDMScheduler", "LMSDiscreteScheduler", "DEISMultistepScheduler", "KDPM2DiscreteScheduler", None]
)
def test_a_dict_of_another_diffusers_class_gets_no_guessed_defaults(class_name, caplog):
    """No other class's defaults are guessed (not DDPM's clipping and leading spacing): what the dict lacks
    is ours, what it says is kept."""
    d = {"_diffusers_version": "0.30.0"} | ({"_class_name": class_name} if class_name else {})
    other = DDIMConfig.from_dict(d)
    assert (other.clip_sample, other.timestep_spacing) == (False, "trailing")
    said = DDIMConfig.from_dict(d | {"clip_sample": True, "timestep_spacing": "leading", "steps_offset": 1})
    assert (said.clip_sample, said.timestep_spacing, said.steps_offset) == (True, "leading", 1)
    # The keys of a diffusers dict no field models are logged at DEBUG only (interop checks their values).
    with caplog.at_level("INFO", logger="diffusion"):
        DDIMConfig.from_dict(d | {"skip_prk_steps": True})
    assert caplog.records == []
    with caplog.at_level("DEBUG", logger="diffusion"):
        DDIMConfig.from_dict(d | {"skip_prk_steps": True})
    assert caplog.messages == ["DDIMConfig.from_dict ignores the key 'skip_prk_steps'"]
    caplog.clear()
    with caplog.at_level("INFO", logger="diffusion"):  # one of our dicts: a key no field models may be a typo
        DDIMConfig.from_dict({"clip_smaple": True})
    assert caplog.messages == ["DDIMConfig.from_dict ignores the key 'clip_smaple'"]
