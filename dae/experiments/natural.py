"""The denoising literature's natural-photo sets, shared by the natural and the self-supervised
tables: each test set prepared with its training set, the published figures, and evaluate reports
as one table."""

from __future__ import annotations

from dae import storage
from dae.config import build_config

from .reuse import prepare_or_reuse

GRAY_SETS = ("Set12", "BSD68")
COLOR_SETS = ("CBSD68", "Kodak24")
TRAIN_SET = {"gray": "Train400", "color": "CBSD432"}
SIGMAS = (15, 25, 50)
# Published mean PSNR (dB) at sigma 15 / 25 / 50 (../shared/datasets/natural/README.md; the papers'
# tables: BM3D/CBM3D as reported by DnCNN and FFDNet, DRUNet by Zhang et al. 2021).
PUBLISHED = {
    "BM3D / CBM3D": {"Set12": (32.37, 29.97, 26.72), "BSD68": (31.07, 28.57, 25.62),
                     "CBSD68": (33.52, 30.71, 27.38), "Kodak24": (34.28, 31.68, 28.46)},
    "DnCNN": {"Set12": (32.86, 30.44, 27.18), "BSD68": (31.73, 29.23, 26.23),
              "CBSD68": (33.90, 31.24, 27.95), "Kodak24": (34.60, 32.14, 28.95)},
    "FFDNet": {"Set12": (32.75, 30.43, 27.32), "BSD68": (31.63, 29.19, 26.29),
               "CBSD68": (33.87, 31.21, 27.96), "Kodak24": (34.63, 32.13, 28.98)},
    "DRUNet": {"Set12": (33.25, 30.94, 27.90), "BSD68": (31.91, 29.48, 26.59),
               "CBSD68": (34.30, 31.69, 28.51), "Kodak24": (35.31, 32.89, 29.86)},
}


def prepare_set(out: str, input: str, name: str, kind: str) -> str:
    """OUT/data/NAME: test set NAME with the training set of its kind (source ``natural``, read from
    ``input``; empty: ../shared/datasets/natural), unless a finished prepare is there."""
    from dae.prepare import PrepareConfig

    pcfg = build_config(PrepareConfig, {"source": "natural", "input": input, "rows_per_shard": 100,
                                        "sets": (f"train={TRAIN_SET[kind]}", f"test={name}"),
                                        "out": storage.join(out, "data", name), "overwrite": True})
    return prepare_or_reuse(pcfg, name)


def collect(reports: dict[str, dict]) -> dict:
    """{set: {"awgn:S": {method: {psnr, ssim, images, kind, bm3d_subset?}}}} from the evaluate reports."""
    table: dict[str, dict] = {}
    for name, rep in reports.items():
        tab: dict[str, dict] = {}
        for e in rep["results"]:
            if e.get("status") != "ok":
                continue
            cell = {"psnr": e["psnr_mean"], "ssim": e["ssim_mean"], "images": e["images"], "kind": e["kind"]}
            if e.get("bm3d_subset"):
                cell["bm3d_subset"] = e["bm3d_subset"]
            tab.setdefault(e["noise"], {})[e["method"]] = cell
        table[name] = tab
    return table


def fmt(x) -> str:
    """A PSNR in a table cell: two decimals, empty when missing."""
    return "" if x is None else f"{x:.2f}"
