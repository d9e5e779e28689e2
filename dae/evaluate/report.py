"""What an evaluation writes: comparison pictures, per_image.parquet, report.json and report.md.

Rules:
- The report says how every number was made: the command that reruns it (every field spelled
  out, :func:`report_command`), package versions, the selection, the tuning set and the parameters
  chosen, BM3D's subset, the hash checks (``same_input``, ``picture_same_input``).
- The pictures start from the pipeline's exact noisy pixels (checked by hash) and show the very
  outputs scored: the models run through :func:`dae.evaluate.scorer.denoise` with the config's
  inference spec, on the driver's CPU.
- report.md is rendered from report.json's dict alone (:func:`render_markdown`).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import shlex
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import baselines, storage
from ..config import command_line
from ..jobutil import save_resolved_config, slug
from ..noise import NoiseSpec, add_noise_batch, noise_sigmas
from .aggregate import Scores
from .config import EvaluateConfig
from .methods import Methods
from .scorer import denoise
from .select import Selection, decode_rows, head_rows
from .stages import NOISY, array_hash

log = logging.getLogger("dae")


def report_command(cfg: EvaluateConfig, argv: Sequence[str] | None = None) -> str:
    """The report's command: the one that reruns ``cfg``, every field spelled out; run from a shell
    (``argv``), what was typed, then that resolved equivalent."""
    resolved = command_line("evaluate", cfg, full=True)
    if argv is None:
        return resolved
    return f"{shlex.join(['dae', 'evaluate', *argv])}\n# resolved: {resolved}"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "ray", "numpy", "scikit-image", "scipy", "PyWavelets", "bm3d", "pyarrow", "dae"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def make_pictures(cfg: EvaluateConfig, sel: Selection, specs: dict[str, NoiseSpec], methods: Methods, params: dict,
                  cols: dict[str, np.ndarray]) -> dict:
    """comparison.png and comparison_<spec>.png: the same fixed images, one row per method. Made on
    the driver; returns the report's ``pictures`` and ``picture_same_input`` (per spec: the picture
    starts from the pipeline's exact noisy pixels). ``specs``: {noise spec string: spec}."""
    from .. import viz

    pics: dict[str, str] = {}
    picture_check: dict[str, bool] = {}
    pic_ids = sel.picture_ids
    if not pic_ids:
        return {"pictures": pics, "picture_same_input": picture_check}
    from ..inference import Denoiser

    prow = {r["id"]: r for r in head_rows(sel.files, sel.holdout_n + len(pic_ids), ("id", "image"))[0]}
    pclean = decode_rows([prow[i] for i in pic_ids])
    # On the driver, which may have no GPU: on CPU, its own torch threads left as they are.
    spec = cfg.inference_spec().placed("cpu", torch_threads=0)
    loaded = {m["dir"]: Denoiser(m["dir"], spec) for m in methods.models}
    noise_col = cols["noise"].astype(str)
    all_rows: list[tuple[str, list]] = [("clean", pclean)]
    for spec, noise in specs.items():
        pnoisy = list(add_noise_batch(pclean, pic_ids, noise, cfg.seed))
        psigma = noise_sigmas(pic_ids, noise, cfg.seed)
        pic_set = set(pic_ids)
        sel_idx = [i for i in np.nonzero(noise_col == spec)[0] if str(cols["id"][i]) in pic_set]
        got = {str(cols["id"][i]): int(cols[f"{NOISY}__hash"][i]) for i in sel_idx}
        picture_check[spec] = all(got.get(i) == array_hash(x) for i, x in zip(pic_ids, pnoisy))
        rows = [(f"{spec} noisy", pnoisy)]
        for n in methods.running:
            rows.append((n, [baselines.apply(n, x, baselines.noise_sigma(noise, x), params[n][spec]) for x in pnoisy]))
        rows += [(m["name"], denoise(loaded[m["dir"]], pnoisy, psigma, m["ensemble"])) for m in methods.models]
        pics[spec] = viz.save_grid([("clean", pclean), *rows], storage.join(cfg.out, f"comparison_{slug(spec)}.png"),
                                   label_width=150)
        all_rows += rows
    pics["all"] = viz.save_grid(all_rows, storage.join(cfg.out, "comparison.png"), label_width=150)
    return {"pictures": pics, "picture_same_input": picture_check}


def write_report(cfg: EvaluateConfig, command: str, *, sel: Selection, specs: list[str], methods: Methods,
                 tuning: dict, plan: dict | None, scores: Scores, pictures: dict, wall: float) -> dict:
    """per_image.parquet, config.resolved.json, report.json and report.md under ``cfg.out``; returns
    the report."""
    from .. import raylib

    pq_buf = pa.BufferOutputStream()
    pq.write_table(pa.table({k: pa.array(v) for k, v in scores.per_image.items()}), pq_buf, compression="zstd")
    storage.write_bytes(storage.join(cfg.out, "per_image.parquet"), pq_buf.getvalue().to_pybytes())
    save_resolved_config(cfg, cfg.out, name="config.resolved.json")
    report = {
        "command": command,
        "versions": package_versions(),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        "data": {"root": cfg.data, "split": cfg.split, "files": len(sel.read_files), "rows_in_split": sel.total_rows,
                 "images_scored": sel.n_score, "channels": sel.channels, "selection":
                 f"first {sel.n_score} images in file order"
                 + (f" after the {sel.holdout_n} tuning images" if sel.holdout_n else "")},
        "noise": specs,
        "seed": cfg.seed,
        "methods": [methods.display(k) for k in methods.keys],
        "skipped": [{"method": n, "reason": r} for n, r in methods.skipped.items()],
        "bm3d": bm3d_note(sel),
        "tuning": tuning,
        "models": [{"name": m["name"], "dir": m["dir"], "model": m["config"].get("model"),
                    "channels": m["config"].get("channels"), "trained_noise": m["config"].get("noise"),
                    "weights": m["weights"], "ensemble": m["ensemble"]}
                   for m in methods.models],
        "model_actors": ({"actors": plan["max_actors"], "gpu": plan["device"] == "cuda",
                          "cpus_per_actor": plan["actor_cpus"],
                          # what the models ran in (auto resolved where the actors run): the scores' precision
                          "precision": cfg.inference_spec().placed(plan["device"]).precision} if plan else {}),
        "same_input": scores.same_input,
        "picture_same_input": pictures["picture_same_input"],
        "results": scores.results,
        "pictures": pictures["pictures"],
        "wall_seconds": wall,
        "cluster": {"cpus": raylib.cluster_cpus(), "gpus": raylib.cluster_gpus()},
    }
    storage.write_json(storage.join(cfg.out, "report.json"), report)
    storage.write_bytes(storage.join(cfg.out, "report.md"), render_markdown(report).encode())
    log.info("evaluate: wrote %s (%.1f s)", storage.join(cfg.out, "report.md"), wall)
    return report


def _fmt(m, s, digits):
    if m is None:
        return "-"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _fmt_params(p: dict | None) -> str:
    if not p:
        return ""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items())


def bm3d_note(sel) -> dict | None:
    """The report's note on BM3D's subset, only when it is one: BM3D on every scored image gets no
    note and no subset table (the table used to come out empty then)."""
    if sel.bm3d_subset is None:
        return None
    return {"images": sel.bm3d_n, "subset": "first %d scored images (file order)" % sel.bm3d_n}


def render_markdown(r: dict) -> str:
    lines = ["# Denoising evaluation", "",
             f"Data: `{r['data']['root']}` split `{r['data']['split']}`: {r['data']['images_scored']} images "
             f"({r['data']['selection']}), {'/'.join(map(str, r['data']['channels']))} channel(s); seed {r['seed']}.",
             "", "Command:", "", "```", r["command"], "```", ""]
    if r.get("bm3d"):
        lines += [f"BM3D is scored on a subset only: the {r['bm3d']['subset']} (`--bm3d-limit`); the other "
                  "methods on all images. The table after the main ones compares every method on that subset.", ""]
    for s in r["skipped"]:
        lines.append(f"- **{s['method']} skipped**: {s['reason']}")
    if r["skipped"]:
        lines.append("")
    t = r["tuning"]
    if t["source"] == "none":
        lines += ["Classical parameters: defaults (no tuning).", ""]
    else:
        where = ("held out from the scored split (not scored)" if t["source"] == "holdout"
                 else f"from split `{t['source']}`")
        lines += [f"Classical parameters: best mean PSNR over a small grid on {t['images']} tuning images "
                  f"{where}; never the scored images (BM3D: on the first 8 of them, it is slow).", ""]
    lines += ["PSNR in dB (data range 1) and SSIM are per-image values, mean ± std over images (std: ddof=0). "
              "s/image: compute seconds per image inside one worker (models: batched forward / batch size). "
              "sigma = the Gaussian level for gaussian:L, else estimated from each noisy image.", ""]
    for spec in r["noise"]:
        ok = r["same_input"].get(spec, {}).get("identical")
        same = "yes" if ok else "NO: " + str(r["same_input"][spec])
        lines += [f"## {spec}", "",
                  f"Same noisy input for every method (hash check): {same}",
                  "", "| method | kind | PSNR (dB) | SSIM | images | s/image | parameters |",
                  "|---|---|---|---|---|---|---|"]
        for e in r["results"]:
            if e["noise"] != spec:
                continue
            if e["status"] == "skipped":
                lines.append(f"| {e['method']} | {e['kind']} | skipped | skipped | 0 | - | {e['reason']} |")
                continue
            sec = "-" if e["sec_per_image"] is None else f"{e['sec_per_image']:.2e}"
            extra = _fmt_params(e.get("params"))
            if e["kind"] == "model":
                extra = f"{e.get('model')}, trained on {e.get('trained_noise')}"
            lines.append(f"| {e['method']} | {e['kind']} | {_fmt(e['psnr_mean'], e['psnr_std'], 2)} | "
                         f"{_fmt(e['ssim_mean'], e['ssim_std'], 4)} | {e['images']} | {sec} | {extra} |")
        lines.append("")
        if r.get("bm3d"):
            lines += [f"On the BM3D subset ({r['bm3d']['images']} images):", "",
                      "| method | PSNR (dB) | SSIM |", "|---|---|---|"]
            for e in r["results"]:
                if e["noise"] == spec and e["status"] == "ok" and "bm3d_subset" in e:
                    b = e["bm3d_subset"]
                    if b["psnr_mean"] is not None:
                        lines.append(f"| {e['method']} | {b['psnr_mean']:.2f} | {b['ssim_mean']:.4f} |")
            lines.append("")
        pic = r["pictures"].get(spec)
        if pic:
            lines += [f"![{spec}]({os.path.basename(pic)})", ""]
    v = r["versions"]
    lines += ["## Environment", "", ", ".join(f"{k} {val}" for k, val in v.items()), "",
              f"Ray cluster: {r['cluster']['cpus']:g} CPUs, {r['cluster']['gpus']:g} GPUs; wall time "
              f"{r['wall_seconds']:.1f} s.", ""]
    return "\n".join(lines)
