import numpy as np
import pytest
import torch
from torch import nn

from dae.objectives import (
    LOSSES,
    N2V_FRACTION,
    OBJECTIVES,
    Objective,
    get_objective,
    list_objectives,
    n2n_loss,
    n2v_apply,
    n2v_loss,
    n2v_masks,
    nb2nb_choices,
    nb2nb_gamma,
    nb2nb_loss,
    nb2nb_subsample,
    register_objective,
    supervised_loss,
)


class Half(nn.Module):
    """f(x) = 0.5 x as a bias-free 1x1 conv (so it has a gradient); records what it was called on."""

    def __init__(self, channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(0.5 * torch.eye(channels).reshape(channels, channels, 1, 1))
        self.calls = []

    def forward(self, x, sigma=None):
        out = self.conv(x)
        self.calls.append((tuple(x.shape), out.requires_grad))
        return out


def _sigma(b):
    return torch.full((b,), 0.1)


def test_objective_names():
    assert OBJECTIVES == ("supervised", "n2n", "nb2nb", "n2v")


def test_supervised_and_n2n_are_mse():
    noisy = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[0.0, 2.0], [1.0, 1.0]]]])
    # 0.5 * noisy = [.5, 1, 1.5, 2]; errors .5, -1, .5, 1 -> (.25 + 1 + .25 + 1) / 4
    for loss in (supervised_loss, n2n_loss):
        assert loss(Half(), noisy, _sigma(1), target).item() == pytest.approx(0.625)


def test_supervised_psnr_average_is_the_mean_log_mse_of_the_images():
    noisy = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.2, 0.2], [0.2, 0.2]]]])
    target = torch.tensor([[[[0.0, 2.0], [1.0, 1.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    run = Half()
    plain = get_objective("supervised")(loss="mse")
    psnr = get_objective("supervised")(loss="mse", average="psnr")
    # image 0: MSE 0.625 (above); image 1: 0.5 * 0.2 = 0.1 everywhere -> MSE 0.01
    assert plain.train_loss(run, target, noisy, _sigma(2), {}, 0).item() == pytest.approx((0.625 + 0.01) / 2)
    assert psnr.train_loss(run, target, noisy, _sigma(2), {}, 0).item() == pytest.approx(
        (np.log(0.625) + np.log(0.01)) / 2, rel=1e-5)
    # the gradient weighs each image by 1 / its MSE: the clean-ish image 1 now counts 62.5x image 0
    with pytest.raises(ValueError, match="average: psnr needs --loss mse, got --loss l1"):
        get_objective("supervised")(loss="l1", average="psnr")
    with pytest.raises(ValueError, match="unknown --objective-kwargs average 'mean'; valid: batch, psnr"):
        get_objective("supervised")(loss="mse", average="mean")


# ---------------------------------------------------------------- Neighbor2Neighbor


def test_nb2nb_choices_are_adjacent_pairs():
    ch = nb2nb_choices(["a", "b", "c"], seed=0, epoch=0, h=9, w=12)  # odd h: last row left out
    assert ch.dtype == np.int8 and ch.shape == (3, 2, 4, 6)
    g1, g2 = ch[:, 0].astype(int), ch[:, 1].astype(int)
    assert ch.min() >= 0 and ch.max() <= 3
    assert (g1 != g2).all()
    assert not np.isin(g1 * 4 + g2, [0 * 4 + 3, 3 * 4 + 0, 1 * 4 + 2, 2 * 4 + 1]).any()  # diagonal pairs


def test_nb2nb_choices_uniform_over_the_eight_ordered_pairs():
    ch = nb2nb_choices(["big"], seed=3, epoch=1, h=256, w=256).astype(int)
    pairs, counts = np.unique(ch[:, 0] * 4 + ch[:, 1], return_counts=True)
    assert sorted(pairs.tolist()) == [1, 2, 4, 7, 8, 11, 13, 14]  # (0,1) (0,2) (1,0) (1,3) (2,0) (2,3) (3,1) (3,2)
    expected = 128 * 128 / 8
    assert np.all(np.abs(counts - expected) < 0.1 * expected), counts


def test_nb2nb_choices_depend_on_seed_id_epoch_only():
    a = nb2nb_choices(["x", "y", "z"], seed=1, epoch=2, h=8, w=8)
    b = nb2nb_choices(["z", "q", "x"], seed=1, epoch=2, h=8, w=8)
    assert (a[0] == b[2]).all() and (a[2] == b[0]).all()
    assert (nb2nb_choices(["x"], seed=1, epoch=2, h=8, w=8)[0] == a[0]).all()
    assert not (nb2nb_choices(["x"], seed=1, epoch=3, h=8, w=8)[0] == a[0]).all()
    assert not (nb2nb_choices(["x"], seed=2, epoch=2, h=8, w=8)[0] == a[0]).all()


def test_nb2nb_subsample_by_hand():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)  # cells: [0 1 4 5] [2 3 6 7] / [8 9 12 13] [10 11 14 15]
    choice = np.array([[[0, 3], [1, 2]]])
    assert nb2nb_subsample(x, choice).tolist() == [[[[0.0, 7.0], [9.0, 14.0]]]]
    # channels follow the same pixel; an odd last row / column is left out
    x2 = torch.arange(2 * 5 * 5.0).reshape(1, 2, 5, 5)
    sub = nb2nb_subsample(x2, torch.tensor([[[3, 0], [2, 1]]]))
    assert sub.shape == (1, 2, 2, 2)
    assert sub[0, 0].tolist() == [[6.0, 2.0], [15.0, 13.0]]
    assert (sub[0, 1] == sub[0, 0] + 25).all()


def test_nb2nb_loss_by_hand_and_no_grad_through_full_pass():
    noisy = torch.tensor([[[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]]])  # cells [1 2 5 6], [3 4 7 8]
    choices = np.array([[[[0, 3]], [[1, 2]]]], np.int8)  # g1 = [1, 8], g2 = [2, 7]
    # out = [.5, 4]; out - g2 = [-1.5, -3]               -> rec = (2.25 + 9) / 2 = 5.625
    # full = noisy / 2: g1f - g2f = [.5 - 1, 4 - 3.5] = [-.5, .5]
    # out - g2 - (g1f - g2f) = [-1, -3.5]                -> reg = (1 + 12.25) / 2 = 6.625
    model = Half()
    loss, parts = nb2nb_loss(model, noisy, _sigma(1), choices, gamma=2.0)
    assert {k: v.item() for k, v in parts.items()} == pytest.approx({"rec": 5.625, "reg": 6.625})
    assert loss.item() == pytest.approx(5.625 + 2 * 6.625)
    assert model.calls == [((1, 1, 1, 2), True), ((1, 1, 2, 4), False)]  # full image under no_grad
    # d/dw with the gap held fixed: mean(2 (out - g2) g1) + 2 mean(2 (out - g2 - gap) g1)
    #   = (-3 - 48) / 2 + 2 * (-2 - 56) / 2 = -25.5 - 58   (were the gap differentiated it would be -78.5)
    loss.backward()
    assert model.conv.weight.grad.item() == pytest.approx(-83.5)
    model.zero_grad()
    loss0, _ = nb2nb_loss(model, noisy, _sigma(1), torch.as_tensor(choices), gamma=0.0)
    loss0.backward()
    assert loss0.item() == pytest.approx(5.625) and model.conv.weight.grad.item() == pytest.approx(-25.5)


def test_nb2nb_gamma_ramp():
    assert [nb2nb_gamma(e, 10) for e in (0, 5, 9)] == pytest.approx([0.0, 1.0, 1.8])
    assert nb2nb_gamma(5, 10, max_gamma=1.0) == pytest.approx(0.5)


# ---------------------------------------------------------------- Noise2Void


@pytest.mark.parametrize("h, w, fraction, radius, channels",
                         [(20, 30, 0.1, 2, 1), (17, 9, 0.3, 1, 3), (40, 40, 0.002, 2, 3)])
def test_n2v_masks_counts_and_windows(h, w, fraction, radius, channels):
    mask, source = n2v_masks(["a", "b"], seed=0, epoch=0, h=h, w=w, fraction=fraction, radius=radius,
                             channels=channels)
    assert mask.dtype == bool and mask.shape == (2, channels, h, w)
    assert source.dtype == np.int64 and source.shape == (2, channels, h, w, 2)
    assert (mask.sum((2, 3)) == max(1, round(fraction * h * w))).all()
    for c in range(channels):
        rows, cols = np.nonzero(mask[1, c])
        sr, sc = source[1, c, rows, cols].T
        assert ((0 <= sr) & (sr < h) & (0 <= sc) & (sc < w)).all()
        assert ((np.abs(sr - rows) <= radius) & (np.abs(sc - cols) <= radius)).all()
        assert ((sr != rows) | (sc != cols)).all()
        grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1)
        assert (source[1, c][~mask[1, c]] == grid[~mask[1, c]]).all()  # unmasked: their own pixel


def test_n2v_masks_per_channel_or_joint():
    kw = dict(seed=0, epoch=0, h=32, w=32, fraction=0.05)
    own, own_src = n2v_masks(["a"], channels=3, **kw)
    joint, joint_src = n2v_masks(["a"], channels=3, joint=True, **kw)
    gray, gray_src = n2v_masks(["a"], channels=1, **kw)
    assert not (own[0, 0] == own[0, 1]).all() and not (own[0, 1] == own[0, 2]).all()  # a draw per channel
    assert (joint[0] == joint[0, :1]).all() and (joint_src[0] == joint_src[0, :1]).all()  # one for all
    # channel 0 draws first from the image's stream: gray, joint and per-channel agree on it
    assert (own[0, 0] == gray[0, 0]).all() and (joint[0, 0] == gray[0, 0]).all()
    assert (own_src[0, 0] == gray_src[0, 0]).all()


def test_n2v_masks_at_the_corners():
    # 3x3, every pixel masked: each source must be another pixel of the image, all 8 reachable
    seen = set()
    for epoch in range(60):
        mask, source = n2v_masks(["c"], seed=0, epoch=epoch, h=3, w=3, fraction=1.0, radius=2)
        assert mask.all()
        grid = np.stack(np.meshgrid(np.arange(3), np.arange(3), indexing="ij"), -1)
        assert ((source >= 0) & (source <= 2)).all()
        assert (source[0, 0] != grid).any(-1).all()
        seen.add(tuple(source[0, 0, 0, 0]))
    assert seen == {(r, c) for r in range(3) for c in range(3)} - {(0, 0)}
    mask, source = n2v_masks(["d"], seed=0, epoch=0, h=1, w=2, fraction=1.0)
    assert source[0, 0, 0].tolist() == [[0, 1], [0, 0]]
    with pytest.raises(ValueError):
        n2v_masks(["e"], seed=0, epoch=0, h=1, w=1)


def test_n2v_masks_depend_on_seed_id_epoch_only():
    kw = dict(h=16, w=16, fraction=0.05)
    m1, s1 = n2v_masks(["x", "y"], seed=1, epoch=2, **kw)
    m2, s2 = n2v_masks(["q", "r", "x"], seed=1, epoch=2, **kw)
    assert (m1[0] == m2[2]).all() and (s1[0] == s2[2]).all()
    assert not (n2v_masks(["x"], seed=1, epoch=3, **kw)[0][0] == m1[0]).all()


@pytest.mark.parametrize("joint", [False, True])
def test_n2v_apply_replaces_only_masked_values(joint):
    noisy = torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(0))
    mask, source = n2v_masks(["a", "b"], seed=0, epoch=0, h=6, w=5, fraction=0.2, channels=3, joint=joint)
    out = n2v_apply(noisy, mask, source)
    m = torch.as_tensor(mask)
    assert (out[~m] == noisy[~m]).all()
    for b, ch, r, c in zip(*np.nonzero(mask)):
        sr, sc = source[b, ch, r, c]
        assert out[b, ch, r, c] == noisy[b, ch, sr, sc]  # the same channel of the source pixel
        assert out[b, ch, r, c] != noisy[b, ch, r, c]  # random values: a real replacement
    assert (noisy == torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(0))).all()  # not in place


def test_n2v_loss_by_hand_and_only_masked_pixels_count():
    noisy = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]]])
    mask = np.array([[[[False, True], [False, False]]] * 2])  # (1, 2, 2, 2): pixel (0, 1), both channels
    source = np.array([[[[[0, 0], [1, 0]], [[1, 0], [1, 1]]]] * 2])  # (0, 1) takes (1, 0)'s values
    # input at (0, 1): [3, 30]; output 0.5 x: [1.5, 15]; errors vs [2, 20]: .25, 25 -> / 2 masked values
    assert n2v_loss(Half(2), noisy, _sigma(1), mask, source).item() == pytest.approx(12.625)
    # only channel 1 masked: channel 0 keeps its own value 2 at (0, 1); output 15 vs 20 -> 25 / 1 value
    one = mask.copy()
    one[0, 0] = False
    assert n2v_loss(Half(2), noisy, _sigma(1), one, source).item() == pytest.approx(25.0)

    class Scrambled(Half):  # same as Half at the masked pixel, garbage elsewhere
        def forward(self, x, sigma=None):
            return super().forward(x, sigma) + 100.0 * torch.as_tensor(~mask)

    assert n2v_loss(Scrambled(2), noisy, _sigma(1), torch.as_tensor(mask), torch.as_tensor(source)).item() \
        == pytest.approx(12.625)


# ---------------------------------------------------------------- the registry: what each objective declares


def test_the_registry_lists_the_builtins_first_and_names_unknown_ones():
    assert list_objectives()[:4] == list(OBJECTIVES)
    assert [get_objective(n).name for n in OBJECTIVES] == list(OBJECTIVES)
    with pytest.raises(ValueError, match="unknown objective 'byol'; valid: supervised, n2n, nb2nb, n2v"):
        get_objective("byol")


def test_register_objective_refuses_a_taken_name_and_a_nameless_class(monkeypatch):
    from dae.objectives import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the real one stays as it is

    class Again(Objective):
        name = "n2v"

    class Nameless(Objective):
        pass

    with pytest.raises(ValueError, match="objective 'n2v' registered twice"):
        register_objective(Again)
    with pytest.raises(ValueError, match="has no name"):
        register_objective(Nameless)


def test_each_objective_declares_what_a_sample_needs_and_its_losses():
    assert {n: get_objective(n).needs for n in OBJECTIVES} == {"supervised": "clean", "n2n": "pairs",
                                                              "nb2nb": "noisy", "n2v": "noisy"}
    assert get_objective("supervised").losses == get_objective("n2n").losses == LOSSES
    assert get_objective("nb2nb").losses == get_objective("n2v").losses == ("mse",)
    assert {n: {k: o.flag for k, o in get_objective(n).options.items()} for n in OBJECTIVES} == {
        "supervised": {"average": ""}, "n2n": {}, "nb2nb": {"gamma": "nb2nb_gamma"},
        "n2v": {"fraction": "n2v_fraction", "channels": "n2v_channels"}}


def test_options_take_their_defaults_are_cast_and_fail_in_one_line():
    assert get_objective("n2v")().kwargs == {"fraction": N2V_FRACTION, "channels": "independent"}
    gamma = get_objective("nb2nb")(gamma=1).kwargs["gamma"]
    assert gamma == 1.0 and isinstance(gamma, float)  # YAML's 1 is the float option's 1.0
    for make, says in (
            (lambda: get_objective("nb2nb")(gama=1.0), r"unknown argument\(s\) \['gama'\] for objective 'nb2nb'; "
                                                       r"valid: gamma$"),
            (lambda: get_objective("supervised")(gamma=1.0), r"for objective 'supervised'; valid: average$"),
            (lambda: get_objective("n2v")(fraction=1.5), r"^--objective-kwargs fraction must be in \(0, 1\), got 1.5$"),
            (lambda: get_objective("n2v")(channels="both"), r"^unknown --objective-kwargs channels 'both'; valid: "
                                                            r"independent, joint$"),
            (lambda: get_objective("nb2nb")(gamma="big"), r"^--objective-kwargs gamma must be a float, got 'big'$"),
            (lambda: get_objective("nb2nb")(gamma=-1), r"^--objective-kwargs gamma must be >= 0, got -1$"),
            (lambda: get_objective("n2v")(loss="l1"),
             r"^--objective n2v is defined with the MSE loss, got --loss l1$")):
        with pytest.raises(ValueError, match=says):
            make()


def test_each_objective_checks_a_training_setup():
    get_objective("n2n").check_training("l1", "none", pair_data=True)  # real pairs, on the images as they are
    for name, noise in (("nb2nb", "none"), ("n2n", "awgn:25")):
        with pytest.raises(ValueError, match=f"^--pair-data gives Noise2Noise its second noisy images: use it with "
                                             f"--objective n2n and --noise none, got --objective {name} --noise "
                                             f"{noise}$"):
            get_objective(name).check_training("mse", noise, pair_data=True)
    # data with no clean version: the objectives that learn from single noisy images are named
    get_objective("nb2nb").check_noisy_only("D", pair_data=False)
    get_objective("n2n").check_noisy_only("D", pair_data=True)
    with pytest.raises(ValueError, match="^D holds noisy images with no clean version .*--objective supervised "
                                         "needs clean targets; train with --objective nb2nb or n2v"):
        get_objective("supervised").check_noisy_only("D", pair_data=False)
    with pytest.raises(ValueError, match="^D holds single noisy images .*n2n needs two noisy images of each scene"):
        get_objective("n2n").check_noisy_only("D", pair_data=False)


def test_each_objective_draws_from_seed_id_epoch_and_computes_the_module_arithmetic():
    ids = ["a", "b"]
    clean = np.random.default_rng(0).random((2, 6, 8, 3), dtype=np.float32)
    x = torch.from_numpy(clean.transpose(0, 3, 1, 2).copy())
    model, sigma = Half(3), _sigma(2)
    assert get_objective("supervised")().draw(clean, ids, 3, 4) == {}
    nb2nb = get_objective("nb2nb")(epochs=10, gamma=2.0)
    choices = nb2nb.draw(clean, ids, 3, 4)["choices"]
    assert np.array_equal(choices.numpy(), nb2nb_choices(ids, 3, 4, 6, 8))
    assert nb2nb.train_loss(model, x, x, sigma, {"choices": choices}, 5).item() == pytest.approx(
        nb2nb_loss(model, x, sigma, choices, nb2nb_gamma(5, 10, 2.0))[0].item())
    # the held-out loss is epoch 0's, whose regularizer weight is 0: the reconstruction term alone
    rec = nb2nb_loss(model, x, sigma, choices, 1.0)[1]["rec"].item()
    assert nb2nb.held_out_loss(model, x, sigma, {"choices": choices}).item() == pytest.approx(rec)
    n2v = get_objective("n2v")(fraction=0.2, channels="joint").draw(clean, ids, 3, 4)
    mask, source = n2v_masks(ids, 3, 4, 6, 8, 0.2, channels=3, joint=True)
    assert np.array_equal(n2v["mask"].numpy(), mask) and np.array_equal(n2v["source"].numpy(), source)
    assert get_objective("n2v")().train_loss(model, x, x, sigma, n2v, 0).item() == pytest.approx(
        n2v_loss(model, x, sigma, mask, source).item())
    pair = clean[::-1].copy()  # real second shots are taken as they are
    assert torch.equal(get_objective("n2n")().draw(clean, ids, 3, 4, target=pair)["target"],
                       torch.from_numpy(pair.transpose(0, 3, 1, 2).copy()))
    # supervised and n2n compute the --loss they are given
    l1 = get_objective("supervised")(loss="l1")
    assert l1.train_loss(model, x, x * 0.1, sigma, {}, 0).item() == pytest.approx(float((0.05 * x - x).abs().mean()))

