import numpy as np
import pytest
import torch
from torch import nn

from dae.objectives import (OBJECTIVES, n2n_loss, n2v_apply, n2v_loss, n2v_masks, nb2nb_choices, nb2nb_gamma,
                            nb2nb_loss, nb2nb_subsample, supervised_loss)


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
