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
names the sets (``Train400-BSD68``).
"""

from __future__ import annotations

import os

from . import SPLITS, Prepared, SourceError

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
    raise SourceError("--source natural: the benchmark sets are not in " + " nor ".join(dict.fromkeys(candidate_roots()))
                      + "; pass --input DIR (a folder with train/Train400, test/BSD68, ...)")


def parse_pairs(pairs, what: str, valid_values=None) -> dict[str, str]:
    """``("train=Train400", "test=BSD68")`` -> {"train": "Train400", "test": "BSD68"}."""
    out: dict[str, str] = {}
    for p in pairs:
        split, eq, value = str(p).partition("=")
        if not eq or split not in SPLITS or not value:
            raise SourceError(f"{what} {p!r}: expected SPLIT=VALUE with SPLIT one of {', '.join(SPLITS)}")
        if valid_values is not None and value not in valid_values:
            raise SourceError(f"{what} {p!r}: unknown set {value!r}; valid: {', '.join(valid_values)}")
        if split in out:
            raise SourceError(f"{what}: {split} given twice")
        out[split] = value
    return out


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
    from . import folder

    chosen = parse_pairs(sets, "--sets", SETS)
    if not chosen:
        raise SourceError(f"--source natural needs --sets, e.g. --sets train=Train400 test=BSD68; sets: "
                          f"{', '.join(SETS)}")
    dirs = set_dirs(chosen, root)
    prepared = folder.prepare("", dataset=dataset or "-".join(chosen.values()), limit=limit,
                              parallel_min_files=parallel_min_files, files_per_task=files_per_task, split_dirs=dirs)
    prepared.source = "natural:" + ",".join(f"{s}={n}" for s, n in chosen.items())
    return prepared
