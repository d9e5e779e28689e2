"""Pictures people would rather look at than read: image grids and training curves (PNG)."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from . import storage


def _to_rgb_u8(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(np.asarray(a, np.float32) * 255), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return a


def grid(rows: Sequence[tuple[str, Sequence[np.ndarray]]], scale: int | None = None, pad: int = 2,
         label_width: int = 90) -> Image.Image:
    """One labelled row per entry, e.g. [("clean", imgs), ("noisy", imgs), ("denoised", imgs)].
    Images are float (H, W, C) in [0, 1] or uint8; mixed sizes are placed top-left in equal cells.
    Small images (MNIST) are scaled up so a person can see them."""
    cells = [[_to_rgb_u8(i) for i in imgs] for _, imgs in rows]
    ch = max((c.shape[0] for r in cells for c in r), default=1)
    cw = max((c.shape[1] for r in cells for c in r), default=1)
    if scale is None:
        scale = max(1, 96 // max(ch, cw))
    ch, cw = ch * scale, cw * scale
    ncol = max((len(r) for r in cells), default=0)
    canvas = Image.new("RGB", (label_width + ncol * (cw + pad) + pad, len(rows) * (ch + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, ((label, _), imgs) in enumerate(zip(rows, cells)):
        y = pad + r * (ch + pad)
        draw.text((4, y + ch // 2 - 6), str(label), fill="black")
        for c, img in enumerate(imgs):
            im = Image.fromarray(img)
            if scale > 1:
                im = im.resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)
            canvas.paste(im, (label_width + pad + c * (cw + pad), y))
    return canvas


def save_png(image: Image.Image, path: str) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    storage.write_bytes(path, buf.getvalue())
    return path


def save_grid(rows: Sequence[tuple[str, Sequence[np.ndarray]]], path: str, **kw) -> str:
    return save_png(grid(rows, **kw), path)


def save_curves(series: dict[str, Sequence[float]], path: str, xlabel: str = "epoch",
                title: str = "") -> str:
    """Line plots, one panel per series (e.g. {"train loss": [...], "val PSNR (dB)": [...]})."""
    panels = {name: {"": (np.arange(1, len(ys) + 1), list(ys))} for name, ys in series.items()}
    return save_lines(panels, path, xlabel=xlabel, title=title)


def line_styles(labels: Sequence[str], dashed: Sequence[str] = ()) -> dict[str, dict]:
    """matplotlib line properties per label: one color per label (the default 10-color cycle, then
    tab20's 20 colors: a sweep's chart has 13 methods), dashed with x markers for ``dashed``."""
    from matplotlib import colormaps

    cmap, dashed = colormaps["tab20"], set(dashed)
    out = {}
    for i, label in enumerate(labels):
        color = f"C{i}" if len(labels) <= 10 else cmap(i % 20)
        out[label] = dict(color=color, linestyle="--", marker="x") if label in dashed else dict(color=color, marker="o")
    return out


def save_lines(panels: dict[str, dict[str, tuple[Sequence[float], Sequence[float]]]], path: str,
               xlabel: str = "", title: str = "", dashed: Sequence[str] = ()) -> str:
    """One panel per key, one labelled line per (xs, ys) in it; one legend for all panels, outside
    them, when lines are named. Labels in ``dashed`` are drawn dashed with x markers (e.g. the
    classical baselines next to the trained models)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    style = line_styles(labels, dashed)
    named = any(labels)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels) + (1.4 if named else 0), 3.4),
                             squeeze=False)
    for ax, (name, lines) in zip(axes[0], panels.items()):
        for label, (xs, ys) in lines.items():
            ax.plot(list(xs), list(ys), **style[label])  # the legend is the figure's (below)
        xs_all = sorted({float(x) for xs, _ in lines.values() for x in xs})
        if 0 < len(xs_all) <= 12:  # ticks at the data's own x values (noise levels, few epochs)
            ax.set_xticks(xs_all)
        ax.set_xlabel(xlabel)
        ax.set_title(name)
        ax.grid(alpha=0.3)
    if named:
        handles = [plt.Line2D([], [], **style[label]) for label in labels]
        fig.legend(handles, labels, loc="center right", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1 - 1.4 / fig.get_figwidth(), 1) if named else (0, 0, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes(path, buf.getvalue())
    return path
