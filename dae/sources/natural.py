"""The denoising literature's benchmark sets, read by name from a folder (``--source natural``).

    python -m jobs.prepare --source natural --sets train=Train400 test=BSD68 --out data/bsd68
    python -m jobs.prepare --config prepare-cbsd68 --out data/cbsd68          # the same, by preset

The sets and their layout (``../shared/datasets/natural/README.md`` has the published PSNRs):

    ROOT/train/Train400   400 180x180 gray PNG     ROOT/test/Set12    12 gray 256/512 PNG
    ROOT/train/CBSD432    432 481x321 RGB JPEG     ROOT/test/BSD68    68 481x321 gray PNG
                                                   ROOT/test/CBSD68   68 481x321 RGB PNG
                                                   ROOT/test/Kodak24  24 500x500 RGB PNG

ROOT is ``--input`` (a user's own copy of the sets); without it, ``datasets/natural`` in a ``shared``
folder beside the checkout (or beside the working directory), where CI and this project's machines
keep them. The images are never copied into the repository. Each split is read with the folder source
(one folder per split); ids are ``SPLIT/FILE`` (``test/test001.png``), the dataset name
names the sets (``Train400-BSD68``). ``--source natural`` takes :class:`NaturalOptions`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import folder
from .base import Prepared, SourceError, parse_pairs
from .registry import register_source

SETS = {
    "Train400": "train/Train400",
    "CBSD432": "train/CBSD432",
    "Set12": "test/Set12",
    "BSD68": "test/BSD68",
    "CBSD68": "test/CBSD68",
    "Kodak24": "test/Kodak24",
}
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def candidate_roots() -> list[str]:
    """Where the sets are looked for without ``--input``, in order."""
    return [os.path.join(base, "shared", "datasets", "natural")
            for base in (os.path.dirname(_REPO), os.path.dirname(os.path.abspath(os.getcwd())), os.getcwd())]


def default_root() -> str:
    for root in candidate_roots():
        if os.path.isdir(root):
            return root
    raise SourceError("--source natural: the benchmark sets are not in "
                      + " nor ".join(dict.fromkeys(candidate_roots()))
                      + "; pass --input DIR (a folder with train/Train400, test/BSD68, ...)")


def set_dirs(sets: dict[str, str], root: str | None = None) -> dict[str, str]:
    """{split: folder of its set}; fails naming the folder it looked in."""
    root = root or default_root()
    dirs = {}
    for split, name in sets.items():
        d = os.path.join(root, SETS[name])
        if not os.path.isdir(d):
            raise SourceError(f"--source natural: set {name} is not at {d} (--input {root})")
        dirs[split] = d
    return dirs


def prepare(sets, root: str | None = None, dataset: str | None = None, limit: int | None = None,
            parallel_min_files: int = 2000, files_per_task: int = 256) -> Prepared:
    chosen = parse_pairs(sets, "--sets", SETS)
    if not chosen:
        raise SourceError(f"--source natural needs --sets, e.g. --sets train=Train400 test=BSD68; sets: "
                          f"{', '.join(SETS)}")
    dirs = set_dirs(chosen, root)
    prepared = folder.prepare("", dataset=dataset or "-".join(chosen.values()), limit=limit,
                              parallel_min_files=parallel_min_files, files_per_task=files_per_task, split_dirs=dirs)
    prepared.source = "natural:" + ",".join(f"{s}={n}" for s, n in chosen.items())
    return prepared


# ---------------------------------------------------------------- --source natural


@dataclass(frozen=True)
class NaturalOptions:
    sets: tuple = field(default=(), metadata={
        "help": "natural: SPLIT=SET words (--sets train=Train400 test=BSD68); sets: Train400, CBSD432, Set12, "
                "BSD68, CBSD68, Kodak24", "nargs": "*"})
    # the folder reader's Ray Data settings (the same flags as --source folder's)
    parallel_min_files: int = folder.parallel_min_files_field()
    files_per_task: int = folder.files_per_task_field()


def _inputs(cfg, opts: NaturalOptions) -> list[str]:
    try:
        return [cfg.input or default_root()]
    except SourceError:  # no sets anywhere: the source itself fails with the full story
        return []


@register_source("natural", "the denoising benchmark sets by name (--sets train=Train400 test=BSD68) from --input "
                            "or ../shared/datasets/natural", options=NaturalOptions, inputs=_inputs)
def open_natural(cfg, opts: NaturalOptions) -> Prepared:
    return prepare(opts.sets, root=cfg.input or None, dataset=cfg.name or None, limit=cfg.limit,
                   parallel_min_files=opts.parallel_min_files, files_per_task=opts.files_per_task)
