"""Importing diffusers pipeline folders: randomly initialised diffusers pipelines built from published configs
(never downloaded), saved by diffusers, loaded by us, compared with diffusers."""

import dataclasses
import errno
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import diffusers
import pytest
import torch

from diffusion import DiffusionPipeline, cli
from diffusion.io import diffusers_folder as interop
from diffusion.models import UNet
from diffusion.models.diffusers_map import unet_config_from_diffusers
from diffusion.schedulers import DDIMScheduler, DDPMScheduler, DPMSolverConfig, DPMSolverMultistepScheduler

# google/ddpm-cifar10-32's unet/config.json as published on the hub (keys as written there).
CIFAR10_UNET = {
    "_class_name": "UNet2DModel",
    "_diffusers_version": "0.0.4",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
# google/ddpm-celebahq-256's structure (six levels, attention at 16x16), shrunk: channels / 8 and 64x64.
CELEBAHQ_UNET_SMALL = CIFAR10_UNET | {
    "block_out_channels": [16, 16, 32, 32, 64, 64],
    "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
    "norm_num_groups": 8,
    "sample_size": 64,
}
# google/ddpm-cifar10-32's scheduler/scheduler_config.json.
DDPM_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "_diffusers_version": "0.1.1",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "clip_sample": True,
    "num_train_timesteps": 1000,
    "trained_betas": None,
    "variance_type": "fixed_large",
}


def diffusers_folder(tmp_path, unet_config: dict, layers: int | None = None, scheduler=None):
    """A diffusers DDPMPipeline with random weights, saved by diffusers itself."""
    settings = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    if layers is not None:
        settings["layers_per_block"] = layers
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unet = diffusers.UNet2DModel(**settings)
        scheduler = scheduler or diffusers.DDPMScheduler.from_config(DDPM_SCHEDULER)
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf", unet.eval()


@pytest.mark.parametrize("unet_config, layers", [(CIFAR10_UNET, 1), (CELEBAHQ_UNET_SMALL, 1)])
def test_diffusers_folder_loads_and_predicts_like_diffusers(tmp_path, unet_config, layers):
    # layers_per_block 1 instead of 2 keeps the CIFAR-10 test under a few seconds; structure is unchanged.
    folder, theirs = diffusers_folder(tmp_path, unet_config, layers)
    pipe = DiffusionPipeline.from_pretrained(folder)
    size = unet_config["sample_size"]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 900])
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, t), theirs(x, t).sample, rtol=1e-4, atol=1e-4)
    assert isinstance(pipe.scheduler, DDPMScheduler)
    config = pipe.scheduler.config
    assert (config.variance_type, config.clip_sample, config.timestep_spacing) == ("fixed_large", True, "leading")
    assert pipe.class_names == []  # a folder without _class_names (diffusers', or exported before them)


def test_published_cifar10_config_is_the_ddpm_preset():
    config = unet_config_from_diffusers(CIFAR10_UNET)
    assert (config.base_channels, config.channel_mult, config.attention_levels) == (128, (1, 2, 2, 2), (1,))
    assert (config.downsample_padding, config.flip_sin_to_cos, config.freq_shift, config.norm_eps) == (
        0,
        False,
        1.0,
        1e-6,
    )


def test_sampling_matches_diffusers_loop(tmp_path):
    """Five DDIM steps from the same noise: our pipeline and diffusers' UNet + DDIMScheduler agree."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ddim = diffusers.DDIMScheduler(
            num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, timestep_spacing="trailing"
        )
    folder, theirs = diffusers_folder(tmp_path, CIFAR10_UNET | {"sample_size": 16}, 1, ddim)
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    ours = pipe(2, 5, seed=3, output_type="tensor")
    generators = [torch.Generator().manual_seed(s) for s in (3, 4)]
    x = torch.cat([torch.randn(1, 3, 16, 16, generator=g) for g in generators])
    ddim.set_timesteps(5)
    with torch.no_grad():
        for t in ddim.timesteps:
            x = ddim.step(theirs(x, t.expand(2)).sample, t, x).prev_sample
    torch.testing.assert_close(ours, (x / 2 + 0.5).clamp(0, 1), rtol=1e-4, atol=1e-4)


def test_sample_py_takes_a_diffusers_folder(tmp_path):
    folder, _ = diffusers_folder(tmp_path, CIFAR10_UNET | {"sample_size": 16}, 1)
    out = tmp_path / "out"
    assert cli.sample_main(["--model", str(folder), "--num-images", "2", "--steps", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"act_fn": "gelu"}, "unsupported diffusers UNet2DModel setting act_fn='gelu'"),
        ({"center_input_sample": True}, "unsupported diffusers UNet2DModel setting center_input_sample=True"),
        ({"time_embedding_type": "fourier"}, "unsupported diffusers UNet2DModel setting time_embedding_type"),
        ({"block_out_channels": [128, 192, 256, 256]}, "block_out_channels=.*each must be a multiple of the first"),
        ({"mid_block_type": None}, "unsupported diffusers UNet2DModel setting mid_block_type=None"),
        (
            {"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"]},
            "down_block_types",
        ),
    ],
)
def test_unsupported_configs_are_refused_by_name(change, message):
    with pytest.raises(ValueError, match=message):
        unet_config_from_diffusers(CIFAR10_UNET | change)


def test_unsupported_scheduler_and_missing_weights_are_clear_errors(tmp_path):
    folder, _ = diffusers_folder(tmp_path, CIFAR10_UNET | {"sample_size": 16}, 1)
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({"_class_name": "LMSDiscreteScheduler", "_diffusers_version": "0.30.0"}))
    with pytest.raises(ValueError, match="unsupported diffusers scheduler 'LMSDiscreteScheduler'; supported: DDPM"):
        DiffusionPipeline.from_pretrained(folder)
    path.write_text(json.dumps({"_class_name": "DPMSolverMultistepScheduler", "_diffusers_version": "0.30.0"}))
    assert isinstance(DiffusionPipeline.from_pretrained(folder).scheduler, DPMSolverMultistepScheduler)
    dpm = {
        "_class_name": "DPMSolverMultistepScheduler",
        "_diffusers_version": "0.30.0",
        "final_sigmas_type": "sigma_min",
    }
    path.write_text(json.dumps(dpm))
    with pytest.raises(ValueError, match="unsupported diffusers DPMSolverMultistepScheduler setting final_sigmas_type"):
        DiffusionPipeline.from_pretrained(folder)
    path.write_text(json.dumps(dpm | {"final_sigmas_type": "zero", "euler_at_final": False}))  # the defaults: fine
    assert isinstance(DiffusionPipeline.from_pretrained(folder).scheduler, DPMSolverMultistepScheduler)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no UNet weights: expected one of diffusion_pytorch_model"):
        DiffusionPipeline.from_pretrained(folder)


def test_bin_weights_load_with_weights_only(tmp_path):
    folder, theirs = diffusers_folder(tmp_path, CIFAR10_UNET | {"sample_size": 16}, 1)
    torch.save(theirs.state_dict(), folder / "unet" / "diffusion_pytorch_model.bin")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    pipe = DiffusionPipeline.from_pretrained(folder)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, t), theirs(x, t).sample, rtol=1e-4, atol=1e-4)
    torch.save({"not": "a tensor", "fn": print}, folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="holds more than tensors and was not loaded"):
        DiffusionPipeline.from_pretrained(folder)  # a pickled function is never unpickled


@pytest.mark.parametrize("class_name", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"])
@pytest.mark.parametrize(
    "settings, warns",
    [
        ({}, True),  # diffusers' default, "linspace"
        ({"timestep_spacing": "leading", "steps_offset": 1}, True),
        ({"timestep_spacing": "trailing"}, False),
        ({"use_karras_sigmas": True}, False),  # timesteps from the Karras σs, whatever the spacing
    ],
)
def test_a_multistep_folder_diffusers_spaces_otherwise_loads_with_a_warning(
    tmp_path, caplog, class_name, settings, warns
):
    """diffusers' multistep schedulers space "linspace" and "leading" over n + 1 points and drop the last:
    the timesteps (diffusers' own, the oracle) differ from ours exactly where the warning says so."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = getattr(diffusers, class_name)(**settings)
    theirs.save_config(tmp_path)
    with caplog.at_level("WARNING"):
        ours = interop.load_diffusers_scheduler(tmp_path / "scheduler_config.json")
    spacing = ours.config.timestep_spacing
    expected = (
        f"{tmp_path / 'scheduler_config.json'}: diffusers' {class_name} spaces {spacing!r} timesteps over n + 1 points "
        f"and drops the last, we space n, so our {interop.SCHEDULER_CLASSES[class_name]} samples other timesteps; "
        'set "timestep_spacing": "trailing" there for the ones both take'
    )
    assert caplog.messages == ([expected] if warns else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers' own numpy DeprecationWarning
        theirs.set_timesteps(10)
    ours.set_timesteps(10)
    assert (theirs.timesteps.tolist() != ours.timesteps.tolist()) == warns
    if (
        warns and spacing == "linspace"
    ):  # the reviewer's example: ours 999, 888, 777, ...; diffusers' 999, 899, 799, ...
        assert ours.timesteps.tolist()[:3] == [999, 888, 777] and theirs.timesteps.tolist()[:3] == [999, 899, 799]


def test_our_own_multistep_folder_keeps_its_linspace_grid_without_a_warning(make_tiny_pipeline, tmp_path, caplog):
    pipe = make_tiny_pipeline(
        scheduler=DPMSolverMultistepScheduler(DPMSolverConfig(timestep_spacing="linspace")), **ADM_LIKE
    )
    pipe.save_pretrained(tmp_path / "model")
    with caplog.at_level("WARNING"):
        back = DiffusionPipeline.from_pretrained(tmp_path / "model")
    assert caplog.messages == []
    back.scheduler.set_timesteps(10)
    assert back.scheduler.timesteps.tolist() == torch.linspace(0, 999, 10).round().flip(0).long().tolist()


# The tiny UNet (tests/conftest.py) made ADM-like: RGB 16x16, attention at 8x8, scale-shift time conditioning.
ADM_LIKE = {"in_channels": 3, "sample_size": (16, 16), "attention_levels": (1,), "time_conditioning": "scale_shift"}
CLASSES = ("shoe", "bag", "coat")  # of the class-conditional variant, with attention at 8x8 too


# The default sampler train.py writes (DPM-Solver++ 3M SDE); TRAINED with a non-default noise schedule too,
# so that each of its settings must survive a round trip.
TRAINED_DEFAULT = DPMSolverConfig(solver_order=3, algorithm_type="sde-dpmsolver++")
TRAINED = dataclasses.replace(TRAINED_DEFAULT, beta_schedule="cosine", prediction_type="v_prediction")


@pytest.mark.parametrize(
    "scheduler, resample, exported_as",
    [
        (DDIMScheduler(), "conv", None),
        (DDPMScheduler(), "conv", None),
        (DPMSolverMultistepScheduler(), "conv", None),
        (DPMSolverMultistepScheduler(DPMSolverConfig(algorithm_type="sde-dpmsolver++")), "conv", None),
        (DPMSolverMultistepScheduler(TRAINED_DEFAULT), "conv", "dpmsolver++2m-sde"),  # the nearest one
        (DDIMScheduler(), "resblock", None),
    ],
)
def test_export_loads_in_diffusers_and_samples_the_same(make_tiny_pipeline, tmp_path, scheduler, resample, exported_as):
    """ADM-like UNets (scale-shift conditioning, and resblock up/down for "resblock") go both ways."""
    ours = make_tiny_pipeline(scheduler=scheduler, resample=resample, **ADM_LIKE)
    ours.save_pretrained(tmp_path / "hf", format="diffusers")
    if exported_as is not None:
        ours.scheduler = ours.make_scheduler(exported_as)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = diffusers.DDPMPipeline.from_pretrained(tmp_path / "hf")
    assert type(theirs.scheduler).__name__ == type(scheduler).__name__
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)), torch.tensor([3, 700])
    with torch.no_grad():
        torch.testing.assert_close(theirs.unet(x, t).sample, ours.unet(x, t), rtol=1e-4, atol=1e-4)
    # diffusers' DDPMPipeline from our per-image noise (one generator per image, as ours).
    generators = [torch.Generator().manual_seed(s) for s in (5, 6)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = theirs(batch_size=2, generator=generators, num_inference_steps=4, output_type="np").images
    expected = ours(2, 4, seed=5, output_type="numpy")
    assert abs(images - expected).max() < 2e-3  # the same images, up to float32 rounding and PIL-free output
    assert DiffusionPipeline.from_pretrained(tmp_path / "hf").unet.config == ours.unet.config  # and back


@pytest.mark.parametrize(
    "scheduler, overrides, message",
    [
        ("euler", {}, r"the euler sampler cannot be exported: .* instead \(ddim is the nearest\)$"),
        ("heun", {}, r"the heun sampler cannot be exported: .* instead \(dpmsolver\+\+2m is the nearest\)$"),
        ("dpmsolver++3m-sde", {}, r"third-order SDE DPM-Solver\+\+ differs from ours; export dpmsolver\+\+2m-sde"),
        # diffusers' DDIM steps from t to t - T//n, which is never the previous "linspace" timestep.
        ("ddim", {"timestep_spacing": "linspace"}, "ddim with timestep_spacing='linspace' steps differently"),
        ("unipc", {"solver_type": "bh1"}, r"UniPC with solver_type='bh1' returns NaN at its last step"),
    ],
)
def test_export_by_name_refuses_what_diffusers_would_run_differently(
    make_tiny_pipeline, tmp_path, capsys, scheduler, overrides, message
):
    """A sampler chosen by name is exported as it is or refused, with one line, and nothing is written."""
    pipe = make_tiny_pipeline(scheduler=DDIMScheduler(), **ADM_LIKE)
    pipe.scheduler = pipe.make_scheduler(scheduler, **overrides)
    pipe.save_pretrained(tmp_path / "model")
    out = tmp_path / "deep" / "hf"
    with pytest.raises(ValueError, match=message):
        interop.save_diffusers(pipe.unet, interop.registered_name(pipe.scheduler), pipe.scheduler, out, nearest=False)
    if not overrides:
        argv = ["--model", str(tmp_path / "model"), "--to", "diffusers", "--out", str(out), "--scheduler", scheduler]
        assert cli.export_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("diffusion-export: error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no out, no parent, no temporary folder
    heads = make_tiny_pipeline(scheduler=DDIMScheduler(), **ADM_LIKE)
    heads.unet = UNet(dataclasses.replace(heads.unet.config, num_heads=2, attention_levels=(0, 1)))
    with pytest.raises(ValueError, match=r"num_heads=2 at attention widths .* cannot be expressed by UNet2DModel"):
        heads.save_pretrained(tmp_path / "hf2", format="diffusers")
    assert not (tmp_path / "hf2").exists()


@pytest.mark.parametrize(
    "default, karras, nearest",
    [
        ("dpmsolver++3m-sde", False, "dpmsolver++2m-sde"),
        ("euler", False, "ddim"),
        ("euler-ancestral", False, "ddpm"),
        ("heun", False, "dpmsolver++2m"),
        ("euler", True, "dpmsolver++2m"),  # DDIM has no Karras σs; DPM-Solver++ keeps them
        ("euler-ancestral", True, "dpmsolver++2m-sde"),
        ("heun", True, "dpmsolver++2m"),
    ],
)
def test_a_default_diffusers_runs_differently_is_exported_as_the_nearest(
    make_tiny_pipeline, tmp_path, caplog, default, karras, nearest
):
    pipe = make_tiny_pipeline(CLASSES, DDIMScheduler(), attention_levels=(1,))
    pipe.scheduler = pipe.make_scheduler(default, **({"use_karras_sigmas": True} if karras else {}))
    with caplog.at_level("WARNING"):
        pipe.save_pretrained(tmp_path / "hf", format="diffusers")
    assert f"diffusers runs the {default} sampler differently: exporting {nearest}, the nearest" in caplog.text
    back = DiffusionPipeline.from_pretrained(tmp_path / "hf")
    expected = pipe.make_scheduler(nearest, **({"use_karras_sigmas": True} if karras else {}))
    assert back.scheduler_name() == nearest and back.scheduler.config == expected.config
    images = back(2, 4, seed=3, output_type="tensor")
    torch.testing.assert_close(images, pipe(2, 4, expected, seed=3, output_type="tensor"), rtol=0, atol=0)
    if default in ("euler", "euler-ancestral") and not karras:  # the same sampler in x_t: the same images
        original = pipe(2, 4, seed=3, output_type="tensor")
        torch.testing.assert_close(images, original, rtol=0, atol=1e-4)  # float32 rounding of two formulas


@pytest.mark.parametrize(
    "source, settings, label",
    [
        # diffusers' DDPM looks the previous timestep up as ours does: every spacing runs as ours.
        ("ours", {"timestep_spacing": "linspace"}, None),
        ("ours", {"timestep_spacing": "leading", "steps_offset": 1}, None),
        ("ours", {"timestep_spacing": "trailing"}, None),
        # Folders of diffusers' defaults (linspace), imported: their samplers (euler's nearest, ddim, too)
        # would step other timesteps in diffusers, so the export takes DDPM on the same timesteps.
        ("DPMSolverMultistepScheduler", {}, "dpmsolver++2m with timestep_spacing='linspace'"),
        ("UniPCMultistepScheduler", {}, "unipc with timestep_spacing='linspace'"),
        ("EulerDiscreteScheduler", {}, "euler with timestep_spacing='linspace'"),
    ],
)
def test_a_sampler_diffusers_would_space_differently_is_exported_as_ddpm(
    make_tiny_pipeline, tmp_path, capsys, caplog, source, settings, label
):
    if source == "ours":
        pipe = make_tiny_pipeline(scheduler=DDPMScheduler(), **ADM_LIKE)
        pipe.scheduler = pipe.make_scheduler("ddpm", **settings)
        pipe.save_pretrained(tmp_path / "model")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scheduler = getattr(diffusers, source)(**settings)
        diffusers_folder(tmp_path, CIFAR10_UNET | {"sample_size": 16}, 1, scheduler)[0].rename(tmp_path / "model")
        pipe = DiffusionPipeline.from_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        assert cli.export_main(["--model", str(tmp_path / "model"), "--to", "diffusers", "--out", str(out)]) == 0
    assert f"wrote {out}/ for diffusers (ddpm)" in capsys.readouterr().out
    if label is not None:
        assert f"diffusers runs the {label} sampler differently: exporting ddpm, the nearest" in caplog.text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = diffusers.DDPMPipeline.from_pretrained(out)
        generators = [torch.Generator().manual_seed(s) for s in (5, 6)]
        images = theirs(batch_size=2, generator=generators, num_inference_steps=4, output_type="np").images
    expected = pipe(2, 4, pipe.make_scheduler("ddpm"), seed=5, output_type="numpy")
    assert abs(images - expected).max() < 2e-3  # the same images, up to float32 rounding


def test_a_sampler_refused_for_its_spacing_names_a_way_out_that_exists(make_tiny_pipeline, tmp_path, capsys):
    pipe = make_tiny_pipeline(
        scheduler=DPMSolverMultistepScheduler(DPMSolverConfig(timestep_spacing="linspace")), **ADM_LIKE
    )
    pipe.save_pretrained(tmp_path / "model")
    argv = ["--model", str(tmp_path / "model"), "--to", "diffusers", "--out", str(tmp_path / "hf"), "--scheduler"]
    for name in ("dpmsolver++2m", "unipc", "ddim"):
        assert cli.export_main([*argv, name]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].endswith(
            "export it with --scheduler ddpm (diffusers runs DDPM on every spacing as we do), or set "
            '"timestep_spacing": "trailing" in the model\'s scheduler/scheduler_config.json'
        ), err
    assert cli.export_main([*argv, "ddpm"]) == 0  # the way out
    assert DiffusionPipeline.from_pretrained(tmp_path / "hf").scheduler.config.timestep_spacing == "linspace"


def test_export_command_writes_a_diffusers_folder_or_one_clear_line(tiny_model, tmp_path, capsys, caplog):
    out = tmp_path / "hf"
    assert cli.export_main(["--model", str(tiny_model), "--to", "diffusers", "--out", str(out)]) == 0
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert isinstance(diffusers.DDPMPipeline.from_pretrained(out).unet, diffusers.UNet2DModel)
    assert f"wrote {out}/ for diffusers (ddim)" in capsys.readouterr().out
    # The shipped model's own sampler (3M SDE) runs differently in diffusers: the nearest one, said in a
    # line (save_diffusers' warning, on stderr).
    with caplog.at_level("WARNING"):
        assert cli.export_main(["--to", "diffusers", "--out", str(tmp_path / "shipped")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [
        f"wrote {tmp_path / 'shipped'}/ for diffusers (dpmsolver++2m-sde): load it with DDPMPipeline.from_pretrained",
    ]
    assert (
        "diffusers runs the dpmsolver++3m-sde sampler differently: exporting dpmsolver++2m-sde, the nearest one it "
        "runs as we do (export another by name to choose)"
    ) in caplog.messages
    back = DiffusionPipeline.from_pretrained(tmp_path / "shipped")
    assert back.class_names == DiffusionPipeline.from_pretrained().class_names and "sneaker" in back.class_names
    assert cli.export_main(["--to", "diffusers", "--out", str(tmp_path / "s2"), "--scheduler", "dpmsolver++2m"]) == 0


@pytest.mark.parametrize(
    "sampler, overrides",
    [
        ("ddpm", {}),
        ("ddim", {}),
        ("dpmsolver++2m", {}),
        ("dpmsolver++3m", {}),
        ("dpmsolver++2m-sde", {}),
        ("unipc", {}),
        (None, {}),  # the model's default, 3M SDE, exported as 2M SDE
        ("ddpm", {"variance_type": "fixed_large", "thresholding": True}),
        ("ddim", {"set_alpha_to_one": False, "timestep_spacing": "leading", "steps_offset": 1, "clip_sample": True}),
        ("dpmsolver++2m", {"use_karras_sigmas": True, "solver_type": "heun", "lower_order_final": False}),
        ("unipc", {"solver_order": 3}),
    ],
)
def test_ours_to_diffusers_and_back_gives_the_same_images_and_class_names(
    make_tiny_pipeline, tmp_path, sampler, overrides
):
    """ours -> diffusers folder (diffusion-export) -> ours: the same settings, class names and images from
    the same seeds, with the exported sampler and with any other one chosen by name afterwards."""
    pipe = make_tiny_pipeline(CLASSES, DPMSolverMultistepScheduler(TRAINED), attention_levels=(1,))
    if overrides:
        pipe.scheduler = pipe.make_scheduler(sampler, **overrides)  # the model's own default then
    pipe.save_pretrained(tmp_path / "model")
    argv = ["--model", str(tmp_path / "model"), "--to", "diffusers", "--out", str(tmp_path / "hf")]
    assert cli.export_main(argv + (["--scheduler", sampler] if sampler and not overrides else [])) == 0
    exported = pipe.make_scheduler(sampler or "dpmsolver++2m-sde", **overrides)
    back = DiffusionPipeline.from_pretrained(tmp_path / "hf")
    assert back.class_names == ["shoe", "bag", "coat"] and back.unet.config == pipe.unet.config
    assert type(back.scheduler) is type(exported) and back.scheduler.config == exported.config
    labels = ["coat", "shoe", "bag"]
    for name in (exported, "ddim", "dpmsolver++3m-sde"):  # a setting lost on the way would show in one of them
        scheduler = back.scheduler if name is exported else name
        torch.testing.assert_close(
            back(3, 4, scheduler, seed=11, class_labels=labels, output_type="tensor"),
            pipe(3, 4, exported if name is exported else name, seed=11, class_labels=labels, output_type="tensor"),
            rtol=0,
            atol=0,
        )  # the same weights and settings: bit for bit


def test_diffusers_loads_an_export_with_class_names_as_its_two_components(make_tiny_pipeline, tmp_path):
    """diffusers takes a non-"_" key of model_index.json for a component; _class_names it ignores."""
    pipe = make_tiny_pipeline(CLASSES, DDIMScheduler(), attention_levels=(1,))
    interop.save_diffusers(pipe.unet, "ddim", pipe.scheduler, tmp_path / "hf", pipe.class_names)
    assert json.loads((tmp_path / "hf" / "model_index.json").read_text())["_class_names"] == ["shoe", "bag", "coat"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a warning about the key
        theirs = diffusers.DDPMPipeline.from_pretrained(tmp_path / "hf")
    assert sorted(theirs.components) == ["scheduler", "unet"]
    assert DiffusionPipeline.from_pretrained(tmp_path / "hf").class_names == ["shoe", "bag", "coat"]


def test_save_pretrained_for_diffusers_keeps_the_class_names_and_background(make_tiny_pipeline, tmp_path):
    tiny = make_tiny_pipeline(CLASSES, DDIMScheduler(), attention_levels=(1,))
    DiffusionPipeline(tiny.unet, tiny.scheduler, tiny.class_names, "black").save_pretrained(
        tmp_path / "hf", "diffusers"
    )
    assert json.loads((tmp_path / "hf" / "model_index.json").read_text())["_background"] == "black"
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "hf")
    assert (loaded.class_names, loaded.background) == (["shoe", "bag", "coat"], "black")


def test_unipc_exports_with_a_warning_and_samples_the_same_in_a_diffusers_loop(make_tiny_pipeline, tmp_path, caplog):
    """diffusers' DDPMPipeline passes generator= to step, which UniPC's does not take; its UNet and
    scheduler in a plain loop give our images."""
    pipe = make_tiny_pipeline(scheduler=DDIMScheduler(), **ADM_LIKE)
    pipe.scheduler = pipe.make_scheduler("unipc")
    with caplog.at_level("WARNING"):
        pipe.save_pretrained(tmp_path / "hf", format="diffusers")
    assert "DDPMPipeline cannot call UniPCMultistepScheduler" in caplog.text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = diffusers.DDPMPipeline.from_pretrained(tmp_path / "hf")
    generators = [torch.Generator().manual_seed(s) for s in (3, 4)]
    x = torch.cat([torch.randn(1, 3, 16, 16, generator=g) for g in generators])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers' own numpy DeprecationWarning
        theirs.scheduler.set_timesteps(5)
        for t in theirs.scheduler.timesteps:
            x = theirs.scheduler.step(theirs.unet(x, t.expand(2)).sample, t, x).prev_sample
    expected = pipe(2, 5, seed=3, output_type="tensor")
    torch.testing.assert_close((x / 2 + 0.5).clamp(0, 1), expected, rtol=1e-4, atol=1e-4)  # float32 rounding


def test_a_failed_export_leaves_nothing_behind(make_tiny_pipeline, tmp_path, monkeypatch, capsys):
    pipe = make_tiny_pipeline(scheduler=DDIMScheduler(), **ADM_LIKE)
    pipe.save_pretrained(tmp_path / "model")
    out = tmp_path / "hf"
    argv = ["--model", str(tmp_path / "model"), "--to", "diffusers", "--out", str(out)]
    assert cli.export_main([*argv[:1], str(tmp_path / "missing"), *argv[2:]]) == 2  # an unknown model
    assert "model folder" in capsys.readouterr().err and sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    def full_disk(path, tensors, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with monkeypatch.context() as m:  # a disk that fills up halfway through the weights
        m.setattr(interop, "save_safetensors", full_disk)
        assert cli.export_main(argv) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with monkeypatch.context() as m:  # the same through the API, to a folder in a new parent
        m.setattr(interop, "save_safetensors", full_disk)
        with pytest.raises(OSError, match="No space left"):
            pipe.save_pretrained(tmp_path / "new" / "hf", format="diffusers")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    # --to pixel-diffusion goes the same way.
    assert cli.export_main(argv) == 0
    assert cli.export_main(["--model", str(out), "--to", "pixel-diffusion", "--out", str(tmp_path / "ours")]) == 0
    assert DiffusionPipeline.from_pretrained(tmp_path / "ours").unet.config == pipe.unet.config


def files_of(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("to", ["diffusers", "pixel-diffusion"])
def test_export_refuses_a_folder_that_holds_files_and_changes_nothing(make_tiny_pipeline, tmp_path, capsys, to):
    """Nothing a user has is overwritten or deleted: not an earlier export with a model card, not another
    model's weights, not the source model itself."""
    pipe = make_tiny_pipeline(scheduler=DDIMScheduler(), **ADM_LIKE)
    pipe.save_pretrained(tmp_path / "model")
    other = tmp_path / "other"
    assert cli.export_main(["--model", str(tmp_path / "model"), "--to", "diffusers", "--out", str(other)]) == 0
    (other / "README.md").write_text("model card")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / ".keep").write_text("")  # a hidden file is a file too
    capsys.readouterr()
    for out in (other, tmp_path / "model", notes):
        before = files_of(out)
        argv = ["--model", str(tmp_path / "model"), "--to", to, "--out", str(out), "--scheduler", "ddpm"]
        assert cli.export_main(argv) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"diffusion-export: error: --out {out} already holds files; give a new or empty folder (nothing is "
            "overwritten)"
        ]
        assert files_of(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "notes", "other"]  # no temporary folder
    with pytest.raises(ValueError, match=rf"^{re.escape(str(other))} already holds files; give a new or empty"):
        pipe.save_pretrained(other, format="diffusers")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="file is a file; give a folder"):
        pipe.save_pretrained(tmp_path / "file", format="diffusers")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match=r"dangling is a link to .*gone, which does not exist"):
        pipe.save_pretrained(tmp_path / "dangling", format="diffusers")


@pytest.mark.parametrize("link", [False, True])
def test_export_into_an_empty_folder_writes_in_it_on_its_own_file_system(
    make_tiny_pipeline, tmp_path, monkeypatch, capsys, link
):
    """An empty --out (a mount point, a link to a folder elsewhere) is written through a temporary folder
    inside it: no rename crosses file systems, and the folder itself is never removed or replaced."""
    pipe = make_tiny_pipeline(scheduler=DDIMScheduler(), **ADM_LIKE)
    pipe.save_pretrained(tmp_path / "model")
    target = tmp_path / "mount"
    target.mkdir()
    out = tmp_path / "link" if link else target
    if link:
        out.symlink_to(target)
    # A file system of its own at `target`: a rename into it from outside fails as across a mount point, and
    # it cannot be removed (EBUSY).
    replace, rmdir = os.replace, os.rmdir

    def across_mounts(src, dst):
        inside = [Path(p).resolve().is_relative_to(target) for p in (src, dst)]
        if inside[0] != inside[1]:
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src), None, str(dst))
        return replace(src, dst)

    def busy(path, *args, **kwargs):
        if Path(path).resolve() == target:
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        return rmdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "replace", across_mounts)
    monkeypatch.setattr(os, "rmdir", busy)
    for to in ("diffusers", "pixel-diffusion"):
        assert cli.export_main(["--model", str(tmp_path / "model"), "--to", to, "--out", str(out)]) == 0, to
        assert f"wrote {out}/" in capsys.readouterr().out
        assert out.is_symlink() == link and target.is_dir()
        assert not [p for p in target.iterdir() if p.name.startswith(".")]  # no temporary folder left
        assert DiffusionPipeline.from_pretrained(out).unet.config == pipe.unet.config
        for entry in list(target.iterdir()):  # empty again for the other format
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    folders = []
    interop.write_folder(out, lambda folder: folders.append(folder) or pipe.save_pretrained(folder))
    assert folders[0].parent == out and folders[0].name.startswith(".tmp-")  # written on out's file system
    assert sorted(p.name for p in tmp_path.iterdir()) == (["link", "model", "mount"] if link else ["model", "mount"])


def test_a_failed_move_into_an_empty_folder_leaves_it_empty(make_tiny_pipeline, tmp_path, monkeypatch):
    pipe = make_tiny_pipeline(scheduler=DDIMScheduler(), **ADM_LIKE)
    out = tmp_path / "out"
    out.mkdir()
    replace, moves = os.replace, []

    def fail_second_move(src, dst):
        if Path(dst).parent == out:  # a move of write_folder's, not a file's atomic write
            moves.append(Path(dst).name)
            if len(moves) == 2:
                raise OSError(errno.EIO, "Input/output error", str(dst))
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_second_move)
    with pytest.raises(OSError, match="Input/output error"):
        pipe.save_pretrained(out, format="diffusers")
    assert len(moves) == 2 and "model_index.json" not in moves  # the index goes last
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    monkeypatch.setattr(os, "replace", replace)
    pipe.save_pretrained(out, format="diffusers")  # and it takes the export then
    assert isinstance(DiffusionPipeline.from_pretrained(out).scheduler, DDIMScheduler)


def test_a_class_conditional_export_keeps_the_class_embedding_and_warns(make_tiny_pipeline, tmp_path, caplog):
    """diffusers' UNet2DModel takes the classes (num_class_embeds = classes + null); its outputs equal ours."""
    pipe = make_tiny_pipeline(["a", "b", "c"])
    with caplog.at_level("WARNING"):
        pipe.save_pretrained(tmp_path / "hf", format="diffusers")
    assert "DDPMPipeline passes no class labels" in caplog.text and "3 for the unconditional null class" in caplog.text
    theirs = diffusers.UNet2DModel.from_pretrained(tmp_path / "hf" / "unet")
    assert theirs.config.num_class_embeds == 4
    x, t, labels = torch.randn(4, 1, 8, 8), torch.tensor([10, 500, 999, 3]), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(theirs(x, t, class_labels=labels).sample, pipe.unet(x, t, labels), atol=1e-4, rtol=0)
    back = DiffusionPipeline.from_pretrained(tmp_path / "hf")
    assert back.unet.config.num_classes == 3
    torch.testing.assert_close(
        back(2, 3, class_labels=[2, 0], output_type="tensor"), pipe(2, 3, class_labels=[2, 0], output_type="tensor")
    )


def test_the_export_command_keeps_the_background(make_tiny_pipeline, tmp_path):
    tiny = make_tiny_pipeline(CLASSES, DDIMScheduler(), attention_levels=(1,))
    DiffusionPipeline(tiny.unet, tiny.scheduler, tiny.class_names, "black").save_pretrained(tmp_path / "ours")
    argv = ["--model", str(tmp_path / "ours"), "--to", "diffusers", "--out", str(tmp_path / "hf")]
    assert cli.export_main(argv) == 0
    assert json.loads((tmp_path / "hf" / "model_index.json").read_text())["_background"] == "black"
    assert DiffusionPipeline.from_pretrained(tmp_path / "hf").background == "black"
