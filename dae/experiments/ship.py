"""Shipping a trained run as a pretrained model: ``models/NAME`` (config + safetensors only) and its
model card, with the training command and the run's scores in the natural-photo table
(``python -m jobs.quality_natural --ship NAME``)."""

from __future__ import annotations

import os

from .natural import PUBLISHED, SIGMAS, TRAIN_SET, fmt


def init_epochs(path: str):
    """Epochs of the model a run was fine-tuned from (its config.json), or '?'."""
    from dae.checkpoint import load_config

    try:
        return load_config(path).get("epoch", "?")
    except (FileNotFoundError, ValueError):
        return "?"


# What the scores above do not say (issue 29): the models know synthetic white Gaussian noise only.
REAL_PHOTOS = (
    "- **Real photos**: trained on synthetic additive white Gaussian noise only: the same sigma at every pixel, "
    "independent of brightness and between neighbours. Real camera noise is not like that (it grows with "
    "brightness, is correlated across pixels and channels after demosaicing, and JPEG reshapes it), so on real "
    "photos expect less than these scores and some texture taken for noise; give `--sigma` about the noise "
    "you see (the estimate assumes white noise), or train on your own noisy photos (`dae train --objective "
    "nb2nb` needs no clean images).")


def _row(label: str, values) -> str:
    return f"| {label} | " + " | ".join(fmt(v) for v in values) + " |"


def _training_lines(trained: dict, mcfg: dict, kind: str, sets: list[str], first_stage: dict | None) -> list[str]:
    """The card's data, noise and training bullets, with the commands that reproduce the run."""
    init = (f", fine-tuned from `{trained['init']}` ({init_epochs(trained.get('init_dir') or trained['init'])} "
            "epochs of its own, not counted here)" if trained.get("init") else "")
    return [
        f"- **Data**: {TRAIN_SET[kind]} (`../shared/datasets/natural/train/{TRAIN_SET[kind]}`), random crops "
        "with flips and 90-degree rotations; never the test sets below.",
        "- **Noise**: AWGN, sigma drawn per crop uniformly from 0-55 (`awgn:0-55`), neither clipped nor quantized.",
        f"- **Training**: {trained['seconds']:.0f} s on 2 CPU cores, {mcfg.get('epoch')} epochs, the last "
        f"epoch's weights{init}:",
        "",
        f"      python -m jobs.prepare --source natural --sets train={TRAIN_SET[kind]} test={sets[0]} "
        f"--out data/{sets[0]}",
        f"      {trained['command']}",
        "",
        *([f"  `{trained['init']}` is the first stage ({first_stage['seconds']:.0f} s, "
           f"{init_epochs(first_stage['model_dir'])} epochs):", "", f"      {first_stage['command']}", ""]
          if first_stage else []),
    ]


def _score_lines(name: str, run: str, table: dict, levels: list, ensemble: tuple, precision: str) -> list[str]:
    """The card's score table: the noisy input, the model (and its self-ensembles), published rows."""
    def scores(method):
        return [table[s].get(lv, {}).get(method, {}).get("psnr") for s, lv, _ in levels]

    return [
        f"- **Scores**: mean PSNR (dB) over each set, the true sigma given, the model run in {precision} "
        f"(`--precision {precision}`; `python -m jobs.quality_natural --ship {name}` wrote this card):",
        "",
        "| | " + " | ".join(f"{s} σ{sig}" for s, _, sig in levels) + " |",
        "|---|" + "---|" * len(levels),
        _row("noisy input", scores("noisy")),
        _row(f"**{name}**", scores(run)),
        *[_row(f"{name} x{n} (self-ensemble: the mean over {n} flips/rotations, `--ensemble {n}`)",
               scores(f"{run} x{n}"))
          for n in ensemble if n > 1 and any(f"{run} x{n}" in table[s].get(lv, {}) for s, lv, _ in levels)],
        *[_row(f"{p} (published)", [dict(zip(SIGMAS, PUBLISHED[p][s])).get(sig) for s, _, sig in levels])
          for p in ("BM3D / CBM3D", "DnCNN")],
    ]


def ship(cfg, name: str, trained: dict, table: dict, sets: list[str], first_stage: dict | None = None,
         precision: str = "fp32") -> str:
    """models/NAME from a trained run's final model (re-saved: config + safetensors only) and its
    model card: data, noise, the training command, the training time and its scores in the table.
    ``cfg``: the QualityNaturalConfig that trained it. ``first_stage``: the trained recipe it was
    fine-tuned from, whose command the card gives too. ``precision``: what the scores were computed in
    (the evaluate reports' model actors; bf16 and fp32 differ by about 0.01 dB)."""
    from dae.checkpoint import MODELS_ROOT, load_model, save_model

    model, mcfg = load_model(trained["model_dir"])
    dest = os.path.join(MODELS_ROOT, name)
    run = os.path.basename(os.path.dirname(trained["model_dir"].rstrip("/")))  # the method's name in the table
    scores = {s: {lv: row.get(run, {}).get("psnr") for lv, row in table[s].items()} for s in sets}
    save_model(model, dest, noise=mcfg.get("noise"), epoch=mcfg.get("epoch"), scores=scores,
               scores_precision=precision)
    kind = cfg.train[name]["kind"]
    levels = [(s, f"awgn:{sig:g}", int(sig)) for s in sets for sig in cfg.sigmas]
    card = "\n".join([
        f"# {name}: a blind AWGN denoiser for {kind} photos",
        "",
        f"`{mcfg['model']}` {mcfg.get('model_kwargs', {})}, {sum(p.numel() for p in model.parameters()):,} "
        f"parameters, {os.path.getsize(os.path.join(dest, 'model.safetensors')) / 2**20:.1f} MiB of safetensors "
        "weights: a residual U-Net told the noise level by a sigma map as an extra input channel (FFDNet, "
        "DRUNet), one model for sigma 0-55 on the 0-255 scale.",
        "",
        f"    dae denoise --input PHOTOS --model pretrained:{name} --output OUT"
        "             # sigma estimated",
        f"    dae denoise --input PHOTOS --model pretrained:{name} --sigma 25 --output OUT  # sigma given",
        "",
        *_training_lines(trained, mcfg, kind, sets, first_stage),
        *_score_lines(name, run, table, levels, cfg.ensemble, precision),
        "",
        REAL_PHOTOS,
        "",
        "Weights load with safetensors only (`dae.checkpoint.load_model`), never pickle.",
        "",
    ])
    with open(os.path.join(dest, "README.md"), "w") as f:
        f.write(card)
    return dest
