import dataclasses
import json

import pytest
import torch

from diffusion.models import PRESETS, UNet, UNetConfig, preset


def tiny(**overrides) -> UNetConfig:
    """A very small UNet exercising every part: 3 levels, attention, classes."""
    base = dict(
        in_channels=3,
        sample_size=(16, 16),
        base_channels=16,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_levels=(1,),
        norm_groups=8,
        head_channels=8,
    )
    return UNetConfig(**(base | overrides))


def n_params(config: UNetConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in UNet(config).parameters())


@pytest.mark.parametrize(
    "name, count",
    [
        ("ddpm-cifar10", 35_746_307),  # google/ddpm-cifar10-32's UNet2DModel has exactly this many
        ("small", 6_472_195),
        ("tiny", 1_112_801),
    ],
)
def test_preset_parameter_counts(name, count):
    assert n_params(PRESETS[name]) == count


def test_preset_overrides_and_unknown_name():
    assert preset("tiny", in_channels=3).in_channels == 3
    assert PRESETS["tiny"].in_channels == 1  # the preset itself is untouched
    with pytest.raises(ValueError, match=r"unknown UNet preset 'huge'; expected one of ddpm-cifar10"):
        preset("huge")


@pytest.mark.parametrize("size", [(16, 16), (8, 24), (32, 8), (4, 4)])
@pytest.mark.parametrize("out_channels", [None, 6])
def test_output_shape_any_divisible_size(size, out_channels):
    model = UNet(tiny(out_channels=out_channels)).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        y = model(x, torch.tensor([1, 500]))
    assert y.shape == (2, out_channels or 3, *size)
    assert y.dtype == x.dtype and torch.isfinite(y).all()


def test_scalar_timestep_broadcasts_like_a_batch_of_equal_timesteps():
    model = UNet(tiny()).eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x, 7), model(x, torch.tensor([7, 7, 7])))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"time_conditioning": "scale_shift"},
        {"resample": "resblock"},
        {"num_classes": 4},
        {"mid_attention": False, "head_channels": None, "num_heads": 2},
    ],
)
def test_every_parameter_gets_a_gradient(overrides):
    model = UNet(tiny(**overrides))
    labels = torch.tensor([0, 4]) if overrides.get("num_classes") else None
    model(torch.randn(2, 3, 8, 8), torch.tensor([10, 900]), labels).square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_class_labels_change_the_output_and_none_means_the_null_label():
    model = UNet(tiny(num_classes=3)).eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 5])
    with torch.no_grad():
        null = model(x, t, torch.tensor([3, 3]))  # label num_classes is the reserved null label
        torch.testing.assert_close(model(x, t), null)
        assert not torch.allclose(model(x, t, torch.tensor([0, 1])), null)
    assert model.class_embed.num_embeddings == 4


def test_save_load_round_trip_gives_identical_output(tmp_path):
    config = tiny(time_conditioning="scale_shift", num_classes=2, sample_size=(8, 16))
    model = UNet(config).eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "m" / "config.json").read_text())["sample_size"] == [8, 16]
    loaded = UNet.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == config
    x, t = torch.randn(2, 3, 8, 16), torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), model(x, t), rtol=0, atol=0)


def test_config_dict_round_trip_and_unknown_field():
    config = PRESETS["ddpm-cifar10"]
    assert UNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=r"unknown UNetConfig field\(s\) \['chanels'\]"):
        UNetConfig.from_dict({"chanels": 3})


def test_wrong_input_channels_is_a_clear_error():
    with pytest.raises(ValueError, match="sample has 1 channels but the model expects 3"):
        UNet(tiny())(torch.randn(1, 1, 8, 8), torch.tensor([0]))


@pytest.mark.parametrize("size", [(10, 8), (8, 6), (3, 3)])
def test_indivisible_size_is_a_clear_error(size):
    with pytest.raises(ValueError, match=rf"image size {size[0]}x{size[1]} is not divisible .* factor 4"):
        UNet(tiny())(torch.randn(1, 3, *size), torch.tensor([0]))


def test_wrong_timestep_shape_and_stray_labels_are_clear_errors():
    model = UNet(tiny())
    with pytest.raises(ValueError, match=r"timesteps must have shape \(2,\) or be a scalar, got \(3,\)"):
        model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="class_labels were given but the model is unconditional"):
        model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"time_conditioning": "film"},
            r"unknown time_conditioning 'film'; expected one of 'additive', 'scale_shift'",
        ),
        (
            {"resample": "pixelshuffle"},
            r"unknown resample 'pixelshuffle'; expected one of 'conv', 'resblock'",
        ),
        ({"downsample_padding": 2}, r"unknown downsample_padding 2; expected one of 0, 1"),
        ({"norm_groups": 5}, r"norm_groups=5 must divide every level's channels"),
        ({"attention_levels": (3,)}, r"attention_levels \(3,\) must be level indices in 0..2"),
        ({"head_channels": 12}, r"head_channels=12 must divide"),
        ({"in_channels": 0}, r"in_channels must be a positive integer, got 0"),
        ({"channel_mult": ()}, r"channel_mult must be positive integers"),
        (
            {"sample_size": (18, 16)},
            r"sample_size \(18, 16\) must be \(height, width\), each divisible by .* 4",
        ),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"num_classes": 0}, r"num_classes must be a positive integer or None, got 0"),
    ],
)
def test_bad_config_values_name_the_value_and_the_choices(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_mismatched_weights_are_refused_by_name(tmp_path):
    UNet(tiny()).save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["base_channels"] = 32
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError,
        match=r"weight time_embed.linear_1.weight has shape \(64, 16\) but the config needs \(128, 32\)",
    ):
        UNet.from_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match=r"model directory .*nowhere not found"):
        UNet.from_pretrained(tmp_path / "nowhere")


@pytest.mark.slow
def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = UNet(dataclasses.replace(tiny(), attention_levels=(), mid_attention=True))
    x = torch.randn(4, 3, 8, 8)
    t = torch.tensor([10, 200, 500, 900])
    target = torch.randn(4, 3, 8, 8)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = None
    for _ in range(300):
        loss = (model(x, t) - target).square().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 0.8 and loss.item() < 0.02 * first


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = UNet(tiny(num_classes=2))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 700])

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(x, t).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.gradient_checkpointing = True
    checkpointed = grads()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = UNet(tiny()).eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        # Inductor fuses and reorders float32 operations.
        torch.testing.assert_close(torch.compile(model)(x, t), model(x, t), rtol=1e-4, atol=1e-5)
