"""The training data: what the driver learns about the splits (:func:`describe_data`), the Ray Datasets
it hands the trainer (:func:`make_datasets`), and each worker's rows and batches (:func:`load_train`,
:func:`load_validation`, :func:`batches`), with crops and n2n's real pairs.

    cache mode   the decoded split, materialized in the object store before the trainer starts; each
                 rank reads all of it once, sorts it by id and keeps every ``world``-th image from its
                 rank on; every epoch is a seeded permutation of an in-memory array
    stream mode  (too big to hold) ``streaming_split`` shards, ``iter_torch_batches`` with a local
                 shuffle buffer, read while the workers train

Rules it keeps:
  * sample i of epoch e gets its noise, its crop and its objective's inputs from (seed, id_i, e)
    only, whatever batch, rank or worker count it lands in: runs repeat with 1 and with N workers;
  * every rank has the same number of rows (DDP ranks step in lockstep);
  * the validation copy is fixed: noise from (val_seed, id, 0), the same every epoch and every run;
  * no Ray import at module level (the worker-side pieces run in unit tests without Ray).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import metrics, shards
from ..noise import add_noise_batch, image_rng, noise_sigmas
from ..objectives import Objective, get_objective
from ..objectives.base import nchw as _to_nchw
from .config import LoopConfig, TrainConfig, objective_of

STREAM_TASK_CPUS = 0.25  # CPUs of a stream-mode read/decode task (see make_datasets)


# ---------------------------------------------------------------- driver: the splits and their datasets


def describe_split(root: str, split: str, one_size: bool = True, min_side: int = 0) -> dict:
    """Rows, image sizes and channels of a split from its small columns (no image decoding).
    ``one_size``: every image must have the same size (whole-image training batches); ``min_side``:
    no image may be smaller than that on either side (random crops of that size)."""
    from ..data import shard_files

    files = shard_files(root, split)
    n, pixels, sizes, chans, metadatas = 0, 0, set(), set(), []
    for f in files:
        t = shards.read_shard(f, ["height", "width", "channels"])
        metadatas.append(t.schema.metadata)
        n += t.num_rows
        h, w = t.column("height").to_numpy().astype(np.int64), t.column("width").to_numpy().astype(np.int64)
        pixels += int((h * w).sum())
        sizes.update(map(tuple, np.unique(np.stack([h, w], 1), axis=0).tolist()))
        chans.update(np.unique(t.column("channels").to_numpy()).tolist())
    if n == 0:
        raise ValueError(f"split {split!r} under {root} has no rows")
    if len(chans) != 1:
        raise ValueError(f"split {split!r} mixes {sorted(chans)} channels; training needs one channel count")
    if one_size and len(sizes) != 1:
        shown = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)[:5])
        raise ValueError(f"split {split!r} has images of {len(sizes)} sizes ({shown}, ...); training on whole images "
                         "needs one size: train on random crops (--crop 64) or resize the images when preparing")
    small = sorted((h, w) for h, w in sizes if min(h, w) < min_side)
    if small:
        raise ValueError(f"split {split!r} has images smaller than --crop {min_side} "
                         f"(e.g. {small[0][0]}x{small[0][1]}); use a smaller --crop")
    (h, w), c = max(sizes), chans.pop()
    return {"files": files, "rows": n, "height": int(h), "width": int(w), "channels": int(c),
            "sizes": len(sizes), "decoded_mb": pixels * c * 4 / 2**20,
            "noisy_only": shards.noisy_only(metadatas, shards.split_dir(root, split))}


def describe_data(cfg: TrainConfig) -> tuple[dict, dict, str]:
    """(train split, validation split, data mode). Training images are all of one size, or of any
    size at least --crop with --crop; validation images may be of any sizes (scored whole, as the
    denoise job runs a model). Both splits have the same channel count."""
    train_desc = describe_split(cfg.data, cfg.train_split, one_size=not cfg.crop, min_side=cfg.crop)
    val_desc = describe_split(cfg.data, cfg.val_split, one_size=False)
    if train_desc["channels"] != val_desc["channels"]:
        raise ValueError(f"{cfg.val_split} images have {val_desc['channels']} channel(s) but {cfg.train_split} "
                         f"images have {train_desc['channels']}")
    mode = cfg.data_mode
    if mode == "auto":
        mode = "cache" if train_desc["decoded_mb"] <= cfg.cache_max_mb else "stream"
    check_noisy_only(cfg, train_desc["noisy_only"], val_desc["noisy_only"])
    if cfg.pair_data:
        if mode != "cache":
            raise ValueError(f"--pair-data needs the train split held in memory (cache mode); it is "
                             f"{train_desc['decoded_mb']:.0f} MB decoded: raise --cache-max-mb")
        for split, desc in ((cfg.train_split, train_desc), (cfg.val_split, val_desc)):
            other = describe_split(cfg.pair_data, split, one_size=False)
            if (other["rows"], other["channels"]) != (desc["rows"], desc["channels"]):
                raise ValueError(f"--pair-data split {split!r} has {other['rows']} images of {other['channels']} "
                                 f"channel(s), --data {desc['rows']} of {desc['channels']}: they must pair up")
    return train_desc, val_desc, mode


def check_noisy_only(cfg: TrainConfig, train_noisy: bool, val_noisy: bool) -> None:
    """Noisy-only data (prepared with --noisy) trains only on the images as they are (--noise none),
    with an objective that learns without clean images (its own check); --noise none is only for such
    data."""
    synthetic = not cfg.noise_spec.none
    if (train_noisy or val_noisy) and synthetic:
        raise ValueError(f"{cfg.data} holds noisy images with no clean version (prepared with --noisy): pass --noise "
                         f"none (synthetic {cfg.noise} noise on top of the real noise is not what you want removed)")
    if not (train_noisy or val_noisy or synthetic):
        raise ValueError(f"--noise none trains on the images as they are, for noisy-only data (jobs.prepare --noisy); "
                         f"{cfg.data} holds clean images: give the noise to synthesize, e.g. awgn:25")
    if train_noisy:
        get_objective(cfg.objective).check_noisy_only(cfg.data, bool(cfg.pair_data))


def make_datasets(cfg: TrainConfig, train_desc: dict, val_desc: dict, mode: str) -> dict:
    """Decoded Ray Datasets. Materialized now (validation always, training in cache mode): before the
    workers take the CPUs, so no read task competes with them (on 2 CPUs two 1-CPU workers plus
    read tasks deadlock) and no epoch pays the dataset start-up again."""
    from ..data import read_shards

    cols = ["id", "image"]
    val_ds = read_shards(cfg.data, files=val_desc["files"], columns=cols).map_batches(shards.decode_batch).materialize()
    if mode == "cache":
        train_ds = read_shards(cfg.data, files=train_desc["files"], columns=cols).map_batches(shards.decode_batch)
        out = {"train": train_ds.materialize(), "val": val_ds}
        for split, name in ((cfg.train_split, "pair_train"), (cfg.val_split, "pair_val")) if cfg.pair_data else ():
            pair_ds = read_shards(cfg.pair_data, split=split, columns=cols)
            out[name] = pair_ds.map_batches(shards.decode_batch).materialize()
        return out
    # Stream mode reads while the workers hold their CPUs. run() leaves one CPU of the cluster to Ray
    # Data (the workers used to leave a quarter of the CPUs: 0.5 of 2, and the reads waited forever,
    # "Cluster resources are not enough to run any task", even as quarter-CPU tasks), and the read and
    # decode tasks ask for a quarter CPU each, so that the CPU left may be spread over nodes.
    task = {"num_cpus": STREAM_TASK_CPUS}
    train_ds = read_shards(cfg.data, files=train_desc["files"], columns=cols, num_cpus=STREAM_TASK_CPUS)
    return {"train": train_ds.map_batches(shards.decode_batch, **task), "val": val_ds}


# ---------------------------------------------------------------- worker: rows, crops, pairs, batches


@dataclass(frozen=True)
class Validation:
    """This rank's slice of the fixed noisy copy of the held-out split, and the noisy input's mean
    scores over the whole split (they do not change between epochs: computed once)."""

    clean: torch.Tensor | list  # (n, C, H, W) float32; images of mixed sizes: a list of (H, W, C) arrays
    noisy: torch.Tensor | list
    sigma: torch.Tensor  # (n,) the noise sigma of each image (0-1 scale; NaN for kinds without one)
    total: int  # images over all ranks: the denominator of every mean
    noisy_psnr: float
    noisy_ssim: float
    ids: np.ndarray | None = None  # this rank's image ids (the held-out objective's blind spots, sub-samplers)


@dataclass(frozen=True)
class TrainData:
    """This rank's training rows: held in memory (cache mode) or streamed every epoch."""

    rows: int  # rows per rank per epoch, the same on every rank: DDP ranks step in lockstep
    images: np.ndarray | None = None  # cache mode: (rows, H, W, C) float32 sorted by id (object array: mixed sizes)
    ids: np.ndarray | None = None
    stream: Any = None  # stream mode: this rank's Ray DataIterator (a streaming_split shard)


def reduce_sums(values: list[float], device: torch.device | str = "cpu", world: int = 1) -> list[float]:
    """Element-wise sums over the ranks (float64; a no-op with one rank)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


def _collect(it) -> tuple[np.ndarray, np.ndarray]:
    """All rows of a DataIterator as (images (N, H, W, C) float32, or an object array of (H, W, C)
    arrays when sizes differ; ids), sorted by id so the order does not depend on block arrival order."""
    imgs, ids = [], []
    for b in it.iter_batches(batch_size=4096, batch_format="numpy", prefetch_batches=1):
        imgs.extend(np.asarray(x, dtype=np.float32) for x in b["image"])
        ids.append(np.asarray(b["id"]).astype(str))
    id_arr = np.concatenate(ids)
    order = np.argsort(id_arr, kind="stable")
    return shards.stack_or_ragged([imgs[i] for i in order]), id_arr[order]


def _collect_pairs(it, pair_it) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_collect` of both roots of n2n's real pairs, each image with its pair stacked on the
    channel axis (H, W, 2C): crops and augmentation then cut both the same way. Ids must match."""
    images, ids = _collect(it)
    if pair_it is None:
        return images, ids
    second, ids2 = _collect(pair_it)
    if not np.array_equal(ids, ids2):
        missing = sorted(set(ids.tolist()) ^ set(ids2.tolist()))[:3]
        raise ValueError(f"--pair-data must hold the same ids as --data ({len(ids)} vs {len(ids2)} images; "
                         f"in one only: {missing})")
    for i, (a, b) in enumerate(zip(images, second)):
        if a.shape != b.shape:
            raise ValueError(f"image {ids[i]!r} is {a.shape} in --data but {b.shape} in --pair-data")
    if images.dtype != object:
        return np.concatenate([images, second], axis=-1), ids
    return shards.stack_or_ragged([np.concatenate([a, b], axis=-1) for a, b in zip(images, second)]), ids


def split_pairs(images: np.ndarray, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """(inputs, n2n's real targets or None): with --pair-data the targets ride in the last half of the
    channels (:func:`_collect_pairs`)."""
    if not cfg.pair_data:
        return images, None
    c = images.shape[-1] // 2
    return images[..., :c], images[..., c:]


def random_crop(image: np.ndarray, image_id: str, k: int, size: int, seed: int, epoch: int,
                augment: bool = True) -> tuple[np.ndarray, str]:
    """Crop ``k`` of an (H, W, C) image: ``size`` x ``size`` float32 at a position (and, with
    ``augment``, a flip and a 90-degree rotation) drawn from (seed, ``ID#K``, epoch) alone, so the
    same whatever the batch, rank or worker count; returns it with its id ``ID#K``, which then
    seeds its noise the same way."""
    cid = f"{image_id}#{k}"
    rng = image_rng(seed, "crop:" + cid, epoch)  # a stream of its own: not the noise's
    h, w = image.shape[:2]
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    c = image[y:y + size, x:x + size]
    if augment:
        c = np.rot90(c[:, ::-1] if rng.integers(2) else c, int(rng.integers(4)), axes=(0, 1))
    return np.ascontiguousarray(c, dtype=np.float32), cid


def random_crops(images, ids, size: int, per_image: int, seed: int, epoch: int, augment: bool = True):
    """Crops 0..per_image-1 of each image (:func:`random_crop`): (N * per_image, size, size, C), ids."""
    pairs = [random_crop(img, str(i), k, size, seed, epoch, augment) for img, i in zip(images, ids)
             for k in range(per_image)]
    return np.stack([c for c, _ in pairs]), np.array([cid for _, cid in pairs])


def samples_per_epoch(cfg: TrainConfig, rows: int) -> int:
    """Training samples of ``rows`` images in one epoch: the images, or their crops."""
    return rows * (cfg.crops_per_image if cfg.crop else 1)


def load_validation(it, cfg: TrainConfig, rank: int = 0, world: int = 1,
                    device: torch.device | str = "cpu", clean: bool = True, pair_it=None) -> Validation:
    """The fixed noisy copy of the held-out split (noise from (val_seed, id, 0): the same every
    epoch and every run), every ``world``-th image by id from ``rank`` on. ``it``: anything with
    Ray's ``iter_batches`` yielding ``id`` and decoded ``image`` (H, W, C) columns. ``clean=False``:
    the split is noisy-only, its images are the noisy inputs and there is nothing to score against
    (``clean`` None, noisy scores NaN); with ``pair_it`` (--pair-data) each image carries its pair on
    the channels, the target of the held-out n2n loss."""
    images, ids = _collect_pairs(it, pair_it)
    if cfg.val_limit:
        images, ids = images[: cfg.val_limit], ids[: cfg.val_limit]
    total = len(ids)
    images, ids = images[rank::world], ids[rank::world]
    noisy = add_noise_batch(images, ids, cfg.noise_spec, cfg.val_seed, 0)
    sigma = torch.from_numpy(noise_sigmas(ids, cfg.noise_spec, cfg.val_seed, 0))
    if not clean:
        noisy = list(noisy) if images.dtype == object else _to_nchw(noisy)
        return Validation(None, noisy, sigma, total, math.nan, math.nan, ids)
    if images.dtype == object:  # mixed sizes: kept as (H, W, C) arrays, scored one image at a time
        clean, noisy = list(images), list(noisy)
        sums = [sum(float(metrics.psnr(n, c)) for n, c in zip(noisy, clean)),
                sum(float(metrics.ssim(n, c)) for n, c in zip(noisy, clean))]
    else:
        clean, noisy = _to_nchw(images), _to_nchw(noisy)
        sums = [float(metrics.psnr(noisy, clean).sum()), float(metrics.ssim(noisy, clean).sum())]
    ps, ss = reduce_sums(sums, device, world)
    return Validation(clean, noisy, sigma, total, ps / total, ss / total, ids)


def load_train(it, lc: LoopConfig, rank: int = 0, world: int = 1, pair_it=None) -> TrainData:
    """This rank's training rows. Cache mode: ``it`` holds the whole split (Ray does not split
    it); every ``world``-th image by id from ``rank`` on, the same rows per rank on every run, so
    training is reproducible with 1 and with N workers. Stream mode: ``it`` is this rank's shard.
    ``pair_it``: the --pair-data split (cache mode), stacked on the channels (:func:`_collect_pairs`)."""
    if lc.mode == "stream":
        return TrainData(rows=lc.train_rows // world, stream=it)
    images, ids = _collect_pairs(it, pair_it)
    rows = len(ids) // world  # equal rows per rank: DDP needs the same number of steps everywhere
    return TrainData(rows, np.ascontiguousarray(images[rank::world][:rows]), ids[rank::world][:rows])


def batches(data: TrainData, cfg: TrainConfig, epoch: int, rank: int, batch_size: int,
            objective: Objective | None = None):
    """(clean, noisy, sigma, extra) CPU tensors of this rank for one epoch: (B, C, H, W) float32 images,
    the (B,) noise sigma each sample was drawn with (what a conditioned model is told) and the
    objective's inputs (``objective.draw``; ``objective``: the config's unless given). Sample i's noise
    comes from (seed, id_i, epoch) only, whatever batch or rank it lands in."""
    spec, seed = cfg.noise_spec, cfg.seed
    objective = objective_of(cfg) if objective is None else objective

    def pair(clean, ids):
        clean, target = split_pairs(np.asarray(clean, dtype=np.float32), cfg)
        return (_to_nchw(clean), _to_nchw(add_noise_batch(clean, ids, spec, seed, epoch)),
                torch.from_numpy(noise_sigmas(ids, spec, seed, epoch)),
                objective.draw(clean, ids, seed, epoch, target=target))

    if data.stream is None:
        # cache mode: a seeded permutation of the in-memory samples, no Ray Data work per epoch; with
        # --crop, sample j is crop j % K of image j // K
        k = cfg.crops_per_image if cfg.crop else 1
        perm = np.random.default_rng([seed, epoch, rank]).permutation(samples_per_epoch(cfg, data.rows))
        for b in range(0, len(perm), batch_size):
            idx = np.sort(perm[b:b + batch_size])  # sorted: faster gather, order inside a batch is irrelevant
            if not cfg.crop:
                yield pair(data.images[idx], data.ids[idx])
                continue
            crops = [random_crop(data.images[j // k], data.ids[j // k], j % k, cfg.crop, seed, epoch, cfg.augment)
                     for j in idx]
            yield pair(np.stack([c for c, _ in crops]), [cid for _, cid in crops])
        return

    def collate(batch: dict):
        images, ids = batch["image"], batch["id"].astype(str)
        if cfg.crop:
            images, ids = random_crops(images, ids, cfg.crop, cfg.crops_per_image, seed, epoch, cfg.augment)
        return pair(images, ids)

    # with crops, each row gives crops_per_image samples: batches of rows sized to give batch_size samples
    rows = max(1, batch_size // (cfg.crops_per_image if cfg.crop else 1))
    yield from data.stream.iter_torch_batches(batch_size=rows, collate_fn=collate,
                                              local_shuffle_buffer_size=max(rows * 8, 1024),
                                              local_shuffle_seed=seed * 1000 + epoch, prefetch_batches=2)
