"""The sweep's table from the evaluate reports, its quality targets (met, missed by how much, or not
measured), the PSNR charts and ``quality.md``."""

from __future__ import annotations

from dae import baselines, storage
from dae.jobutil import slug

from .config import Cell, SweepConfig, epochs_of, in_range, level_of, loss_of, losses_text


def collect(cfg: SweepConfig, cells: list[Cell], levels: dict[str, list[str]], reports: dict[str, dict],
            trained: dict[Cell, dict]) -> dict:
    """{dataset: {level: {method: {psnr, ssim, images, ...}}}}: classical methods and the noisy input
    at every level, each per-level model at its own level, the blind model at the levels in its range."""
    table: dict[str, dict] = {}
    for name, rep in reports.items():
        by_dir = {e["dir"]: e["name"] for e in rep["models"]}
        res = {(e["noise"], e["method"]): e for e in rep["results"]}
        tab: dict[str, dict] = {}
        for level in levels[name]:
            row: dict[str, dict] = {}
            for method in [r for r in rep["methods"] if r not in by_dir.values()]:
                e = res.get((level, method))
                if e is not None:
                    row[method] = _cell_entry(e)
            for c in cells:
                if c.data != name:
                    continue
                if c.noise != level and not (c.blind and in_range(level, c.noise)):
                    continue
                e = res.get((level, by_dir[trained[c]["model_dir"]]))
                row[column(cfg, c)] = {**_cell_entry(e), "run": c.run_name, "trained_noise": c.noise}
            tab[level] = row
        table[name] = tab
    return table


def _cell_entry(e: dict) -> dict:
    out = {k: e.get(k) for k in ("kind", "status", "psnr_mean", "psnr_std", "ssim_mean", "images", "sec_per_image")}
    if e.get("reason"):
        out["reason"] = e["reason"]
    if e.get("bm3d_subset"):
        out["bm3d_subset"] = e["bm3d_subset"]
    return out


def column(cfg: SweepConfig, c: Cell) -> str:
    return f"{c.tag} blind" if c.blind else c.tag


def _psnr(row: dict, method: str) -> float | None:
    e = row.get(method)
    return e.get("psnr_mean") if e and e.get("status") == "ok" else None


# ---------------------------------------------------------------- the targets


class _Targets(list):
    """The targets' rows; a target whose cells the sweep did not measure is 'not measured'."""

    def add(self, target, where, value, needed, detail=""):
        if value is None or needed is None:
            self.append({"target": target, "where": where, "status": "not measured", "value": value,
                         "needed": needed, "margin": None, "detail": detail})
        else:
            self.append({"target": target, "where": where, "status": "met" if value >= needed else "missed",
                         "value": value, "needed": needed, "margin": value - needed, "detail": detail})


def _fashion_targets(cfg: SweepConfig, fm: dict, out: _Targets) -> None:
    best, ref = cfg.best, cfg.reference
    row = fm.get("gaussian:0.5", {})
    r = _psnr(row, ref)
    out.add(f"{best} >= {ref} + 1.5 dB", "fashion-mnist gaussian:0.5", _psnr(row, best),
            None if r is None else r + 1.5, f"{ref} {r:.2f} dB" if r is not None else "")
    row = fm.get("gaussian:0.1", {})
    classical = {m: _psnr(row, m) for m, e in row.items() if e.get("kind") == "classical"}
    classical = {m: v for m, v in classical.items() if v is not None and m != "bm3d"}
    # BM3D scores a subset only (--bm3d-limit): its mean is not over the same images.
    top = max(classical, key=classical.get) if classical else None
    out.add(f"{best} >= best classical + 3 dB", "fashion-mnist gaussian:0.1", _psnr(row, best),
            None if top is None else classical[top] + 3.0,
            f"best classical: {top} {classical[top]:.2f} dB" if top else "")


def check_targets(cfg: SweepConfig, table: dict) -> list[dict]:
    """The quality targets, each {target, where, value, needed, margin, status}; a target whose cells
    the sweep did not measure is 'not measured' (never silently passed)."""
    best = cfg.best
    out = _Targets()
    _fashion_targets(cfg, table.get("fashion-mnist", {}), out)
    for name, tab in table.items():
        row = tab.get("salt_pepper:0.2", {})
        if row:
            m = _psnr(row, "median")
            out.add(f"{best} >= median + 6 dB", f"{name} salt_pepper:0.2", _psnr(row, best),
                    None if m is None else m + 6.0, f"median {m:.2f} dB" if m is not None else "")
    if cfg.blind:
        blind_col = f"{best} blind"
        for name, tab in table.items():
            for level, row in tab.items():
                if not in_range(level, cfg.blind):
                    continue
                per = _psnr(row, best)
                out.add(f"{blind_col} within 0.5 dB of {best}", f"{name} {level}", _psnr(row, blind_col),
                        None if per is None else per - 0.5,
                        f"{best} at this level {per:.2f} dB" if per is not None else "")
    return list(out)


# ---------------------------------------------------------------- charts and quality.md


def save_charts(cfg: SweepConfig, table: dict) -> dict[str, str]:
    """OUT/psnr_NAME.png per dataset: PSNR against the noise level, one panel per noise kind, one
    line per method (a per-level model is a line through the levels it was trained at)."""
    from dae.evaluate import NOISY
    from dae.viz import save_lines

    paths = {}
    for name, tab in table.items():
        points: dict[str, dict[str, list]] = {}  # panel -> method -> [(level, psnr)]
        for level, row in tab.items():
            kind, x = level_of(level)
            for method in row:
                v = _psnr(row, method)
                if v is not None:
                    points.setdefault(f"{name}: {kind}", {}).setdefault(method, []).append((x, v))
        panels = {p: {m: tuple(zip(*sorted(pts))) for m, pts in ms.items()} for p, ms in points.items()}
        paths[name] = save_lines(panels, storage.join(cfg.out, f"psnr_{slug(name)}.png"), xlabel="noise level",
                                 dashed=(NOISY, *baselines.BASELINES))
    return paths


def _value_cell(method: str, v: float | None, e: dict | None, top: float | None) -> str:
    """One cell of a dataset's table: the PSNR, bold when best in its row."""
    if e is None:
        return ""
    if e.get("status") == "skipped":
        return "skipped"
    if v is None:
        return "-"
    s = f"{v:.2f}"
    if method == "bm3d" and e.get("bm3d_subset"):
        s += f" ({e['images']} img)"
    return f"**{s}**" if top is not None and v == top else s


def _dataset_section(cfg: SweepConfig, name: str, tab: dict, rep: dict, trained: dict) -> list[str]:
    losses = losses_text(cfg, [c.tag for c in trained if c.data == name])
    methods: list[str] = []
    for row in tab.values():
        methods += [m for m in row if m not in methods]
    lines = [f"## {name}", "",
             f"{rep['data']['images_scored']} test images scored; models trained {epochs_of(cfg, name)} epoch(s) on "
             f"`{cfg.out}/data/{name}` (batch {cfg.batch_size}, Adam, one-cycle lr {cfg.lr:g}, {losses}). "
             f"Full report: `eval/{name}/report.md`, pictures `eval/{name}/comparison_*.png`.", "",
             f"![PSNR against noise level, {name}](psnr_{slug(name)}.png)", "",
             "| noise | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for level, row in tab.items():
        vals = {m: _psnr(row, m) for m in methods}
        top = max((v for m, v in vals.items() if v is not None and m != "noisy"), default=None)
        lines.append(f"| {level} | " + " | ".join(_value_cell(m, vals[m], row.get(m), top) for m in methods) + " |")
    return lines + [""]


def _targets_section(targets: list[dict]) -> list[str]:
    def f(x):
        return "-" if x is None else f"{x:.2f}"

    lines = ["## Targets", "", "| target | where | value (dB) | needed (dB) | margin (dB) | status | detail |",
             "|---|---|---|---|---|---|---|"]
    for t in targets:
        margin = "-" if t["margin"] is None else f"{t['margin']:+.2f}"
        lines.append(f"| {t['target']} | {t['where']} | {f(t['value'])} | {f(t['needed'])} | {margin} | "
                     f"{t['status']} | {t['detail']} |")
    return lines


def _runs_section(cfg: SweepConfig, trained: dict) -> list[str]:
    from dae.train import collapsed

    lines = ["", "## Training runs", "", "| dataset | run | loss | epochs | seconds | last val PSNR (dB) |",
             "|---|---|---|---|---|---|"]
    for c, info in trained.items():
        last = info.get("last") or {}
        sec = info.get("seconds")
        note = " (collapsed: one output for every input)" if collapsed(last) else ""
        lines.append(f"| {c.data} | {c.run_name} | {loss_of(cfg, c.tag)} | {epochs_of(cfg, c.data)} | "
                     f"{'-' if sec is None else f'{sec:.0f}'} | {last.get('val_psnr', float('nan')):.2f}{note} |")
    return lines


def render(cfg: SweepConfig, table: dict, targets: list[dict], reports: dict, trained: dict, command: str,
           wall: float) -> str:
    """quality.md: the command, one table per dataset, the targets, the training runs."""
    lines = ["# Quality sweep", "",
             "Mean per-image PSNR (dB) on the test images of each dataset; every method saw the same noisy "
             "pixels (noise from the seed and the image id; the evaluate job checks the hashes). Each "
             "trained model is shown at the level it was trained for, the blind model at every level of "
             f"its range ({cfg.blind or 'none'}). Models: their last epoch. Classical parameters tuned on "
             "training images. Bold: best in the row.", "", "```", command, "```", ""]
    for name, tab in table.items():
        lines += _dataset_section(cfg, name, tab, reports[name], trained)
    lines += _targets_section(targets) + _runs_section(cfg, trained)
    lines += ["", f"Wall time of this invocation: {wall:.0f} s (reused steps are not counted).", ""]
    return "\n".join(lines)
