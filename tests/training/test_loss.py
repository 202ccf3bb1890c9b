import pytest
import torch

from diffusion.training.loss import diffusion_loss, snr_weights


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
