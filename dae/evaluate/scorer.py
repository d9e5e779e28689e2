"""The model side of an evaluation: the actor that scores every model, and its pool.

Rules:
- Models run as jobs.denoise runs them: through :class:`dae.inference.Denoiser` and so
  :func:`dae.forward.denoise_images` (tiles, fixed-size zero-padded forward passes, bf16 on GPU),
  with the :class:`dae.inference_spec.InferenceSpec` the config gives (denoise's flags and
  defaults): a model is scored on what the denoise job would output with the same flags, and the
  comparison picture shows those very outputs (:func:`denoise`).
- One actor stage for all models: each actor loads every model dir once, whatever its ensemble sizes.
- The pool is sized by :func:`dae.actors.plan_actors`, as denoise's is, but smaller on CPUs: the
  classical methods run as CPU tasks beside it.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np

from ..inference_spec import InferenceSpec
from .config import EvaluateConfig
from .stages import array_hash, rows_of, score_images

log = logging.getLogger("dae")


def denoise(den, images: Sequence[np.ndarray], sigmas: Sequence[float], ensemble: int = 1) -> list[np.ndarray]:
    """A model's outputs as scored and pictured: :meth:`dae.inference.Denoiser.run` (the denoise
    job's tiling and fixed-size forward passes), clipped to [0, 1], the range of every image here
    (models without an output sigmoid overshoot it). A conditioned model is told each image's true
    noise sigma, as the published non-blind tables do (FFDNet, DRUNet). ``ensemble``: the self-ensemble
    size (:func:`dae.forward.denoise_images`)."""
    return [np.clip(y, 0.0, 1.0) for y in den.run(list(images), list(sigmas), ensemble=ensemble)]


class ModelScorer:
    """Ray Data actor: loads every model once (a :class:`dae.inference.Denoiser` each), adds
    KEY__psnr/ssim/sec/hash for each.

    ``models``: [(key, model_dir, self-ensemble size)], a model dir loaded once whatever its sizes;
    ``spec``: how they run (:meth:`dae.evaluate.config.EvaluateConfig.inference_spec`, placed on the
    device and threads of the pool's plan, :func:`plan_model_actors`); each row's size is its own.
    """

    def __init__(self, models: Sequence[tuple[str, str, int]], spec: InferenceSpec):
        from ..inference import Denoiser

        loaded = {path: Denoiser(path, spec) for _, path, _ in models}
        self.models = [(key, loaded[path], n) for key, path, n in models]

    def __call__(self, batch: dict) -> dict:
        noisy, clean = rows_of(batch["noisy"]), rows_of(batch["clean"])
        n = len(noisy)
        out = dict(batch)
        hashes = np.array([array_hash(x) for x in noisy], dtype=np.int64)
        for key, den, n_views in self.models:
            wrong = sorted({x.shape[2] for x in noisy} - {den.channels})
            if wrong:
                raise ValueError(f"model {den.config.get('model')} takes {den.channels}-channel images, got "
                                 f"{'/'.join(map(str, wrong))}-channel ones")
            t0 = time.perf_counter()
            # ends with a copy to host memory: GPU time included
            preds = denoise(den, noisy, batch["sigma"], n_views)
            secs = time.perf_counter() - t0
            p, s = score_images(preds, clean) if n else (np.empty(0), np.empty(0))
            out.update({f"{key}__psnr": p, f"{key}__ssim": s, f"{key}__sec": np.full(n, secs / max(n, 1)),
                        f"{key}__hash": hashes})
        return out


def plan_model_actors(cfg: EvaluateConfig, cpus: float, gpus: float) -> dict:
    """The model actor pool, sized by :func:`dae.actors.plan_actors` as jobs.denoise's is: a fixed
    pool of ``cfg.model_actors`` or, when 0, one actor per GPU, or on CPUs a quarter of them (at most
    4): the classical methods run as CPU tasks beside the pool, so it gets less than denoise's half."""
    from ..actors import plan_actors

    plan = plan_actors(cpus, gpus, cfg.device, max_actors=cfg.model_actors)
    if plan["device"] == "cpu" and not cfg.model_actors:
        plan = plan_actors(cpus, gpus, "cpu", max_actors=max(1, min(4, int(cpus) // 4)))
    for note in plan.pop("notes"):
        log.warning("model actors: %s", note)
    plan["torch_threads"] = cfg.torch_threads or max(1, int(plan["actor_cpus"]))
    return plan
