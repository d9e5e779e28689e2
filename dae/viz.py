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


def save_lines(panels: dict[str, dict[str, tuple[Sequence[float], Sequence[float]]]], path: str,
               xlabel: str = "", title: str = "") -> str:
    """One panel per key, one labelled line per (xs, ys) in it (a legend when lines are named)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one color per label across all panels
    colors: dict[str, str] = {}
    for lines in panels.values():
        for label in lines:
            colors.setdefault(label, f"C{len(colors) % 10}")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (name, lines) in zip(axes[0], panels.items()):
        for label, (xs, ys) in lines.items():
            ax.plot(list(xs), list(ys), marker="o", label=label or None, color=colors[label])
        ax.set_xlabel(xlabel)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if any(lines):
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes(path, buf.getvalue())
    return path
