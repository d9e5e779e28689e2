"""Training on images of any size without Ray: random crops from (seed, id, epoch), the same with any
worker count, in cache and stream mode; validation on whole images of mixed sizes; a short run on
real Train400 crops that beats the noisy input (skips where ../shared/datasets/natural is missing)."""

import dataclasses
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dae import metrics
from dae.inference import denoise_images
from dae.models import create_model
from dae.noise import add_noise_batch
from dae.shards import stack_or_ragged
from dae.train import (
    LoopConfig,
    TrainConfig,
    batches,
    load_train,
    load_validation,
    make_objective,
    make_optimizer,
    make_scheduler,
    random_crop,
    random_crops,
    samples_per_epoch,
    train_one_epoch,
    validate,
)
from helpers import needs_natural

CFG = TrainConfig(data="unused", model="dncnn", model_kwargs={"depth": 3, "width": 8}, noise="awgn:25",
                  lr=0.01, batch_size=8, epochs=3, schedule="constant", seed=0, run_name="crops",
                  crop=16, crops_per_image=3)


def mixed_images(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((20 + 3 * i, 40 - 2 * i, 1), dtype=np.float32) for i in range(n)], \
        np.array([f"m/{i:02d}" for i in range(n)])


class FakeIterator:
    """Ray's DataIterator.iter_batches over ragged images: object arrays, blocks out of id order."""

    def __init__(self, images, ids, block=3):
        order = np.random.default_rng(7).permutation(len(ids))
        self.images, self.ids, self.block = [images[i] for i in order], ids[order], block

    def iter_batches(self, **_):
        for i in range(0, len(self.ids), self.block):
            yield {"image": stack_or_ragged(self.images[i:i + self.block]), "id": self.ids[i:i + self.block]}


def loop_config(cfg=CFG, **kw):
    return LoopConfig(cfg, **{"mode": "cache", "torch_threads": 1, "channels": 1, "size": (47, 40),
                              "train_rows": 10, "out": "unused", **kw})


def test_a_crop_is_a_window_of_its_image_drawn_from_seed_id_epoch():
    img = np.arange(30 * 24, dtype=np.float32).reshape(30, 24, 1)
    c, cid = random_crop(img, "a/1", 2, 8, seed=0, epoch=0, augment=False)
    assert cid == "a/1#2" and c.shape == (8, 8, 1)
    y, x = np.argwhere(img[:, :, 0] == c[0, 0, 0])[0]  # values are unique: find the window
    np.testing.assert_array_equal(c, img[y:y + 8, x:x + 8])
    again, _ = random_crop(img, "a/1", 2, 8, seed=0, epoch=0, augment=False)
    np.testing.assert_array_equal(again, c)
    others = [random_crop(img, *args)[0] for args in (("a/1", 2, 8, 1, 0, False), ("a/1", 2, 8, 0, 1, False),
                                                      ("a/2", 2, 8, 0, 0, False), ("a/1", 3, 8, 0, 0, False))]
    assert all(not np.array_equal(o, c) for o in others)  # seed, epoch, id and crop index all count
    # augmented: a flip and/or a rotation of some window, the 8 orientations all occur
    seen = set()
    for k in range(64):
        a, _ = random_crop(img, "a/1", k, 8, 0, 0, augment=True)
        plain, _ = random_crop(img, "a/1", k, 8, 0, 0, augment=False)
        orients = [np.rot90(f, r, axes=(0, 1)) for f in (plain, plain[:, ::-1]) for r in range(4)]
        seen.add(next(i for i, o in enumerate(orients) if np.array_equal(o, a)))
    assert seen == set(range(8))
    assert random_crops([img, img[:9, :9]], ["p", "q"], 9, 2, 0, 0)[1].tolist() == ["p#0", "p#1", "q#0", "q#1"]


def test_cache_crops_are_the_same_with_one_and_two_workers():
    images, ids = mixed_images()
    data = load_train(FakeIterator(images, ids), loop_config())
    assert data.images.dtype == object and list(data.ids) == sorted(ids)
    assert samples_per_epoch(CFG, data.rows) == 30

    def crops_of(rank, world, epoch=0):
        part = load_train(FakeIterator(images, ids), loop_config(), rank, world)
        out = []
        for clean, noisy, *_ in batches(part, CFG, epoch, rank, CFG.batch_size):
            assert clean.shape[1:] == (1, 16, 16) and noisy.shape == clean.shape
            out += [(c.numpy().tobytes(), n.numpy().tobytes()) for c, n in zip(clean, noisy)]
        return out

    one = crops_of(0, 1)
    assert len(one) == 30 and len(set(one)) == 30
    two = crops_of(0, 2) + crops_of(1, 2)
    assert sorted(two) == sorted(one)  # the same crops and noise, whichever rank takes the image
    assert sorted(crops_of(0, 1, epoch=1)) != sorted(one)  # new crops every epoch
    # the crops and noise are exactly random_crop + awgn of ID#K
    want = random_crops([images[3]], [ids[3]], 16, 3, CFG.seed, 0, CFG.augment)
    noisy = add_noise_batch(want[0], want[1], CFG.noise, CFG.seed, 0)
    for c, n in zip(want[0], noisy):
        key = (np.ascontiguousarray(c.transpose(2, 0, 1)).tobytes(),
               np.ascontiguousarray(n.transpose(2, 0, 1)).tobytes())
        assert key in set(one)


def test_stream_crops_equal_cache_crops():
    images, ids = mixed_images()

    class FakeShard:  # Ray's iter_torch_batches over ragged rows, in id order
        def iter_torch_batches(self, batch_size, collate_fn, **kw):
            self.batch_size = batch_size
            for i in range(0, len(ids), batch_size):
                yield collate_fn({"image": stack_or_ragged(images[i:i + batch_size]), "id": ids[i:i + batch_size]})

    shard = FakeShard()
    stream = list(batches(load_train(shard, loop_config(mode="stream")), CFG, 0, 0, 9))
    assert shard.batch_size == 3  # rows per batch: 9 samples / 3 crops each
    got = {c.numpy().tobytes() for clean, *_ in stream for c in clean}
    cache = {c.numpy().tobytes() for clean, *_ in batches(load_train(FakeIterator(images, ids), loop_config()),
                                                          CFG, 0, 0, 9) for c in clean}
    assert len(got) == 30 and got == cache


def test_validation_on_mixed_sizes_runs_the_model_like_the_denoise_job():
    images, ids = mixed_images(7)
    images[2] = np.random.default_rng(3).random((40, 30, 1), dtype=np.float32)  # portrait and landscape
    val = load_validation(FakeIterator(images, ids), CFG)
    assert isinstance(val.clean, list) and val.total == 7
    clean = [images[i] for i in np.argsort(ids)]
    noisy = add_noise_batch(clean, sorted(ids), CFG.noise, CFG.val_seed, 0)
    assert any(float(n.min()) < 0 for n in noisy)  # awgn: unclipped, as the model sees it
    assert val.noisy_psnr == pytest.approx(np.mean([float(metrics.psnr(n, c)) for n, c in zip(noisy, clean)]))
    torch.manual_seed(0)
    model = create_model("dncnn", channels=1, depth=3, width=8)
    row = validate(model, val)
    outs = [np.clip(o, 0, 1) for o in denoise_images(model.eval(), list(noisy))]
    assert row["val_psnr"] == pytest.approx(np.mean([float(metrics.psnr(o, c)) for o, c in zip(outs, clean)]), abs=1e-6)
    assert row["val_ssim"] == pytest.approx(np.mean([float(metrics.ssim(o, c)) for o, c in zip(outs, clean)]), abs=1e-6)
    assert row["output_spread"] > 0.01


def test_crops_of_real_train400_photos_beat_the_noisy_input():
    """DnCNN-style training on random 40x40 crops of 24 Train400 photos at awgn:25, validated on 4
    whole BSD68 photos (481x321 and 321x481): after 12 short epochs the output beats the noisy input."""
    root = needs_natural()

    def load(folder, n):
        names = sorted(os.listdir(folder))[:n]
        return ([np.asarray(Image.open(os.path.join(folder, f)), np.float32)[:, :, None] / 255 for f in names],
                np.array(names))

    train, train_ids = load(os.path.join(root, "train", "Train400"), 24)
    test, test_ids = load(os.path.join(root, "test", "BSD68"), 4)
    assert len({t.shape for t in test}) == 2  # both orientations: a mixed-size validation
    cfg = dataclasses.replace(CFG, crop=40, crops_per_image=4, batch_size=16, lr=3e-3,
                              model_kwargs={"depth": 5, "width": 16})
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("dncnn", channels=1, **cfg.model_kwargs)
    opt = make_optimizer(cfg, model.parameters())
    sched = make_scheduler(cfg, opt, 100)
    data = load_train(FakeIterator(train, train_ids), loop_config(cfg, train_rows=24))
    for epoch in range(12):
        train_one_epoch(model, batches(data, cfg, epoch, 0, cfg.batch_size), opt, sched, make_objective(cfg))
    val = load_validation(FakeIterator(test, test_ids), cfg)
    row = validate(model, val)
    assert 19.5 < row["noisy_psnr"] < 21.0  # sigma 25 unclipped: 20.17 dB
    print(f"Train400 crops -> BSD68: noisy {row['noisy_psnr']:.2f} dB, denoised {row['val_psnr']:.2f} dB")
    assert row["val_psnr"] > row["noisy_psnr"] + 2.5, row
