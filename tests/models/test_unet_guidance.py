"""The guidance embedding of a guidance-distilled student: w as an input, added to the time embedding."""

import pytest
import torch

from diffusion.models import UNet, UNetConfig


def tiny(**overrides) -> UNetConfig:
    base = dict(sample_size=(16, 16), base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1)
    return UNetConfig(**(base | dict(attention_levels=(1,), norm_groups=8, head_channels=8) | overrides))


def n_params(config: UNetConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in UNet(config).parameters())


def guided(**overrides) -> UNetConfig:
    return tiny(num_classes=3, guidance_embedding=True, **overrides)


def inputs(n: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 16, 16, generator=g), torch.tensor([999, 500, 10, 0]), torch.tensor([0, 1, 2, 3])


def test_the_embedding_adds_one_mlp_and_leaves_the_other_initial_weights_alone():
    torch.manual_seed(0)
    plain = UNet(tiny(num_classes=3))
    torch.manual_seed(0)
    student = UNet(guided())
    width = 4 * 16  # time_embed_dim
    assert n_params(guided()) - n_params(tiny(num_classes=3)) == 16 * width + width + width * width + width
    for name, tensor in plain.state_dict().items():
        assert torch.equal(student.state_dict()[name], tensor), name


def test_a_student_made_from_its_teacher_predicts_as_the_teacher_at_every_w():
    torch.manual_seed(0)
    teacher = UNet(tiny(num_classes=3)).eval()
    student = UNet(guided()).eval()
    student.load_state_dict(teacher.state_dict(), strict=False)  # the guidance MLP keeps its zero last layer
    x, t, labels = inputs()
    with torch.no_grad():
        expected = teacher(x, t, labels)
        for w in (0.0, 1.0, 3.0, torch.tensor([1.0, 1.5, 2.0, 4.0])):
            assert torch.equal(student(x, t, labels, guidance_scale=w), expected)


def test_outputs_vary_with_w_once_the_embedding_is_trained():
    torch.manual_seed(0)
    student = UNet(guided()).eval()
    torch.nn.init.normal_(student.guidance_embed.linear_2.weight, std=0.1)
    x, t, labels = inputs()
    with torch.no_grad():
        at = {w: student(x, t, labels, guidance_scale=w) for w in (1.0, 1.5, 2.0)}
        per_sample = student(x, t, labels, guidance_scale=torch.tensor([1.0, 1.5, 2.0, 2.0]))
    assert (at[1.0] - at[2.0]).abs().mean() > 1e-3
    assert (at[1.5] - at[2.0]).abs().mean() > 1e-4
    assert torch.equal(student(x, t, labels), at[1.0])  # None means w = 1
    torch.testing.assert_close(per_sample[0], at[1.0][0])
    torch.testing.assert_close(per_sample[1], at[1.5][1])
    torch.testing.assert_close(per_sample[3], at[2.0][3])


def test_w_for_a_model_without_the_embedding_is_a_clear_error():
    x, t, labels = inputs()
    with pytest.raises(ValueError, match="guidance_scale was given but the model has no guidance embedding"):
        UNet(tiny(num_classes=3))(x, t, labels, guidance_scale=1.5)


def test_the_field_round_trips_and_an_older_config_reads_as_false(tmp_path):
    config = guided()
    assert UNetConfig.from_dict(config.to_dict()) == config
    older = tiny().to_dict()
    assert "guidance_embedding" not in older  # written only when set: earlier versions read the rest
    assert UNetConfig.from_dict(older).guidance_embedding is False and config.to_dict()["guidance_embedding"]
    student = UNet(guided())
    torch.nn.init.normal_(student.guidance_embed.linear_2.weight, std=0.1)
    student.save_pretrained(tmp_path)
    loaded = UNet.from_pretrained(tmp_path)
    x, t, labels = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, t, labels, guidance_scale=2.0), student(x, t, labels, guidance_scale=2.0))
