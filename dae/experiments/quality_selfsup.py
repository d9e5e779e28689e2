"""The self-supervised quality table: one U-Net recipe trained on CBSD432 with synthetic AWGN by each
objective (supervised, and without clean images: Noise2Noise, Neighbor2Neighbor, Noise2Void), scored
on Kodak24 and CBSD68 at the same sigma beside our CBM3D on the same noisy pixels and the published
figures of the Neighbor2Neighbor paper (CVPR 2021, Table 1: Kodak, sigma 25, color).

    python -m jobs.quality_selfsup --out bench_out/quality-selfsup          # make quality-selfsup
    python -m jobs.quality_selfsup --recipe '{epochs: 40}'                  # longer: resumes the runs

Steps (the library stages, each skipped when its output is there; see :mod:`dae.experiments.quality_natural`):

1. prepare every set with CBSD432 as its train split -> ``OUT/data/SET``;
2. train ``--recipe`` once per objective on the first set's data -> ``OUT/runs/OBJECTIVE``: the same
   network, crops and schedule, and about the same training time (``--epochs-factor``); the objectives
   other than supervised see only noisy crops (n2n a second, independent noise draw of each crop as
   its target). A finished run with fewer epochs than the recipe is continued (a reused run name
   resumes), so the table can grow over sessions within the 1 hour per model the issue allows;
3. score every run's last-epoch model (``final_model``: no checkpoint is picked with clean images)
   on every set, with CBM3D on the first ``--bm3d-limit`` images -> ``OUT/eval/SET``;
4. write ``OUT/quality_selfsup.md`` / ``.json`` with the gaps to supervised and the targets.

The default of ``--recipe`` is ``recipes/quality-selfsup.yaml``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from dae import storage
from dae.config import build_config, command_line
from dae.jobutil import save_resolved_config
from dae.objectives import OBJECTIVES

from . import recipes
from .natural import collect, fmt, prepare_set
from .reuse import SAME_RUN, evaluate_or_reuse, train_or_reuse

log = logging.getLogger("dae")

# The Neighbor2Neighbor paper's Table 1 (Kodak, sigma 25, color), PSNR dB: each method with its own
# U-Net and schedule on ImageNet crops (not comparable in absolute terms; the gaps are).
PUBLISHED = {"supervised": 32.43, "n2n": 32.41, "nb2nb": 32.08, "n2v": 30.32}
# The targets: dB below supervised at most, with the same network and training time.
WITHIN = {"n2n": 0.3, "nb2nb": 1.0, "n2v": 2.5}
CLEAN = {"supervised": "yes", "n2n": "no (noisy pairs)", "nb2nb": "no", "n2v": "no"}


def _load_recipe() -> dict:
    from dae.train import TrainConfig

    return recipes.check(TrainConfig, recipes.load("quality-selfsup")["recipe"], "quality-selfsup recipe")


# The TrainConfig fields every objective trains with: recipes/quality-selfsup.yaml.
RECIPE = _load_recipe()
# Epochs per objective relative to the recipe's, so that each trains for about the supervised run's time
# (the issue compares at equal training time): an nb2nb step runs the network on half-size sub-images
# plus a no-grad full pass, measured 261 s against 404 s for supervised over 5 epochs on 2 CPUs.
EPOCHS_FACTOR = {"nb2nb": 1.5}
# What makes a run here the same experiment: not the epochs (a shorter finished run is continued).
SAME = tuple(k for k in SAME_RUN if k not in ("data", "epochs")) + ("objective", "objective_kwargs", "crop",
                                                                      "crops_per_image")
# ... and the objective's own settings (compared for that objective only: older runs of the others may
# predate a field that does not concern them).
OWN = {"nb2nb": ("nb2nb_gamma",), "n2v": ("n2v_fraction", "n2v_channels")}


@dataclass(frozen=True)
class QualitySelfSupConfig:
    out: str = field(default="bench_out/quality-selfsup", metadata={"help": "output root (local dir or URI)"})
    input: str = field(default="", metadata={"help": "the natural sets' root; empty: ../shared/datasets/natural"})
    sets: tuple = field(default=("Kodak24", "CBSD68"), metadata={"help": "color test sets", "nargs": "+"})
    sigma: float = field(default=25.0, metadata={"help": "AWGN sigma (0-255 scale) of training and scoring"})
    objectives: tuple = field(default=OBJECTIVES, metadata={"help": "objectives to train", "nargs": "+"})
    recipe: dict = field(default_factory=lambda: dict(RECIPE), metadata={
        "help": "TrainConfig fields shared by every objective (YAML), merged over the default recipe"})
    baselines: tuple = field(default=("bm3d",), metadata={"help": "classical methods", "nargs": "*"})
    bm3d_limit: int = field(default=8, metadata={"help": "CBM3D scores the first N images of each set; 0 = all"})
    limit: int = field(default=0, metadata={"help": "score the first N images of each set; 0 = all"})
    epochs_factor: dict = field(default_factory=lambda: dict(EPOCHS_FACTOR), metadata={
        "help": "epochs per objective relative to the recipe's (YAML), for equal training time"})
    workers: int = field(default=1, metadata={"help": "Ray Train workers per training run"})
    gpus_per_worker: float = field(default=0.0, metadata={"help": "GPUs per training worker"})
    seed: int = field(default=0, metadata={"help": "noise seed of the scored images"})


def check_config(cfg: QualitySelfSupConfig) -> None:
    bad = [o for o in cfg.objectives if o not in OBJECTIVES]
    if bad:
        raise ValueError(f"unknown objective(s) {bad}; valid: {', '.join(OBJECTIVES)}")
    if "objective" in cfg.recipe or "noise" in cfg.recipe:
        raise ValueError("--recipe sets neither objective nor noise: they come from --objectives and --sigma")
    if not cfg.sets:
        raise ValueError("--sets needs at least one color set (Kodak24, CBSD68)")
    bad = {k: v for k, v in cfg.epochs_factor.items() if k not in OBJECTIVES or not v > 0}
    if bad:
        raise ValueError(f"--epochs-factor {bad}: keys must be objectives ({', '.join(OBJECTIVES)}), values > 0")
    for obj in cfg.objectives:  # a typo in --recipe fails here, listing the valid keys, before any work
        try:
            train_config(cfg, obj, "")
        except ValueError as e:
            raise ValueError(f"--recipe: {e}") from None


def train_config(cfg: QualitySelfSupConfig, objective: str, data: str):
    from dae.train import TrainConfig

    recipe = {**RECIPE, **cfg.recipe}
    epochs = max(1, round(recipe["epochs"] * cfg.epochs_factor.get(objective, 1.0)))
    return build_config(TrainConfig, {**recipe, "epochs": epochs, "objective": objective,
                                      "noise": f"awgn:{cfg.sigma:g}",
                                      "data": data, "storage": storage.join(cfg.out, "runs"), "run_name": objective,
                                      "workers": cfg.workers, "gpus_per_worker": cfg.gpus_per_worker})


def evaluate_set(cfg: QualitySelfSupConfig, name: str, data: str, model_dirs: list[str]) -> dict:
    from dae.evaluate import EvaluateConfig

    ecfg = EvaluateConfig(data=data, split="test", out=storage.join(cfg.out, "eval", name),
                          noise=(f"awgn:{cfg.sigma:g}",), models=tuple(model_dirs), baselines=tuple(cfg.baselines),
                          limit=cfg.limit, seed=cfg.seed, bm3d_limit=cfg.bm3d_limit, tune_images=0,
                          picture_images=4)
    return evaluate_or_reuse(ecfg, name)


def summarize(cfg: QualitySelfSupConfig, table: dict, trained: dict) -> dict:
    """Per objective and set: PSNR, PSNR on CBM3D's subset, the gap to supervised and the targets."""
    level = f"awgn:{cfg.sigma:g}"
    rows: dict[str, dict] = {}
    for obj in cfg.objectives:
        r = rows[obj] = {"seconds": trained[obj]["seconds"], "epochs": (trained[obj]["last"] or {}).get("epoch")}
        for s in cfg.sets:
            e = table[s][level].get(obj, {})
            sub = e.get("bm3d_subset")
            r[s] = {"psnr": e.get("psnr"), "subset_psnr": sub["psnr_mean"] if sub else e.get("psnr")}
            sup = table[s][level].get("supervised", {}).get("psnr")
            if obj != "supervised" and sup is not None and e.get("psnr") is not None:
                r[s]["gap"] = e["psnr"] - sup
                r[s]["met"] = r[s]["gap"] >= -WITHIN[obj]
            if obj == "nb2nb" and "bm3d" in table[s][level]:
                r[s]["cbm3d"] = table[s][level]["bm3d"]["psnr"]
                r[s]["beats_cbm3d"] = r[s]["subset_psnr"] >= r[s]["cbm3d"]
    return rows


CBM3D_SKIPPED = ("skipped where the `bm3d` extra is missing: `pip install 'dae[bm3d]'` or `make quality-selfsup`, "
                 "then rerun; each evaluate report's `skipped` says why")


def markdown(cfg: QualitySelfSupConfig, table: dict, rows: dict, trained: dict) -> str:
    level = f"awgn:{cfg.sigma:g}"
    sub_n = cfg.bm3d_limit
    heads = [f"{s} σ{cfg.sigma:g}" for s in cfg.sets] + [f"{s} first {sub_n}" for s in cfg.sets]
    lines = ["| method | clean images | " + " | ".join(heads) + " | vs supervised | training | published (Kodak) |",
             "|---|---|" + "---|" * len(heads) + "---|---|---|"]
    noisy = [table[s][level].get("noisy", {}) for s in cfg.sets]
    lines.append("| noisy input | | " + " | ".join(fmt(n.get("psnr")) for n in noisy) + " | "
                 + " | ".join(fmt((n.get("bm3d_subset") or {}).get("psnr_mean")) for n in noisy) + " | | | |")
    for obj, r in rows.items():
        gaps = ", ".join(f"{r[s]['gap']:+.2f}" for s in cfg.sets if "gap" in r[s])
        lines.append(f"| **{obj}** | {CLEAN[obj]} | " + " | ".join(fmt(r[s]["psnr"]) for s in cfg.sets) + " | "
                     + " | ".join(fmt(r[s]["subset_psnr"]) for s in cfg.sets)
                     + f" | {gaps} | {r['epochs']} epochs, {r['seconds']:.0f} s | {PUBLISHED[obj]:.2f} |")
    if any("bm3d" in table[s][level] for s in cfg.sets):
        lines.append("| CBM3D (ours) | | " + " | ".join("" for _ in cfg.sets) + " | " + " | ".join(
            fmt(table[s][level].get("bm3d", {}).get("psnr")) for s in cfg.sets) + " | | | |")
    lines += ["", f"Mean PSNR (dB), AWGN sigma {cfg.sigma:g} on the 0-255 scale, unclipped; every method saw the "
                  f"same noisy pixels. \"first {sub_n}\": the images CBM3D scored (`--bm3d-limit`). The "
                  "published column is the Neighbor2Neighbor paper's Table 1 (its own U-Net and ImageNet "
                  "training): compare gaps, not absolute values.", "", "Targets (the issue's, at equal network "
              "and about equal training time):"]
    for obj, r in rows.items():
        if obj in WITHIN:
            for s in cfg.sets:
                if "gap" in r[s]:
                    lines.append(f"- {obj} within {WITHIN[obj]} dB of supervised on {s}: {r[s]['gap']:+.2f} dB, "
                                 + ("met" if r[s]["met"] else "**missed**"))
        if obj == "nb2nb":
            for s in cfg.sets:
                if "cbm3d" in r[s]:
                    lines.append(f"- nb2nb at least CBM3D on {s} (first {sub_n}): {r[s]['subset_psnr']:.2f} vs "
                                 f"{r[s]['cbm3d']:.2f}, " + ("met" if r[s]["beats_cbm3d"] else "**missed**"))
            if "bm3d" in cfg.baselines and not any("cbm3d" in r[s] for s in cfg.sets):
                # said, not left out: a table without the row reads as if there were no such target
                lines.append(f"- nb2nb at least CBM3D: **not checked**, CBM3D was not scored ({CBM3D_SKIPPED})")
    lines += ["", "Commands:"] + [f"- {obj}: `{t['command']}`" for obj, t in trained.items()]
    return "\n".join(lines) + "\n"


def run(cfg: QualitySelfSupConfig) -> dict:
    import dataclasses

    t0 = time.perf_counter()
    check_config(cfg)
    save_resolved_config(cfg, cfg.out)
    data = {name: prepare_set(cfg.out, cfg.input, name, "color") for name in cfg.sets}
    trained = {}
    for obj in cfg.objectives:
        tcfg = train_config(cfg, obj, data[cfg.sets[0]])
        t = train_or_reuse(tcfg, obj, SAME + OWN.get(obj, ()))
        t["command"] = command_line("train", dataclasses.replace(tcfg, storage="runs",
                                                                      data=f"data/{cfg.sets[0]}"))
        trained[obj] = t
    reports = {name: evaluate_set(cfg, name, data[name], [trained[o]["model_dir"] for o in cfg.objectives])
               for name in cfg.sets}
    table = collect(reports)
    rows = summarize(cfg, table, trained)
    md = markdown(cfg, table, rows, trained)
    storage.write_bytes(storage.join(cfg.out, "quality_selfsup.md"), md.encode())
    result = {"table": table, "rows": rows, "published": PUBLISHED, "trained": trained, "markdown": md,
              "wall_s": time.perf_counter() - t0}
    storage.write_json(storage.join(cfg.out, "quality_selfsup.json"), result)
    return result
