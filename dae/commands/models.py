r"""The shipped pretrained models: name, what they take, size and their scores.

    dae models                  # a table: name, channels, network, parameters, mean PSNR per test set
    dae models --json           # the same as JSON
    dae denoise --model pretrained:color-blind ...    # use one by name, from any directory

The names work wherever a model directory does (``dae denoise --model``, ``dae evaluate --models``,
``dae train --init``); each model's card is its README.md in the directory printed.
"""

from __future__ import annotations

import argparse
import json
import os

from dae.checkpoint import MODELS_ROOT, PRETRAINED, list_pretrained, load_config


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, add_help=add_help,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def describe() -> list[dict]:
    """One entry per shipped model: name, dir, channels, model, model_kwargs, noise, weights MB, scores."""
    out = []
    for name in list_pretrained():
        cfg = load_config(PRETRAINED + name)
        d = os.path.join(MODELS_ROOT, name)
        out.append({"name": PRETRAINED + name, "dir": d, "channels": cfg.get("channels"), "model": cfg.get("model"),
                    "model_kwargs": cfg.get("model_kwargs", {}), "noise": cfg.get("noise"),
                    "weights_mb": round(os.path.getsize(os.path.join(d, "model.safetensors")) / 1e6, 2),
                    "scores": cfg.get("scores", {}), "scores_precision": cfg.get("scores_precision")})
    return out


def _scores(scores: dict) -> str:
    return "; ".join(f"{s} " + " / ".join(f"{v:.2f}" for v in by.values())
                     + f" dB (sigma {'/'.join(k.split(':')[-1] for k in by)})" for s, by in scores.items()) or "-"


def main(args: argparse.Namespace) -> list[dict]:
    models = describe()
    if args.json:
        print(json.dumps(models, indent=1))
        return models
    if not models:
        print(f"no shipped models in {MODELS_ROOT}")
        return models
    for m in models:
        kind = {1: "gray", 3: "color"}.get(m["channels"], f"{m['channels']}-channel")
        print(f"{m['name']}: {kind} images, {m['model']} {m['model_kwargs']}, trained on {m['noise']}, "
              f"{m['weights_mb']} MB\n    mean PSNR, true sigma given: {_scores(m['scores'])}\n    card: "
              f"{os.path.join(m['dir'], 'README.md')}")
    return models
