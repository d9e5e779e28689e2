"""The train loop's pieces without Ray: batches, train_one_epoch, validate, save_checkpoint and
restore on a tiny DnCNN and a few real MNIST digits (a few seconds on 1 CPU)."""

import dataclasses
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from dae import metrics
from dae.checkpoint import load_model
from dae.models import create_model
from dae.noise import add_noise_batch
from dae.train import (
    LoopConfig,
    TrainConfig,
    TrainState,
    batches,
    collapsed,
    format_summary,
    load_train,
    load_validation,
    make_objective,
    make_optimizer,
    make_scheduler,
    restore,
    save_checkpoint,
    train_one_epoch,
    validate,
)
from helpers import REPO, mnist5k_digits

CFG = TrainConfig(data="unused", model="dncnn", model_kwargs={"depth": 3, "width": 8}, noise="gaussian:0.5",
                  lr=0.01, batch_size=16, epochs=3, schedule="constant", seed=0, run_name="unit")


@pytest.fixture(scope="module")
def digits():
    """64 real MNIST digits (N, 28, 28, 1) float32 in [0, 1] and their ids (a skip where they are missing)."""
    x, _ = mnist5k_digits(64)
    return (x[..., None] / 255).astype(np.float32), np.array([f"d/{i:03d}" for i in range(64)])


class FakeIterator:
    """Ray's DataIterator.iter_batches, enough for the pieces: rows in blocks, out of id order
    (Ray gives no order across blocks)."""

    def __init__(self, images, ids, block=10):
        order = np.random.default_rng(7).permutation(len(ids))
        self.images, self.ids, self.block = images[order], ids[order], block

    def iter_batches(self, **_):
        for i in range(0, len(self.ids), self.block):
            yield {"image": self.images[i:i + self.block], "id": self.ids[i:i + self.block]}


def loop_config(cfg=CFG, **kw):
    return LoopConfig(cfg, **{"mode": "cache", "torch_threads": 1, "channels": 1, "size": (28, 28),
                              "train_rows": 64, "out": "unused", **kw})


def setup(cfg=CFG, total_steps=12):
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, channels=1, **cfg.model_kwargs)
    opt = make_optimizer(cfg, model.parameters())
    return model, opt, make_scheduler(cfg, opt, total_steps)


def train_epochs(data, epochs, cfg=CFG, seed=None):
    """Losses of ``epochs`` epochs from a fresh model, and the model."""
    torch.set_num_threads(1)
    cfg = dataclasses.replace(cfg, seed=cfg.seed if seed is None else seed)
    model, opt, sched = setup(cfg)
    losses = [train_one_epoch(model, batches(data, cfg, e, 0, cfg.batch_size), opt, sched, make_objective(cfg))
              ["train_loss"] for e in range(epochs)]
    return losses, model


def test_loop_config_is_frozen_and_pickles():
    lc = loop_config()
    assert pickle.loads(pickle.dumps(lc)) == lc  # it travels to the Ray Train workers
    with pytest.raises(dataclasses.FrozenInstanceError):
        lc.mode = "stream"


def test_load_train_gives_each_rank_fixed_disjoint_rows(digits):
    images, ids = digits
    one = load_train(FakeIterator(images, ids), loop_config())
    assert one.rows == 64 and list(one.ids) == sorted(ids)  # sorted by id, whatever the block order
    np.testing.assert_array_equal(one.images, images[np.argsort(ids)])
    r0, r1 = (load_train(FakeIterator(images[:63], ids[:63]), loop_config(), rank, 2) for rank in (0, 1))
    assert r0.rows == r1.rows == 31  # equal rows per rank (DDP steps in lockstep): the 63rd is dropped
    assert list(r0.ids) == list(ids[0:62:2]) and list(r1.ids) == list(ids[1:62:2])
    stream = load_train("the shard", loop_config(mode="stream", train_rows=101), 1, 2)
    assert stream.stream == "the shard" and stream.rows == 50 and stream.images is None


def test_cache_batches_cover_every_row_once_with_noise_from_seed_id_epoch(digits):
    images, ids = digits
    data = load_train(FakeIterator(images, ids), loop_config())
    by_pixels = {img.tobytes(): i for img, i in zip(data.images, data.ids)}

    def epoch(e, rank=0):
        out = [(c.permute(0, 2, 3, 1).numpy(), n.permute(0, 2, 3, 1).numpy())
               for c, n, *_ in batches(data, CFG, e, rank, 16)]
        assert [len(c) for c, _ in out] == [16] * 4
        clean, noisy = np.concatenate([c for c, _ in out]), np.concatenate([n for _, n in out])
        return clean, noisy, [by_pixels[c.tobytes()] for c in clean]

    clean, noisy, order = epoch(0)
    assert sorted(order) == sorted(ids)  # every row exactly once
    np.testing.assert_array_equal(noisy, add_noise_batch(clean, order, CFG.noise, CFG.seed, 0))
    again = epoch(0)
    np.testing.assert_array_equal(again[1], noisy)
    assert again[2] == order  # the same order for the same (seed, epoch, rank)
    clean1, noisy1, order1 = epoch(1)
    assert order1 != order  # reshuffled every epoch, with fresh noise
    np.testing.assert_array_equal(noisy1, add_noise_batch(clean1, order1, CFG.noise, CFG.seed, 1))
    assert epoch(0, rank=1)[2] != order  # each rank its own permutation


def test_stream_batches_add_noise_from_seed_id_epoch(digits):
    images, ids = digits

    class FakeShard:  # Ray's DataIterator.iter_torch_batches: batches of rows through collate_fn
        def iter_torch_batches(self, batch_size, collate_fn, **kw):
            self.kw = kw
            for i in range(0, len(ids), batch_size):
                yield collate_fn({"image": images[i:i + batch_size], "id": ids[i:i + batch_size].astype(object)})

    shard = FakeShard()
    data = load_train(shard, loop_config(mode="stream"))
    for e in (0, 1):
        out = list(batches(data, CFG, e, 0, 16))
        assert len(out) == 4 and shard.kw["local_shuffle_seed"] == CFG.seed * 1000 + e
        noisy = np.concatenate([n.permute(0, 2, 3, 1).numpy() for _, n, *_ in out])
        np.testing.assert_array_equal(noisy, add_noise_batch(images, ids, CFG.noise, CFG.seed, e))
        np.testing.assert_array_equal(np.concatenate([c.permute(0, 2, 3, 1).numpy() for c, *_ in out]), images)


def test_train_one_epoch_lowers_the_loss_and_repeats_exactly_for_a_seed(digits):
    images, ids = digits
    data = load_train(FakeIterator(images, ids), loop_config())
    _, untrained = train_epochs(data, 0)
    losses, model = train_epochs(data, 3)
    assert losses[2] < 0.8 * losses[0], losses
    assert not torch.equal(model.state_dict()["inner.body.0.weight"], untrained.state_dict()["inner.body.0.weight"])
    same, model2 = train_epochs(data, 3)
    assert same == losses  # bit-identical for the same seed (1 CPU thread)
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k]), k
    other, _ = train_epochs(data, 3, seed=1)  # the seed drives init, order and noise
    assert other[0] != losses[0]


def test_train_one_epoch_contract(digits):
    images, ids = digits
    data = load_train(FakeIterator(images, ids), loop_config())
    cfg = dataclasses.replace(CFG, schedule="onecycle")
    model, opt, sched = setup(cfg, total_steps=3)  # OneCycleLR raises when stepped past its total
    calls = []
    stats = train_one_epoch(model, batches(data, cfg, 0, 0, 16), opt, sched, make_objective(cfg),
                            steps_left=3, after_first_step=lambda: calls.append(sched.last_epoch))
    assert stats["steps"] == 4 and sched.last_epoch == 3  # the 4th batch trained, the schedule held
    assert calls == [1]  # the hook ran once, after the first step
    assert set(stats) == {"train_loss", "images_per_s", "train_s", "train_cpu_s", "data_s", "steps"}
    assert stats["train_loss"] > 0 and stats["images_per_s"] == pytest.approx(64 / stats["train_s"])


def test_validate_is_the_mean_per_image_psnr_ssim(digits):
    images, ids = digits
    # 300 images: more than one 256-image validation batch
    big_images, big_ids = np.concatenate([images] * 5)[:300], np.array([f"v/{i:03d}" for i in range(300)])
    val = load_validation(FakeIterator(big_images, big_ids), CFG)
    assert val.total == 300 and val.clean.shape == (300, 1, 28, 28)
    clean = big_images[np.argsort(big_ids)]
    noisy = add_noise_batch(clean, sorted(big_ids), CFG.noise, CFG.val_seed, 0)
    np.testing.assert_array_equal(val.noisy.numpy(), noisy.transpose(0, 3, 1, 2))
    assert val.noisy_psnr == pytest.approx(float(metrics.psnr(noisy, clean).mean()), rel=1e-9)
    assert val.noisy_ssim == pytest.approx(float(metrics.ssim(noisy, clean).mean()), rel=1e-9)

    _, model = train_epochs(load_train(FakeIterator(images, ids), loop_config()), 1)
    model.train()
    row = validate(model, val, arith="fp32")  # the reference below runs in fp32
    assert model.training  # back in training mode
    model.eval()
    with torch.no_grad():
        out = model(val.noisy).clamp(0, 1)
    assert row["val_psnr"] == pytest.approx(float(metrics.psnr(out, val.clean).mean()), abs=1e-5)
    assert row["val_ssim"] == pytest.approx(float(metrics.ssim(out, val.clean).mean()), abs=1e-6)
    assert (row["noisy_psnr"], row["noisy_ssim"]) == (val.noisy_psnr, val.noisy_ssim)
    assert row["val_psnr"] > row["noisy_psnr"] + 1.0  # one epoch already denoises
    spread = max(float(out[:256].std(dim=0).mean()), float(out[256:].std(dim=0).mean()))
    assert row["output_spread"] == pytest.approx(spread, rel=1e-5) and not collapsed(row)


def test_validate_flags_a_model_with_one_output_for_every_input(digits):
    images, ids = digits
    val = load_validation(FakeIterator(images, ids), dataclasses.replace(CFG, val_limit=20))
    assert val.total == 20 and val.clean.shape[0] == 20  # the first 20 by id

    class Plain(torch.nn.Module):  # the models' call: model(x, sigma)
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x, sigma=None):
            return self.body(x)

    constant = torch.nn.Conv2d(1, 1, 1)
    torch.nn.init.zeros_(constant.weight)
    row = validate(Plain(constant), val)
    assert row["output_spread"] == 0.0 and collapsed(row)
    identity = validate(Plain(torch.nn.Identity()), val)  # output = noisy input: the noisy scores
    assert identity["val_psnr"] == pytest.approx(val.noisy_psnr, rel=1e-9)


@pytest.mark.parametrize("loss, collapses", [("mse", True), ("bce", False)])
def test_collapse_is_flagged_and_bce_avoids_it(loss, collapses):
    """conv28k (sigmoid output) with MSE on MNIST digits settles on one all-black output for every
    input (seen in the quality sweep at every noise level); validation must say so, and BCE, the seed
    notebooks' loss, trains the same model from the same start (256 digits, 3 epochs, lr 0.01)."""
    x, _ = mnist5k_digits(320)
    x, ids = (x[..., None] / 255).astype(np.float32), np.array([f"d/{i:03d}" for i in range(320)])
    cfg = dataclasses.replace(CFG, model="conv28k", model_kwargs={}, loss=loss, batch_size=32)
    data = load_train(FakeIterator(x[:256], ids[:256]), loop_config(cfg, train_rows=256))
    val = load_validation(FakeIterator(x[256:], ids[256:]), cfg)
    torch.set_num_threads(1)
    model, opt, sched = setup(cfg, total_steps=24)
    for epoch in range(3):
        train_one_epoch(model, batches(data, cfg, epoch, 0, cfg.batch_size), opt, sched, make_objective(cfg))
    last = validate(model, val)
    assert collapsed(last) is collapses and (last["output_spread"] < 1e-3) is collapses, last
    if not collapses:
        assert last["val_psnr"] > last["noisy_psnr"] + 1.0, last
    # the job's closing lines warn about it, naming the settings (a summary as dae.train.run returns it)
    row = {"epoch": 3, "images_per_s": 1000.0, **last}
    summary = {"best": row, "last": row, "history": [row], "config": {**dataclasses.asdict(cfg), "workers": 1},
               "data_mode": "cache", "data_s": 0.0, "fit_s": 1.0, "total_s": 1.0, "best_model": "b", "out": "o",
               "run_dir": "r", "collapsed": collapsed(last)}
    warned = f"WARNING: the model outputs the same image for every input (it collapsed; output spread < 0.001). " \
             f"conv28k with --loss {loss}, --lr 0.01"
    assert (warned in format_summary(summary)) is collapses


def test_checkpoint_restores_model_optimizer_and_schedule(digits, tmp_path):
    images, ids = digits
    data = load_train(FakeIterator(images, ids), loop_config())
    cfg = dataclasses.replace(CFG, schedule="onecycle")
    loss_fn = make_objective(cfg)
    model, opt, sched = setup(cfg)
    stats = train_one_epoch(model, batches(data, cfg, 0, 0, 16), opt, sched, loss_fn)
    state = TrainState(epoch=1, steps_done=stats["steps"], attempt=0,
                       history=[{"epoch": 1, "train_loss": stats["train_loss"], "val_psnr": 20.0, "val_ssim": 0.5,
                                 "noisy_psnr": 10.0, "noisy_ssim": 0.1}])
    save_checkpoint(str(tmp_path), model, opt, sched, state, loop_config(cfg), total_steps=12)

    reloaded, mcfg = load_model(str(tmp_path / "model"))  # the model dir stands alone
    assert mcfg["epoch"] == 1 and mcfg["metrics"]["val_psnr"] == 20.0 and mcfg["data"]["size"] == [28, 28]
    assert mcfg["train_config"]["run_name"] == "unit" and mcfg["noise"] == "gaussian:0.5"

    torch.manual_seed(99)  # another init: restore must overwrite it
    model2 = create_model(cfg.model, channels=1, **cfg.model_kwargs)
    opt2 = make_optimizer(cfg, model2.parameters())
    sched2 = make_scheduler(cfg, opt2, 12)
    resumed = restore(str(tmp_path), model2, opt2, sched2, cfg, total_steps=12)
    assert resumed == dataclasses.replace(state, attempt=1)
    assert sched2.last_epoch == sched.last_epoch == 4
    # Epoch 2 from the restored objects is epoch 2 of the uninterrupted run, bit for bit.
    go_on = train_one_epoch(model, batches(data, cfg, 1, 0, 16), opt, sched, loss_fn)
    from_ckpt = train_one_epoch(model2, batches(data, cfg, 1, 0, 16), opt2, sched2, loss_fn)
    assert from_ckpt["train_loss"] == go_on["train_loss"]

    # More epochs than the run started with: the schedule is stretched and fast-forwarded.
    model3, opt3, sched3 = setup(cfg, total_steps=20)
    restore(str(tmp_path), model3, opt3, sched3, cfg, total_steps=20)
    assert sched3.last_epoch == 4 and sched3.total_steps == 20
    # ... also a cosine run that ended (lr 0): continued to twice the steps, it is at the half-way lr
    cos = dataclasses.replace(cfg, schedule="cosine")
    model4, opt4, sched4 = setup(cos, total_steps=4)
    for _ in range(4):
        opt4.step()
        sched4.step()
    assert opt4.param_groups[0]["lr"] < 1e-9
    save_checkpoint(str(tmp_path / "cos"), model4, opt4, sched4, dataclasses.replace(state, steps_done=4),
                    loop_config(cos), total_steps=4)
    model5, opt5, sched5 = setup(cos, total_steps=8)
    restore(str(tmp_path / "cos"), model5, opt5, sched5, cos, total_steps=8)
    assert opt5.param_groups[0]["lr"] == pytest.approx(cos.lr / 2)
    with pytest.raises(ValueError, match="use another --run-name"):
        other = create_model(cfg.model, channels=1, depth=3, width=4)
        restore(str(tmp_path), other, make_optimizer(cfg, other.parameters()), sched3,
                dataclasses.replace(cfg, model_kwargs={"depth": 3, "width": 4}), 12)


def test_ray_trains_per_report_lines_are_for_debug_only(monkeypatch):
    import logging

    from ray.train.v2._internal.execution import context, storage

    from dae.train.loop import quiet_ray_reports

    loggers = (context.logger, storage.logger)  # the loggers those lines go through
    root = logging.getLogger()
    root_level = root.level
    root.setLevel(logging.INFO)  # as in a Ray worker, where the lines are shown
    try:
        monkeypatch.setenv("DAE_LOG_LEVEL", "debug")
        quiet_ray_reports()
        assert all(lg.isEnabledFor(logging.INFO) for lg in loggers)
        monkeypatch.setenv("DAE_LOG_LEVEL", "info")
        quiet_ray_reports()
        assert not any(lg.isEnabledFor(logging.INFO) for lg in loggers)
        assert all(lg.isEnabledFor(logging.WARNING) for lg in loggers)
    finally:
        root.setLevel(root_level)
        for lg in loggers:
            lg.setLevel(logging.NOTSET)


def test_pieces_need_no_ray():
    code = ("import sys, dae.train, dae.inference, dae.models, dae.noise, dae.metrics; "
            "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)

