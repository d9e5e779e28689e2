import pytest
import torch

from dae.models import create_model, list_models, model_defaults


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("hw", [(28, 28), (29, 31), (17, 40), (5, 7)])
def test_any_size_and_channels(name, channels, hw):
    torch.manual_seed(0)
    model = create_model(name, channels=channels).eval()
    # unclipped noise (awgn) leaves [0, 1]: every model takes it; sigma is ignored unless conditioned
    x = torch.rand(2, channels, *hw) * 1.4 - 0.2
    with torch.no_grad():
        y = model(x, torch.tensor([0.1, 0.2]))
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    assert y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("name", list_models())
def test_trains_one_step(name):
    model = create_model(name, channels=1)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(4, 1, 16, 16)
    loss = torch.nn.functional.mse_loss(model(x, 0.1), x)
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    opt.step()


def test_conv28k_has_exactly_28353_parameters():
    assert sum(p.numel() for p in create_model("conv28k", channels=1).parameters()) == 28353


def test_keras_blog_matches_the_blog_layout():
    # Conv32-pool-Conv32-pool, Conv32-up-Conv32-up, Conv1: the same count as conv28k.
    assert sum(p.numel() for p in create_model("keras_blog", channels=1).parameters()) == 28353


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="known models: .*conv28k.*unet"):
        create_model("resnet9000")


def test_unknown_kwarg_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: depth, width"):
        create_model("dncnn", channels=1, widht=3)
    assert model_defaults("dncnn") == {"depth": 17, "width": 64}


def test_wrong_channel_input_is_a_clear_error():
    with pytest.raises(ValueError, match=r"expects \(N, 1, H, W\)"):
        create_model("unet", channels=1)(torch.rand(1, 3, 8, 8))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("hw", [(64, 64), (33, 47), (5, 7)])
@pytest.mark.parametrize("sigma", [0.0, 5 / 255, 25 / 255, 55 / 255, 0.5])
def test_conditioned_model_any_size_any_sigma(channels, hw, sigma):
    torch.manual_seed(0)
    model = create_model("cunet", channels=channels, width=8).eval()
    assert model.conditioned
    x = torch.rand(3, channels, *hw) + sigma * torch.randn(3, channels, *hw)
    with torch.no_grad():
        y = model(x, sigma)  # one sigma for the batch
        y3 = model(x, torch.full((3,), sigma))  # or one per image
    assert y.shape == x.shape and torch.isfinite(y).all() and 0 <= y.min() and y.max() <= 1
    assert torch.equal(y, y3)


def test_conditioned_model_uses_the_level_per_image():
    torch.manual_seed(0)
    model = create_model("cunet", channels=1, width=8).eval()
    x = torch.rand(1, 1, 16, 16).expand(2, 1, 16, 16)
    with torch.no_grad():
        y = model(x, torch.tensor([0.05, 0.2]))
        alone = model(x[1:], 0.2)
    assert not torch.allclose(y[0], y[1])  # same pixels, other level: another output
    assert torch.allclose(y[1:], alone, atol=1e-6)  # an image's output depends on its own level only


def test_conditioned_model_without_a_level_is_a_clear_error():
    model = create_model("cunet", channels=1, width=8)
    with pytest.raises(ValueError, match=r"conditioned on the noise level: call it as model\(x, sigma\)"):
        model(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="non-finite noise sigma"):
        model(torch.rand(1, 1, 8, 8), float("nan"))
