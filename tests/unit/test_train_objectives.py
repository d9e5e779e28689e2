"""The self-supervised objectives inside the train loop's pieces (no Ray): each trains a tiny DnCNN on
a few real MNIST digits from noisy inputs alone and beats the noisy input; the step never reads the
clean images; their inputs come from (seed, id, epoch). The objectives' arithmetic is in
test_objectives.py."""

import dataclasses

import numpy as np
import pytest
import torch

from dae.train import (
    TrainConfig,
    batches,
    check_config,
    load_train,
    load_validation,
    make_objective,
    objective_inputs,
    train_one_epoch,
    validate,
)

from . import test_train_loop
from .test_train_loop import FakeIterator, loop_config, setup

digits = test_train_loop.digits  # that module's fixture: 64 real MNIST digits

CFG = TrainConfig(data="unused", model="dncnn", model_kwargs={"depth": 4, "width": 16}, noise="awgn:60", lr=3e-3,
                  batch_size=16, epochs=8, schedule="constant", seed=0, run_name="unit", n2v_fraction=0.05)


@pytest.mark.parametrize("objective", ["n2n", "nb2nb", "n2v"])
def test_each_objective_learns_from_noisy_images_alone(digits, objective):
    images, ids = digits
    torch.set_num_threads(1)
    cfg = dataclasses.replace(CFG, objective=objective)
    data = load_train(FakeIterator(images, ids), loop_config(cfg))
    model, opt, sched = setup(cfg)
    for epoch in range(cfg.epochs):
        step = make_objective(cfg, epoch)
        # the step gets NaN for the clean images: it must never read them
        loader = ((torch.full_like(c, float("nan")), n, s, e) for c, n, s, e in batches(data, cfg, epoch, 0, 16))
        stats = train_one_epoch(model, loader, opt, sched, step)
        assert np.isfinite(stats["train_loss"])
    row = validate(model, load_validation(FakeIterator(images[:32], ids[:32]), cfg))
    assert row["val_psnr"] > row["noisy_psnr"] + 3, row


def test_objective_inputs_come_from_seed_id_and_epoch(digits):
    images, ids = digits
    for objective, key in (("n2n", "target"), ("nb2nb", "choices"), ("n2v", "mask")):
        cfg = dataclasses.replace(CFG, objective=objective)
        whole = objective_inputs(cfg, images[:8], ids[:8], 3)[key]
        parts = [objective_inputs(cfg, images[i:i + 1], ids[i:i + 1], 3)[key] for i in (5, 2)]
        assert torch.equal(whole[5], parts[0][0]) and torch.equal(whole[2], parts[1][0])  # not batch-bound
        assert not torch.equal(whole, objective_inputs(cfg, images[:8], ids[:8], 4)[key])  # fresh each epoch
    n2n = objective_inputs(dataclasses.replace(CFG, objective="n2n"), images[:4], ids[:4], 0)["target"]
    noisy = next(batches(load_train(FakeIterator(images[:4], ids[:4]), loop_config(CFG, train_rows=4)), CFG, 0, 0, 4))
    clean, first = noisy[0], noisy[1]
    a, b = (first - clean).flatten(), (n2n - clean).flatten()
    assert abs(float(a.std()) - float(b.std())) < 0.02 and abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.1
    # the same level, an independent draw


@pytest.mark.parametrize("changes, says", [
    ({"objective": "nb2nb", "loss": "l1"}, "nb2nb is defined with the MSE loss"),
    ({"objective": "n2v", "n2v_fraction": 0.0}, "n2v-fraction must be in"),
    ({"objective": "n2v", "n2v_channels": "some"}, "valid: independent, joint"),
    ({"objective": "byol"}, "valid"),
    ({"objective": "nb2nb", "objective_kwargs": {"gamma": -1}}, "--objective-kwargs gamma must be >= 0"),
    ({"objective": "n2v", "objective_kwargs": {"gama": 1}},
     r"\['gama'\] for objective 'n2v'; valid: fraction, channels"),
    ({"objective": "supervised", "objective_kwargs": {"gamma": 1}}, "for objective 'supervised'; valid: average"),
    # the older flags are checked whatever the objective, as they always were
    ({"objective": "supervised", "nb2nb_gamma": -1.0}, "--nb2nb-gamma must be >= 0, got -1"),
])
def test_bad_objective_settings_fail_clearly(changes, says):
    with pytest.raises(ValueError, match=says):
        check_config(dataclasses.replace(CFG, **changes))


def test_objective_kwargs_override_the_older_flags(digits):
    """--nb2nb-gamma, --n2v-fraction and --n2v-channels give the objective's options their defaults;
    --objective-kwargs overrides them, key by key: the same objective either way."""
    from dae.train import objective_of

    images, ids = digits
    flags = dataclasses.replace(CFG, objective="n2v", n2v_fraction=0.1, n2v_channels="joint")
    kwargs = dataclasses.replace(CFG, objective="n2v", objective_kwargs={"fraction": 0.1, "channels": "joint"})
    assert objective_of(flags).kwargs == objective_of(kwargs).kwargs == {"fraction": 0.1, "channels": "joint"}
    for key in ("mask", "source"):
        assert torch.equal(objective_inputs(flags, images[:4], ids[:4], 2)[key],
                           objective_inputs(kwargs, images[:4], ids[:4], 2)[key])
    both = dataclasses.replace(flags, objective_kwargs={"fraction": 0.2})
    assert objective_of(check_config(both)).kwargs == {"fraction": 0.2, "channels": "joint"}
    assert objective_of(dataclasses.replace(CFG, objective="nb2nb")).kwargs == {"gamma": 2.0}
    gamma = dataclasses.replace(CFG, objective="nb2nb", objective_kwargs={"gamma": 0.5})
    assert objective_of(gamma).kwargs == {"gamma": 0.5}
    assert objective_of(dataclasses.replace(CFG, objective="nb2nb", nb2nb_gamma=0.5)).kwargs == {"gamma": 0.5}


def test_a_new_objective_is_one_class_the_train_pieces_take(digits, monkeypatch):
    """A plug-in objective (here: supervised on a random half of the pixels of each image): once
    registered, check_config takes it with its options and its checks, the batches carry what it
    draws from (seed, id, epoch) and the loop minimises its loss. No file of dae.train knows it."""
    from dae.noise import image_rng
    from dae.objectives import Objective, Option, registry
    from dae.train import check_noisy_only

    class Masked(Objective):
        name, title, needs, losses = "masked", "masked supervision", "clean", ("mse", "l1")
        options = {"keep": Option(0.5, "the pixels each step learns from", valid=lambda v: 0 < v <= 1,
                                  rule="must be in (0, 1]")}

        def draw(self, clean, ids, seed, epoch, target=None):
            keep = [image_rng(seed, f"masked:{i}", epoch).random(clean.shape[1:3]) < self.kwargs["keep"] for i in ids]
            return {"keep": torch.from_numpy(np.stack(keep)[:, None])}

        def train_loss(self, run, clean, noisy, sigma, extra, epoch):
            m = extra["keep"].to(clean.dtype)
            return ((run(noisy, sigma) - clean) ** 2 * m).sum() / m.sum().clamp_min(1)

    monkeypatch.setitem(registry._REGISTRY, "masked", Masked)
    images, ids = digits
    cfg = check_config(dataclasses.replace(CFG, objective="masked", objective_kwargs={"keep": 0.7}, epochs=3))
    with pytest.raises(ValueError, match="--objective masked is defined with the MSE or L1 loss, got --loss bce"):
        check_config(dataclasses.replace(cfg, loss="bce"))
    with pytest.raises(ValueError, match=r"--objective-kwargs keep must be in \(0, 1\], got 0"):
        check_config(dataclasses.replace(cfg, objective_kwargs={"keep": 0}))
    with pytest.raises(ValueError, match="--objective masked needs clean targets"):
        check_noisy_only(dataclasses.replace(cfg, noise="none"), True, True)
    data = load_train(FakeIterator(images, ids), loop_config(cfg))
    *_, extra = next(batches(data, cfg, 0, 0, 16))
    assert extra["keep"].shape == (16, 1, 28, 28) and 0.6 < float(extra["keep"].float().mean()) < 0.8
    torch.set_num_threads(1)
    model, opt, sched = setup(cfg)
    losses = [train_one_epoch(model, batches(data, cfg, e, 0, 16), opt, sched, make_objective(cfg, e))["train_loss"]
              for e in range(cfg.epochs)]
    assert losses[-1] < losses[0], losses


# ---------------------------------------------------------------- noisy-only data (prepare --noisy)


def test_noisy_only_training_and_validation_without_clean_images(digits):
    """Digits stored already noisy (awgn 60, as a noisy-only collection holds them), trained with
    --noise none and nb2nb: validation reports the held-out loss and the residual's std (no PSNR: there
    is nothing to score against); the loss falls, the residual's std comes near the real sigma and the
    model beats the noisy input against the clean digits, which only this test knows."""
    from dae.metrics import psnr
    from dae.noise import add_noise_batch

    images, ids = digits
    stored = add_noise_batch(images, ids, "awgn:60", 99, 0)
    torch.set_num_threads(1)
    cfg = dataclasses.replace(CFG, objective="nb2nb", noise="none")
    val = load_validation(FakeIterator(stored[:32], ids[:32]), cfg, clean=False)
    assert val.clean is None and np.isnan(val.noisy_psnr)
    # the images as stored are the inputs (ids are in order already: d/000...)
    assert torch.equal(val.noisy, torch.from_numpy(stored[:32].transpose(0, 3, 1, 2).copy()))

    class Identity(torch.nn.Module):
        def forward(self, x, sigma=None):
            return x

    ident = validate(Identity(), val, cfg=cfg)
    assert set(ident) == {"val_loss", "residual_std", "output_spread"} and ident["residual_std"] == 0.0
    data = load_train(FakeIterator(stored, ids), loop_config(cfg))
    model, opt, sched = setup(cfg)
    before = validate(model, val, cfg=cfg)
    for epoch in range(cfg.epochs):
        train_one_epoch(model, batches(data, cfg, epoch, 0, 16), opt, sched, make_objective(cfg, epoch))
    after = validate(model, val, cfg=cfg)
    assert after["val_loss"] < before["val_loss"], (before, after)
    assert abs(after["residual_std"] * 255 - 60) < 15, after
    with torch.no_grad():
        out = model(torch.from_numpy(stored[:32].transpose(0, 3, 1, 2).copy()), torch.zeros(32)).clamp(0, 1)
    clean = torch.from_numpy(images[:32].transpose(0, 3, 1, 2).copy())
    noisy = torch.from_numpy(np.clip(stored[:32], 0, 1).transpose(0, 3, 1, 2).copy())
    assert float(psnr(out, clean).mean()) > float(psnr(noisy, clean).mean()) + 3


@pytest.mark.parametrize("objective, noise, train_noisy, says", [
    ("supervised", "none", True, "supervised needs clean targets; train with --objective nb2nb or n2v"),
    ("n2n", "none", True, "n2n needs two noisy images of each scene: give the second ones with --pair-data"),
    ("nb2nb", "awgn:25", True, "pass --noise none"),
    ("nb2nb", "none", False, "--noise none trains on the images as they are"),
])
def test_noisy_only_data_refuses_what_needs_clean_images(objective, noise, train_noisy, says):
    from dae.train import check_noisy_only

    with pytest.raises(ValueError, match=says):
        check_noisy_only(dataclasses.replace(CFG, objective=objective, noise=noise), train_noisy, train_noisy)
    check_noisy_only(dataclasses.replace(CFG, objective="nb2nb", noise="none"), True, True)  # the way that works
    check_noisy_only(dataclasses.replace(CFG, objective="supervised"), False, False)


def test_n2n_with_real_pairs_learns_from_two_noisy_copies(digits):
    """--pair-data: two stored noisy copies of each digit (independent draws, as two exposures would
    be), n2n with --noise none. Crops cut both copies alike; the ids must match; the model beats the
    noisy input against the clean digits, which only this test knows."""
    from dae.metrics import psnr
    from dae.noise import add_noise_batch
    from dae.train import check_config
    from dae.train.data import _collect_pairs

    images, ids = digits
    first, second = (add_noise_batch(images, ids, "awgn:60", s, 0) for s in (1, 2))
    cfg = check_config(dataclasses.replace(CFG, objective="n2n", noise="none", pair_data="pairs"))
    with pytest.raises(ValueError, match="same ids as --data"):
        _collect_pairs(FakeIterator(first, ids), FakeIterator(second[1:], ids[1:]))
    stacked, got_ids = _collect_pairs(FakeIterator(first, ids), FakeIterator(second, ids))
    assert stacked.shape == (64, 28, 28, 2) and list(got_ids) == sorted(ids)
    cropped = dataclasses.replace(cfg, crop=16, crops_per_image=2)
    data = load_train(FakeIterator(first, ids), loop_config(cropped), pair_it=FakeIterator(second, ids))
    _, noisy, _, extra = next(batches(data, cropped, 0, 0, 16))
    # the same window of both copies: they differ by two independent noise draws only
    assert abs(float((extra["target"] - noisy).std()) - np.sqrt(2) * 60 / 255) < 0.03
    torch.set_num_threads(1)
    data = load_train(FakeIterator(first, ids), loop_config(cfg), pair_it=FakeIterator(second, ids))
    model, opt, sched = setup(cfg)
    for epoch in range(cfg.epochs):
        train_one_epoch(model, batches(data, cfg, epoch, 0, 16), opt, sched, make_objective(cfg, epoch))
    x = torch.from_numpy(first[:32].transpose(0, 3, 1, 2).copy())
    clean = torch.from_numpy(images[:32].transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        out = model(x, torch.zeros(32)).clamp(0, 1)
    assert float(psnr(out, clean).mean()) > float(psnr(x.clamp(0, 1), clean).mean()) + 3
    val = load_validation(FakeIterator(first[:16], ids[:16]), cfg, clean=False, pair_it=FakeIterator(second[:16],
                                                                                                      ids[:16]))
    row = validate(model, val, cfg=cfg)
    assert 0 < row["val_loss"] < float(((val.noisy[:, :1] - val.noisy[:, 1:]) ** 2).mean())  # beats copy-as-is
