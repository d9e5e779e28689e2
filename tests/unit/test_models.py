import pytest
import torch

from dae.models import create_model, list_models, model_defaults


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("hw", [(28, 28), (29, 31), (17, 40), (5, 7)])
def test_any_size_and_channels(name, channels, hw):
    torch.manual_seed(0)
    model = create_model(name, channels=channels).eval()
    x = torch.rand(2, channels, *hw)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    assert y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("name", list_models())
def test_trains_one_step(name):
    model = create_model(name, channels=1)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(4, 1, 16, 16)
    loss = torch.nn.functional.mse_loss(model(x), x)
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
