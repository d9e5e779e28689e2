"""The README's natural-photo quality table: our models, our own BM3D/CBM3D and NLM, and the published
DnCNN, FFDNet and DRUNet figures, on the denoising literature's test sets at its noise levels.

    python -m jobs.quality_natural --out bench_out/quality-natural              # make quality-natural
    python -m jobs.quality_natural --out bench_out/quality-natural --bm3d-limit 0 --train '{}' \
        --models gray=pretrained:gray-blind color=pretrained:color-blind      # shipped models, all BM3D

Steps, each a library stage called with its config object and skipped when its output is there (a
stopped run picks up where it stopped; a run found with other settings is an error, not a result):

1. prepare every test set with its training set (``dae.prepare.run``, source ``natural``) ->
   ``OUT/data/SET`` (train = Train400 for the gray sets, CBSD432 for the color ones);
2. train every recipe of ``--train`` (``dae.train.run``) on the first set of its kind ->
   ``OUT/runs/NAME/final_model``;
3. score, per set, the trained models, ``--models`` and the classical methods on the same noisy
   pixels at every sigma (``dae.evaluate.run``; awgn: unclipped, not quantized) -> ``OUT/eval/SET``;
   a conditioned model is told each image's true sigma, as the published tables' non-blind protocol;
4. write ``OUT/quality_natural.md`` / ``.json``: mean PSNR per set and sigma for every method, the
   published rows marked as such, and BM3D's subset (``--bm3d-limit``) with our models on it.

The default of ``--train`` is ``recipes/quality-natural.yaml``; ``--ship NAME`` writes ``models/NAME``
(:mod:`dae.experiments.ship`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from dae import storage
from dae.config import build_config, command_line
from dae.jobutil import save_resolved_config

from . import recipes
from .natural import COLOR_SETS, GRAY_SETS, PUBLISHED, SIGMAS, TRAIN_SET, collect, fmt, prepare_set  # noqa: F401
from .reuse import evaluate_or_reuse, train_or_reuse
from .ship import init_epochs, ship  # noqa: F401


def _load_train() -> tuple[dict, dict]:
    """(the shared recipe, name -> run) of recipes/quality-natural.yaml, each checked by TrainConfig."""
    from dae.train import TrainConfig

    doc = recipes.load("quality-natural")
    recipe = recipes.check(TrainConfig, doc["recipe"], "quality-natural recipe")
    return recipe, {name: recipes.check(TrainConfig, r, f"quality-natural train {name!r}", extra=("kind",))
                    for name, r in doc["train"].items()}


# RECIPE: the shipped blind models' recipe; TRAIN: name -> {kind: gray|color, TrainConfig fields}.
RECIPE, TRAIN = _load_train()
# What makes two training runs the same experiment here (the data path may differ: the same sets).
SAME_RUN = ("train_split", "model", "model_kwargs", "init", "noise", "loss", "optimizer", "schedule", "lr",
            "weight_decay", "epochs", "batch_size", "seed", "crop", "crops_per_image", "augment")


@dataclass(frozen=True)
class QualityNaturalConfig:
    out: str = field(default="bench_out/quality-natural", metadata={"help": "output root (local dir or URI)"})
    input: str = field(default="", metadata={"help": "the natural sets' root; empty: ../shared/datasets/natural"})
    sigmas: tuple = field(default=SIGMAS, metadata={"help": "AWGN sigmas (0-255 scale)", "nargs": "+",
                                                             "type": float})
    gray_sets: tuple = field(default=GRAY_SETS, metadata={"help": "gray test sets", "nargs": "*"})
    color_sets: tuple = field(default=COLOR_SETS, metadata={"help": "color test sets", "nargs": "*"})
    train: dict = field(default_factory=lambda: dict(TRAIN), metadata={
        "help": "name -> {kind: gray|color, TrainConfig fields}: models to train (YAML; '{}' = none)"})
    models: tuple = field(default=(), metadata={"help": "more models to score, KIND=DIR (e.g. "
                                                        "gray=pretrained:gray-blind)", "nargs": "*"})
    baselines: tuple = field(default=("nlm", "bm3d"), metadata={"help": "classical methods", "nargs": "*"})
    bm3d_limit: int = field(default=8, metadata={"help": "BM3D scores the first N images of each set "
                                                         "(4-14 s per photo on 2 cores); 0 = all"})
    tune_images: int = field(default=8, metadata={"help": "training images NLM's parameters are tuned on"})
    color_tune_images: int = field(default=3, metadata={
        "help": "the same for the color sets (NLM's slow mode takes 3 s per color photo on 2 cores)"})
    limit: int = field(default=0, metadata={"help": "score the first N images of each set; 0 = all"})
    ensemble: tuple = field(default=(1, 8), metadata={
        "help": "self-ensemble sizes our models are scored at: 1 plain, 8 the mean over the 8 flips/rotations "
                "(the literature's x8; a row 'NAME x8')", "nargs": "+", "type": int})
    workers: int = field(default=1, metadata={"help": "Ray Train workers per training run"})
    gpus_per_worker: float = field(default=0.0, metadata={"help": "GPUs per training worker"})
    seed: int = field(default=0, metadata={"help": "noise seed of the scored images"})
    ship: tuple = field(default=(), metadata={"help": "trained runs to ship as pretrained models: NAME (to "
                                                      "models/NAME, with a model card)", "nargs": "*"})


def check_config(cfg: QualityNaturalConfig) -> dict[str, list[str]]:
    """{kind: [model dirs given with --models]}, or a clear error before any work."""
    from dae.noise import NoiseSpec

    for s in cfg.sigmas:
        NoiseSpec.parse(f"awgn:{s}")
    given: dict[str, list[str]] = {"gray": [], "color": []}
    for m in cfg.models:
        kind, eq, path = str(m).partition("=")
        if not eq or kind not in given:
            raise ValueError(f"--models takes KIND=DIR with KIND gray or color, got {m!r}")
        given[kind].append(path)
    for name, r in cfg.train.items():
        if not isinstance(r, dict) or r.get("kind") not in given:
            raise ValueError(f"--train {name!r}: give a mapping with kind: gray or color, got {r!r}")
    names = list(cfg.train)
    for i, (name, r) in enumerate(cfg.train.items()):
        if r.get("init") in cfg.train and r["init"] not in names[:i]:
            raise ValueError(f"--train {name!r} starts from {r['init']!r}: list that run before it")
    for name in cfg.ship:
        if name not in cfg.train:
            raise ValueError(f"--ship {name!r}: not a run of --train ({', '.join(cfg.train) or 'none'})")
    for name in cfg.train:  # a typo in a recipe fails here, listing the valid keys, before any work
        try:
            train_config(cfg, name, "")
        except ValueError as e:
            raise ValueError(f"--train {name!r}: {e}") from None
    return given


def sets_of(cfg: QualityNaturalConfig) -> dict[str, str]:
    return {**{s: "gray" for s in cfg.gray_sets}, **{s: "color" for s in cfg.color_sets}}


def train_config(cfg: QualityNaturalConfig, name: str, data: str):
    from dae.train import TrainConfig

    opts = {k: v for k, v in cfg.train[name].items() if k != "kind"}
    if opts.get("init") in cfg.train:  # fine-tuning another recipe's trained model
        opts["init"] = storage.join(cfg.out, "runs", opts["init"], "final_model")
    return build_config(TrainConfig, {**opts, "data": data, "storage": storage.join(cfg.out, "runs"),
                                      "run_name": name, "workers": cfg.workers,
                                      "gpus_per_worker": cfg.gpus_per_worker})


def evaluate_set(cfg: QualityNaturalConfig, name: str, data: str, model_dirs: list[str]) -> dict:
    from dae.evaluate import EvaluateConfig

    ecfg = EvaluateConfig(data=data, split="test", out=storage.join(cfg.out, "eval", name),
                          noise=tuple(f"awgn:{s:g}" for s in cfg.sigmas), models=tuple(model_dirs),
                          baselines=tuple(cfg.baselines), limit=cfg.limit, seed=cfg.seed, bm3d_limit=cfg.bm3d_limit,
                          tune_images=cfg.color_tune_images if sets_of(cfg)[name] == "color" else cfg.tune_images,
                          tune_split="train", picture_images=4, ensemble=tuple(cfg.ensemble))
    return evaluate_or_reuse(ecfg, name)


# ---------------------------------------------------------------- the table


def _method_rows(cfg: QualityNaturalConfig, table: dict, sets: list[str], methods: list[str], subset: bool):
    for m in methods:
        cells = []
        for name in sets:
            for sig in cfg.sigmas:
                e = table.get(name, {}).get(f"awgn:{sig:g}", {}).get(m)
                mark = "*" if m == "bm3d" and e and subset and e["images"] < max(
                    x["images"] for x in table[name][f"awgn:{sig:g}"].values()) else ""
                cells.append(fmt(e and e["psnr"]) + mark)
        label = {"noisy": "noisy input", "nlm": "NLM (ours, tuned)", "bm3d": "BM3D / CBM3D (ours)"}.get(m, f"**{m}**")
        yield f"| {label} | " + " | ".join(cells) + " |"
    for pub, by_set in PUBLISHED.items():
        cells = []
        for name in sets:
            vals = dict(zip(SIGMAS, by_set.get(name, (None,) * 3)))
            cells += [fmt(vals.get(int(sig))) for sig in cfg.sigmas]
        yield f"| {pub} (published) | " + " | ".join(cells) + " |"


def _subset_rows(cfg: QualityNaturalConfig, table: dict, sets: list[str], methods: list[str]) -> list[str]:
    """BM3D's first images, and our models on those same images."""
    ours = [m for m in methods if m not in ("noisy", "nlm", "bm3d")]
    out = ["", f"\\* BM3D on the first {cfg.bm3d_limit} images of each set only (`--bm3d-limit`); on those "
               "same images:", "", "| set σ | BM3D (ours) | " + " | ".join(ours) + " |",
           "|---|---|" + "---|" * len(ours)]
    for name in sets:
        for sig in cfg.sigmas:
            lv = table.get(name, {}).get(f"awgn:{sig:g}", {})
            if "bm3d" not in lv:
                continue
            cells = [fmt(lv[m]["bm3d_subset"]["psnr_mean"]) if lv.get(m, {}).get("bm3d_subset") else fmt(
                lv.get(m, {}).get("psnr")) for m in ours]
            out.append(f"| {name} σ{sig:g} | {fmt(lv['bm3d']['psnr'])} | " + " | ".join(cells) + " |")
    return out


def markdown(cfg: QualityNaturalConfig, table: dict, trained: dict, reports: dict) -> str:
    sets = list(sets_of(cfg))
    heads = [f"{s} σ{sig:g}" for s in sets for sig in cfg.sigmas]
    methods: list[str] = []
    for name in sets:
        for level in table.get(name, {}).values():
            methods += [m for m in level if m not in methods]
    subset = any(e.get("bm3d_subset") for t in table.values() for lv in t.values() for e in lv.values())
    out = ["| method | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads),
           *_method_rows(cfg, table, sets, methods, subset)]
    if subset:
        out += _subset_rows(cfg, table, sets, methods)
    out += ["", "Mean PSNR (dB) over each set's images; AWGN with sigma on the 0-255 scale, not clipped, not "
                "quantized; every method of a column saw the same noisy pixels (checked by hash in each "
                "evaluate report). Our models are told the true sigma (the published non-blind protocol)."]
    for name, t in trained.items():
        out.append(f"- **{name}**: {t['recipe']}; {t['seconds']:.0f} s of training"
                   + (" (reused)" if t["reused"] else ""))
    for name, rep in reports.items():
        out.append(f"- {name}: {rep['data']['images_scored']} images, report `{storage.join(cfg.out, 'eval', name)}"
                   f"/report.md`, {rep['wall_seconds']:.0f} s")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- the run


def train_all(cfg: QualityNaturalConfig, data: dict[str, str]) -> dict[str, dict]:
    """Every recipe of --train trained (or reused) on the first set of its kind: name -> {model_dir,
    seconds, reused, last, recipe, init, init_dir, command}."""
    trained: dict[str, dict] = {}
    for name, recipe in cfg.train.items():
        first = next((s for s, k in sets_of(cfg).items() if k == recipe["kind"]), None)
        if first is None:  # no test set of that kind: nothing to train its data from
            continue
        tcfg = train_config(cfg, name, data[first])
        t = train_or_reuse(tcfg, name, SAME_RUN)
        t["recipe"] = ", ".join(f"{k} {v}" for k, v in recipe.items() if k != "kind")
        # the command as a user reruns it, from the repo root (relative paths; a recipe's run by its dir)
        init = recipe.get("init", "")
        t["init"] = f"runs/{init}/final_model" if init in cfg.train else init
        t["init_dir"] = tcfg.init
        t["command"] = command_line("train", dataclasses.replace(tcfg, storage="runs", data=f"data/{first}",
                                                                      init=t["init"]))
        trained[name] = t
    return trained


def run(cfg: QualityNaturalConfig) -> dict:
    t0 = time.perf_counter()
    given = check_config(cfg)
    save_resolved_config(cfg, cfg.out)
    data = {name: prepare_set(cfg.out, cfg.input, name, kind) for name, kind in sets_of(cfg).items()}
    trained = train_all(cfg, data)
    models = {kind: [t["model_dir"] for name, t in trained.items() if cfg.train[name]["kind"] == kind]
              for kind in given}
    reports = {name: evaluate_set(cfg, name, data[name], models[kind] + given[kind])
               for name, kind in sets_of(cfg).items()}
    table = collect(reports)
    md = markdown(cfg, table, trained, reports)
    result = {"table": table, "published": PUBLISHED, "trained": trained, "markdown": md,
              "wall_s": time.perf_counter() - t0}
    storage.write_bytes(storage.join(cfg.out, "quality_natural.md"), md.encode())
    for name in cfg.ship:
        kind = cfg.train[name]["kind"]
        sets = [s for s, k in sets_of(cfg).items() if k == kind]
        result.setdefault("shipped", {})[name] = ship(
            cfg, name, trained[name], table, sets, first_stage=trained.get(cfg.train[name].get("init")),
            precision=reports[sets[0]].get("model_actors", {}).get("precision", "fp32"))
    storage.write_json(storage.join(cfg.out, "quality_natural.json"), result)
    return result
