"""Importing diffusers pipeline folders: randomly initialised diffusers pipelines built from published configs
(never downloaded), saved by diffusers, loaded by us, compared with diffusers."""

import dataclasses
import json
import warnings

import diffusers
import pytest
import torch

from diffusion import DiffusionPipeline, cli
from diffusion.models import UNet, UNetConfig
from diffusion.models.diffusers_map import unet_config_from_diffusers
from diffusion.schedulers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

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


def tiny_ours(scheduler, resample: str = "conv") -> DiffusionPipeline:
    torch.manual_seed(0)
    config = UNetConfig(
        resample=resample,
        in_channels=3,
        sample_size=(16, 16),
        base_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_levels=(1,),
        norm_groups=8,
        time_conditioning="scale_shift",
    )
    return DiffusionPipeline(UNet(config), scheduler)


@pytest.mark.parametrize(
    "scheduler, resample",
    [
        (DDIMScheduler(), "conv"),
        (DDPMScheduler(), "conv"),
        (DPMSolverMultistepScheduler(), "conv"),
        (DDIMScheduler(), "resblock"),
    ],
)
def test_export_loads_in_diffusers_and_samples_the_same(tmp_path, scheduler, resample):
    """ADM-like UNets (scale-shift conditioning, and resblock up/down for "resblock") go both ways."""
    ours = tiny_ours(scheduler, resample)
    ours.save_pretrained(tmp_path / "hf", format="diffusers")
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
    "scheduler, message",
    [
        ("euler", "the euler sampler cannot be exported: diffusers' DDPMPipeline does not scale"),
        ("dpmsolver++3m-sde", "diffusers' third-order SDE DPM-Solver\\+\\+ differs from ours"),
    ],
)
def test_export_refuses_what_diffusers_would_run_differently(tmp_path, scheduler, message):
    pipe = tiny_ours(DDIMScheduler())
    pipe.scheduler = pipe.make_scheduler(scheduler)
    with pytest.raises(ValueError, match=message):
        pipe.save_pretrained(tmp_path / "hf", format="diffusers")
    assert not (tmp_path / "hf").exists()  # nothing written
    heads = tiny_ours(DDIMScheduler())
    heads.unet = UNet(dataclasses.replace(heads.unet.config, num_heads=2, attention_levels=(0, 1)))
    with pytest.raises(ValueError, match=r"num_heads=2 at attention widths .* cannot be expressed by UNet2DModel"):
        heads.save_pretrained(tmp_path / "hf2", format="diffusers")


def test_export_command_writes_a_diffusers_folder_or_one_clear_line(tiny_model, tmp_path, capsys):
    out = tmp_path / "hf"
    assert cli.export_main(["--model", str(tiny_model), "--to", "diffusers", "--out", str(out)]) == 0
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert isinstance(diffusers.DDPMPipeline.from_pretrained(out).unet, diffusers.UNet2DModel)
    assert f"wrote {out}/ for diffusers (ddim)" in capsys.readouterr().out
    # The shipped model's own sampler (3M SDE) runs differently in diffusers: refused, with the way out.
    assert cli.export_main(["--to", "diffusers", "--out", str(tmp_path / "shipped")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "third-order SDE DPM-Solver++ differs from ours" in err[0]
    assert cli.export_main(["--to", "diffusers", "--out", str(tmp_path / "s2"), "--scheduler", "dpmsolver++2m"]) == 0


def test_a_class_conditional_export_keeps_the_class_embedding_and_warns(tmp_path, caplog):
    """diffusers' UNet2DModel takes the classes (num_class_embeds = classes + null); its outputs equal ours."""
    torch.manual_seed(0)
    config = UNetConfig(
        in_channels=1, sample_size=(8, 8), base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
        attention_levels=(), norm_groups=8, num_classes=3,
    )  # fmt: skip
    pipe = DiffusionPipeline(UNet(config), DDIMScheduler(), ["a", "b", "c"])
    with caplog.at_level("WARNING"):
        pipe.save_pretrained(tmp_path / "hf", format="diffusers")
    assert "DDPMPipeline passes no class labels" in caplog.text and "3 for the unconditional null class" in caplog.text
    theirs = diffusers.UNet2DModel.from_pretrained(tmp_path / "hf" / "unet")
    assert theirs.config.num_class_embeds == 4
    x, t, labels = torch.randn(4, 1, 8, 8), torch.tensor([10, 500, 999, 3]), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(theirs(x, t, class_labels=labels).sample, pipe.unet(x, t, labels), atol=1e-4, rtol=0)
    back = DiffusionPipeline.from_pretrained(tmp_path / "hf")  # and the import: ids only, diffusers has no names
    assert back.unet.config.num_classes == 3 and back.class_names == []
    torch.testing.assert_close(
        back(2, 3, class_labels=[2, 0], output_type="tensor"), pipe(2, 3, class_labels=[2, 0], output_type="tensor")
    )
