import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffusion import DiffusionPipeline
from diffusion.io.model_folder import SHIPPED_MODEL, write_model_folder
from diffusion.models import UNet, UNetConfig
from diffusion.schedulers import (
    SCHEDULER_NAMES,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverConfig,
    DPMSolverMultistepScheduler,
    HeunConfig,
    HeunDiscreteScheduler,
    randn_tensor,
)


@pytest.fixture(scope="module")
def make_pipeline(make_tiny_pipeline):
    """A new tiny two-class pipeline with DDIM, 8x12 with attention."""

    def make() -> DiffusionPipeline:
        return make_tiny_pipeline(
            ["a", "b"], DDIMScheduler(), sample_size=(8, 12), attention_levels=(1,), head_channels=16
        )

    return make


@pytest.fixture(scope="module")
def pipe(make_pipeline):
    return make_pipeline()


def test_output_types(pipe):
    pil = pipe(num_images=3, num_inference_steps=2, seed=0)
    assert [(im.mode, im.size) for im in pil] == [("L", (12, 8))] * 3
    tensor = pipe(num_images=3, num_inference_steps=2, seed=0, output_type="tensor")
    assert tensor.shape == (3, 1, 8, 12) and tensor.dtype == torch.float32 and 0 <= tensor.min() <= tensor.max() <= 1
    array = pipe(num_images=3, num_inference_steps=2, seed=0, output_type="numpy")
    assert array.shape == (3, 8, 12, 1) and array.dtype == np.float32
    np.testing.assert_array_equal(array, tensor.permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(np.asarray(pil[1]), np.round(tensor[1, 0].numpy() * 255).astype(np.uint8))


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_each_image_depends_only_on_its_seed(pipe, scheduler):
    # DDPM, Euler ancestral and the SDE solvers draw fresh noise every step: the strict tests of
    # per-image generators; multistep solvers also carry a per-batch history.
    runs = {
        bs: pipe(num_images=8, num_inference_steps=3, scheduler=scheduler, seed=10, batch_size=bs, output_type="tensor")
        for bs in (1, 3, 8)
    }
    for bs in (3, 8):
        # Batched convolutions may sum in another order than batch-1 ones: float32 rounding only.
        torch.testing.assert_close(runs[bs], runs[1], rtol=1e-4, atol=1e-4)
    exact = pipe(
        num_images=2, num_inference_steps=3, scheduler=scheduler, seed=[15, 12], output_type="tensor", batch_size=1
    )
    torch.testing.assert_close(exact, runs[1][[5, 2]], rtol=0, atol=0)
    assert not torch.allclose(runs[1][0], runs[1][1])


def test_heun_churn_uses_per_image_generators_too(pipe):
    churn = HeunDiscreteScheduler(HeunConfig(s_churn=2.0))
    runs = [pipe(4, 3, scheduler=churn, seed=3, batch_size=bs, output_type="tensor") for bs in (1, 4)]
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-4, atol=1e-4)
    plain = pipe(4, 3, scheduler="heun", seed=3, output_type="tensor")
    assert (runs[0] - plain).abs().max() > 1e-3  # the churn noise changed the images


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_the_model_first_sees_the_seeds_noise_and_nfe_is_counted(pipe, scheduler):
    """Every sampler, σ-space ones included, starts the model from x_T ~ N(0, I): initial noise scaled by
    init_noise_sigma, then the input scaled back by √(σ² + 1). diffusers' DDPMPipeline skips both, which
    feeds k-style samplers noise ~157 times too large. The UNet is called once per listed timestep (NFE)."""
    inputs, timesteps = [], []

    def record(module, args):
        inputs.append(args[0].clone())
        timesteps.append(args[1][0].item())

    handle = pipe.unet.register_forward_pre_hook(record)
    try:
        pipe(2, 4, scheduler=scheduler, seed=5, output_type="tensor")
    finally:
        handle.remove()
    noise = randn_tensor((2, *inputs[0].shape[1:]), [torch.Generator().manual_seed(s) for s in (5, 6)])
    torch.testing.assert_close(inputs[0], noise, rtol=1e-6, atol=1e-6)
    nfe = pipe.num_model_evaluations(4, scheduler)
    assert len(inputs) == nfe == (7 if scheduler == "heun" else 4)
    assert timesteps[0] == 999


def test_karras_sigmas_and_fractional_timesteps_reach_the_model(pipe):
    calls = []
    karras = pipe.make_scheduler("euler", use_karras_sigmas=True)
    pipe(1, 3, scheduler=karras, seed=0, callback=lambda i, t, x: calls.append(t))
    expected = karras.timesteps.tolist()
    assert calls == expected and isinstance(calls[1], float) and calls[1] != round(calls[1])
    assert isinstance(pipe.make_scheduler("dpmsolver++3m"), DPMSolverMultistepScheduler)
    for name in ("dpmsolver++2m", "dpmsolver++3m-sde", "heun", "ddim"):
        assert pipe.scheduler_name(pipe.make_scheduler(name)) == name
    assert pipe.scheduler_name(pipe.make_scheduler("dpmsolver++")) == "dpmsolver++2m"  # order 2 by default
    assert pipe.make_scheduler("dpmsolver++3m").config.solver_order == 3
    with pytest.raises(ValueError, match="the euler scheduler has no setting eta"):
        pipe(1, 2, scheduler="euler", eta=0.5)


def test_any_sampler_from_any_default_keeps_the_schedule_and_drops_foreign_settings(make_pipeline):
    """A model whose own sampler is DPM-Solver++ (solver_type "heun", order 3) can still sample with
    UniPC, whose solver_type means something else: only the shared fields carry over."""
    config = DPMSolverConfig(beta_schedule="cosine", prediction_type="v_prediction", solver_type="heun", solver_order=3)
    dpm = DiffusionPipeline(make_pipeline().unet, DPMSolverMultistepScheduler(config))
    for name in SCHEDULER_NAMES:
        scheduler = dpm.make_scheduler(name)
        assert (scheduler.config.beta_schedule, scheduler.config.prediction_type) == ("cosine", "v_prediction")
    assert dpm.make_scheduler("unipc").config.solver_type == "bh2"  # UniPC's default, not DPM's "heun"
    assert dpm.make_scheduler("dpmsolver++").config.solver_type == "heun"  # same class: settings kept
    assert dpm.make_scheduler("dpmsolver++2m").config.solver_order == 2  # the alias wins over the saved 3


def test_generator_argument_and_seed_errors(pipe):
    a = pipe(num_images=2, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="tensor")
    b = pipe(num_images=2, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="tensor")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="give seed or generator, not both"):
        pipe(seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="got 1 seeds for 2 images; give one seed per image"):
        pipe(num_images=2, seed=[1])


def test_swapping_the_sampler_is_one_line(pipe):
    by_name = pipe(num_images=2, num_inference_steps=4, scheduler="ddpm", seed=0, output_type="tensor")
    by_object = pipe(
        num_images=2, num_inference_steps=4, scheduler=pipe.make_scheduler("ddpm"), seed=0, output_type="tensor"
    )
    torch.testing.assert_close(by_name, by_object, rtol=0, atol=0)
    assert isinstance(pipe.make_scheduler("ddpm"), DDPMScheduler)
    assert pipe.make_scheduler("ddpm").config.num_train_timesteps == pipe.scheduler.config.num_train_timesteps
    eta_1 = pipe(num_images=1, num_inference_steps=4, eta=1.0, seed=0, output_type="tensor")
    eta_0 = pipe(num_images=1, num_inference_steps=4, eta=0.0, seed=0, output_type="tensor")
    assert not torch.allclose(eta_0, eta_1)
    torch.testing.assert_close(eta_0, pipe(num_images=1, num_inference_steps=4, seed=0, output_type="tensor"))


def test_progress_and_callback(pipe, capsys):
    calls = []
    pipe(
        num_images=3, num_inference_steps=4, batch_size=2, progress=True, callback=lambda i, t, x: calls.append((i, t))
    )
    assert calls == [(0, 999), (1, 749), (2, 499), (3, 249)] * 2  # trailing spacing, two batches
    assert "8/8" in capsys.readouterr().err  # one bar over every step of every batch


def test_save_load_round_trip_gives_identical_images(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "model")
    assert sorted(str(p.relative_to(tmp_path / "model")) for p in (tmp_path / "model").rglob("*.*")) == [
        "manifest.json",
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/model.safetensors",
    ]
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert index["format_version"] == 1 and index["default_scheduler"] == "ddim" and index["class_names"] == ["a", "b"]
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "model")
    torch.testing.assert_close(
        loaded(num_images=2, num_inference_steps=3, seed=4, output_type="tensor"),
        pipe(num_images=2, num_inference_steps=3, seed=4, output_type="tensor"),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_to_dtype_keeps_sampling_in_float32(pipe, tmp_path, scheduler):
    pipe.save_pretrained(tmp_path / "m")
    bf16 = DiffusionPipeline.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    out = bf16(num_images=2, num_inference_steps=3, scheduler=scheduler, seed=0, output_type="tensor")
    assert out.dtype == torch.float32
    ref = pipe(num_images=2, num_inference_steps=3, scheduler=scheduler, seed=0, output_type="tensor")
    # bf16 has 8 mantissa bits, and an untrained UNet amplifies rounding in a few pixels: compare means.
    assert (out - ref).abs().mean() < 0.03
    assert bf16.to(torch.float32).dtype == torch.float32 and bf16.to("cpu").device.type == "cpu"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_images": 0}, "num_images must be a positive integer, got 0"),
        ({"num_images": 2.5}, "num_images must be a positive integer, got 2.5"),
        ({"num_inference_steps": 0}, r"num_inference_steps must be in \[1, 1000\]"),
        ({"num_inference_steps": 1001}, r"num_inference_steps must be in \[1, 1000\]"),
        ({"scheduler": "lms"}, r"unknown scheduler 'lms'; expected one of 'ddpm', 'ddim', 'dpmsolver\+\+'"),
        ({"scheduler": "ddpm", "eta": 0.5}, "the ddpm scheduler has no setting eta"),
        ({"eta": -1}, "eta must be a number >= 0, got -1"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"output_type": "jpeg"}, "unknown output_type 'jpeg'"),
    ],
)
def test_bad_arguments_are_clear_errors(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)


def test_bad_model_folders(pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model folder .*missing not found"):
        DiffusionPipeline.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"is not a model folder \(no model_index.json\)"):
        DiffusionPipeline.from_pretrained(tmp_path / "empty")
    pipe.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "unet" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"m is damaged: .*model.safetensors is truncated or damaged: \d+ bytes"):
        DiffusionPipeline.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "manifest.json").unlink()  # a folder from before manifests: safetensors' own check
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors file"):
        DiffusionPipeline.from_pretrained(tmp_path / "m")
    pipe.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "unet" / "config.json").read_text())
    (tmp_path / "m" / "unet" / "config.json").write_text(json.dumps(config | {"base_channels": 32}))
    with pytest.raises(ValueError, match=r"weight .* has shape .* but the config needs"):
        DiffusionPipeline.from_pretrained(tmp_path / "m")
    pipe.save_pretrained(tmp_path / "v")
    index = json.loads((tmp_path / "v" / "model_index.json").read_text())
    (tmp_path / "v" / "model_index.json").write_text(json.dumps(index | {"format_version": 99}))
    with pytest.raises(ValueError, match="has format version 99; this version of pixel-diffusion reads version 1"):
        DiffusionPipeline.from_pretrained(tmp_path / "v")


def test_shipped_model_loads_and_generates():
    pipe = DiffusionPipeline.from_pretrained()
    images = pipe(num_images=2, num_inference_steps=2, seed=0)
    assert [(im.mode, im.size) for im in images] == [("L", (28, 28))] * 2
    assert load_file(SHIPPED_MODEL / "unet" / "model.safetensors")  # weights present, not an LFS pointer
    assert Image.open(SHIPPED_MODEL / "samples.png").size == (726, 906)  # 8 x 10 grid of 28px + 2px pads, x3
    assert SHIPPED_MODEL.joinpath("README.md").read_text().count("MIT licence") == 1  # the model card
    assert sum(f.stat().st_size for f in SHIPPED_MODEL.rglob("*") if f.is_file()) < 20 * 2**20


# ----- fast paths: they must agree with the fp32 default -----


@pytest.mark.parametrize("labels", [None, [0, 1]])
def test_channels_last_gives_the_same_images(make_tiny_pipeline, labels):
    pipe = make_tiny_pipeline(["a", "b"], DPMSolverMultistepScheduler(), attention_levels=(1,), head_channels=16)
    kwargs = dict(num_images=2, num_inference_steps=4, class_labels=labels, guidance_scale=2.0 if labels else None)
    plain = pipe(**kwargs, output_type="tensor")
    pipe.to(memory_format=torch.channels_last)
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    # NHWC convolutions sum in another order: float32 rounding, amplified a little over 4 steps.
    torch.testing.assert_close(pipe(**kwargs, output_type="tensor"), plain, rtol=0, atol=1e-4)


def test_bf16_channels_last_forward_is_within_bf16_tolerance_of_fp32():
    """The fastest eager CPU path of bench/sample_throughput.py: bf16 weights, NHWC. bf16 keeps 8 bits of
    mantissa (relative error 2^-9 per rounding); through the network the output's largest error stays
    below 5% of the output's scale (the bench records 1.9e-2 on ddpm-cifar10)."""
    torch.manual_seed(0)
    unet = UNet(UNetConfig(sample_size=(16, 16), base_channels=32, channel_mult=(1, 2), norm_groups=8)).eval()
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([1, 250, 500, 999])
    with torch.inference_mode():
        reference = unet(x, t)
        unet.to(torch.bfloat16, memory_format=torch.channels_last)
        fast = unet(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last), t).float()
    assert (fast - reference).abs().max().item() < 0.05 * reference.abs().max().item()
    assert (fast - reference).abs().mean().item() < 0.01 * reference.abs().mean().item() + 1e-3


@pytest.mark.slow
def test_a_compiled_unet_gives_the_eager_images():
    """torch.compile (inductor on the CPU): the same images up to float reassociation. About 40 s."""
    pipe = DiffusionPipeline.from_pretrained()
    eager = pipe(4, 5, "ddim", class_labels="random", output_type="tensor")
    compiled = pipe.compile()(4, 5, "ddim", class_labels="random", output_type="tensor")
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-4)


def test_a_unet_assigned_after_compile_is_the_one_that_samples(make_pipeline):
    pipe = make_pipeline()
    before = pipe(1, 2, output_type="tensor")
    pipe._compiled = (pipe.unet, lambda *args: pytest.fail("the compiled form of a replaced UNet was called"))
    torch.manual_seed(1)
    pipe.unet = UNet(pipe.unet.config).eval()
    after = pipe(1, 2, output_type="tensor")
    assert not torch.equal(before, after)  # the new weights sample


# ----- 4-channel (RGBA) models -----


@pytest.fixture(scope="module")
def rgba_model(make_tiny_pipeline, tmp_path_factory):
    """A tiny unconditional RGBA model folder (in_channels = out_channels = 4, 8x8, random weights)."""
    pipe = make_tiny_pipeline(in_channels=4, out_channels=4)
    path = tmp_path_factory.mktemp("rgba") / "model"
    write_model_folder(path, pipe.unet, pipe.scheduler, "ddim", [])
    return path


def test_a_four_channel_model_makes_rgba_images(rgba_model):
    pipe = DiffusionPipeline.from_pretrained(rgba_model)
    assert (pipe.unet.config.in_channels, pipe.unet.config.out_channels) == (4, 4)
    images = pipe(num_images=2, num_inference_steps=2, seed=0)
    assert [(image.mode, image.size) for image in images] == [("RGBA", (8, 8))] * 2
    tensor = pipe(num_images=2, num_inference_steps=2, seed=0, output_type="tensor")
    assert tensor.shape == (2, 4, 8, 8)
    expected = np.round(tensor[1].permute(1, 2, 0).numpy() * 255).astype(np.uint8)  # (8, 8, 4)
    np.testing.assert_array_equal(np.asarray(images[1]), expected)
    assert pipe(num_images=1, num_inference_steps=2, seed=0, output_type="numpy").shape == (1, 8, 8, 4)


def test_a_four_channel_model_inverts_and_interpolates(rgba_model):
    pipe = DiffusionPipeline.from_pretrained(rgba_model)
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 4), dtype=np.uint8), mode="RGBA")
    latents = pipe.invert(rgba, num_inference_steps=2, fixed_point_iterations=0)
    assert latents.shape == (1, 4, 8, 8) and latents.isfinite().all()
    frames = pipe.interpolate(0, latents[0], num_frames=3, num_inference_steps=2)
    assert [(frame.mode, frame.size) for frame in frames] == [("RGBA", (8, 8))] * 3


def test_a_model_without_a_pil_mode_samples_tensors_and_refuses_pil(make_tiny_pipeline, monkeypatch):
    pipe = make_tiny_pipeline(in_channels=2)
    assert pipe(num_images=1, num_inference_steps=1, output_type="tensor").shape == (1, 2, 8, 8)
    monkeypatch.setattr(pipe, "denoiser", lambda *a: pytest.fail("sampled before checking"))
    with pytest.raises(ValueError, match="output_type='pil' makes L, RGB or RGBA images, and this model has 2 chan"):
        pipe(num_images=1, num_inference_steps=1)
    with pytest.raises(ValueError, match=r"a PIL image converts to 1 \(L\), 3 \(RGB\) or 4 \(RGBA\) channels, and "):
        pipe(image=Image.new("RGB", (8, 8)), output_type="tensor")


# ----- the background a model was trained on -----


@pytest.mark.parametrize(
    ("background", "recorded", "value"), [("white", None, 1.0), ("black", "black", 0.0), ("random", "random", 1.0)]
)
def test_transparent_inputs_are_composited_on_the_models_background(
    make_tiny_pipeline, tmp_path, background, recorded, value
):
    """The folder records a background other than white; editing and inversion composite an RGBA image on
    it (on white for random, which has no one colour), as training composited its images."""
    tiny = make_tiny_pipeline(in_channels=3)
    DiffusionPipeline(tiny.unet, tiny.scheduler, background=background).save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "model_index.json").read_text()).get("background") == recorded
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "m")
    assert pipe.background == background
    clear = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    kept = pipe(image=clear, strength=0, num_inference_steps=2, output_type="tensor")  # strength 0: the image
    assert kept.shape == (1, 3, 8, 8) and (kept == value).all()
    solid = torch.full((1, 3, 8, 8), value)  # the background colour as a tensor in [0, 1]
    latents = pipe.invert(clear, 2, fixed_point_iterations=0)
    torch.testing.assert_close(latents, pipe.invert(solid, 2, fixed_point_iterations=0), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("background", "colour"), [("white", (255, 255, 255)), ("black", (0, 0, 0)), ("random", (255, 255, 255))]
)
def test_input_colour_is_the_models_background_and_white_for_random(make_tiny_pipeline, background, colour):
    """What the transparency of an RGBA input is composited on at 1 and 3 channels: random has no one colour."""
    tiny = make_tiny_pipeline()
    assert DiffusionPipeline(tiny.unet, tiny.scheduler, background=background).input_colour == colour


def test_input_colour_without_a_recorded_background_is_white(make_tiny_pipeline, tmp_path):
    """A pipeline made without a background, and a model folder that records none (those written before the
    setting), composite on white."""
    tiny = make_tiny_pipeline()
    assert (tiny.background, tiny.input_colour) == ("white", (255, 255, 255))
    DiffusionPipeline(tiny.unet, tiny.scheduler, background="black").save_pretrained(tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    del index["background"]
    (tmp_path / "m" / "model_index.json").write_text(json.dumps(index))
    assert DiffusionPipeline.from_pretrained(tmp_path / "m").input_colour == (255, 255, 255)


def test_an_unknown_background_is_refused(make_tiny_pipeline, tmp_path):
    tiny = make_tiny_pipeline()
    with pytest.raises(ValueError) as refused:
        DiffusionPipeline(tiny.unet, tiny.scheduler, background="grey")
    assert str(refused.value) == "background must be one of white, black, random, got 'grey'"
    tiny.save_pretrained(tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    (tmp_path / "m" / "model_index.json").write_text(json.dumps(index | {"background": "grey"}))
    with pytest.raises(ValueError) as refused:
        DiffusionPipeline.from_pretrained(tmp_path / "m")
    assert (
        str(refused.value)
        == f"{tmp_path / 'm' / 'model_index.json'}: background must be one of white, black, random, got 'grey'"
    )


def test_save_pretrained_returns_the_sampler_written_and_refuses_the_nearest_when_told(
    make_tiny_pipeline, tmp_path, caplog
):
    """A sampler diffusers runs differently is written as the nearest one it runs as we do, or refused with
    ``nearest=False`` (as diffusion-export does for a sampler named by --scheduler), writing nothing."""
    pipe = make_tiny_pipeline(attention_levels=(1,))
    pipe.scheduler = pipe.make_scheduler("euler")
    assert pipe.save_pretrained(tmp_path / "ours") == "euler"
    with caplog.at_level("WARNING"):
        assert pipe.save_pretrained(tmp_path / "hf", format="diffusers") == "ddim"
    assert "diffusers runs the euler sampler differently: exporting ddim, the nearest" in caplog.text
    assert DiffusionPipeline.from_pretrained(tmp_path / "hf").scheduler_name() == "ddim"
    with pytest.raises(ValueError, match=r"^the euler sampler cannot be exported: .* \(ddim is the nearest\)$"):
        pipe.save_pretrained(tmp_path / "refused", format="diffusers", nearest=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "ours"]
    pipe.scheduler = pipe.make_scheduler("dpmsolver++2m")
    assert pipe.save_pretrained(tmp_path / "exact", format="diffusers", nearest=False) == "dpmsolver++2m"
