"""What a run does with an output that already exists: the rules of reruns, in one place.

Run with the output's lease held (:mod:`.lease`), before the pipeline writes anything:

    settings differ from the manifest's         refused, naming every differing field (--overwrite
                                                replaces the output; a new --output is the other way)
    --overwrite                                 a new manifest generation first, then the old
                                                markers, exports and parts are deleted
    input unchanged (same size, mtime, rows)    skipped: its images are never read
    input changed (same name, other identity)   redone; its new marker replaces the old one, and only
                                                then are the old parts deleted (commits.commit)
    input new                                   done
    input gone (removed or renamed)             retired: marker, then exported images, then parts;
                                                --keep-removed keeps it (and its ids then count in
                                                the duplicate-id check)
    marker whose parts are missing              not counted: its input is redone
    anything no counting marker lists           deleted (a killed run's parts, an interrupted
                                                overwrite's markers)

The output mirrors the input: after a run, ``read_outputs`` holds one row per row of the files
under --input now (plus the kept ones with --keep-removed), whatever came and went before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .. import storage
from . import commits, manifest
from .scan import InputFile

log = logging.getLogger("dae")


@dataclass
class Plan:
    generation: str
    markers: dict[str, dict]  # stem -> the counting marker (unchanged, changed and kept inputs)
    unchanged: list[InputFile] = field(default_factory=list)
    changed: list[InputFile] = field(default_factory=list)
    new: list[InputFile] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)  # input paths (rel)
    kept: list[str] = field(default_factory=list)  # stems of gone inputs kept by --keep-removed
    broken: list[str] = field(default_factory=list)  # input paths whose committed parts were missing
    garbage: dict[str, int] = field(default_factory=dict)

    @property
    def pending(self) -> list[InputFile]:
        return sorted(self.changed + self.new, key=lambda f: f.stem)

    def counts(self) -> dict:
        return {"unchanged": len(self.unchanged), "redone": len(self.changed), "new": len(self.new),
                "retired": len(self.retired), "kept_removed": len(self.kept), "broken": len(self.broken),
                "garbage": self.garbage}


def open_output(out: str, settings: dict, overwrite: bool) -> dict:
    """The manifest this run writes under: checked against ``settings``, or new."""
    m = manifest.read(out)
    if overwrite:
        m = manifest.new(out, settings)  # first: from here on the old markers no longer count
        commits.step("overwrite:after-manifest")
        return m
    if m is None:
        if commits.marker_stems(out):
            raise manifest.legacy_refusal(out)
        return manifest.new(out, settings)
    manifest.check(out, m, settings)
    return m


def plan(out: str, files: list[InputFile], settings: dict, overwrite: bool = False,
         keep_removed: bool = False) -> Plan:
    m = open_output(out, settings, overwrite)
    markers = commits.read_markers(out, m["generation"])
    present = commits.output_files(out)
    p = Plan(m["generation"], markers)
    for stem in [st for st, mk in markers.items() if not commits.listed(out, mk) <= present]:
        p.broken.append(markers.pop(stem)["input"])
    if p.broken:
        log.warning("%d committed input(s) have missing parts and will be redone (first: %s)",
                    len(p.broken), p.broken[0])
    current = {f.stem for f in files}
    for stem in sorted(set(markers) - current):
        if keep_removed:
            p.kept.append(stem)
            continue
        p.retired.append(markers[stem]["input"])
        commits.retire(out, stem)
        del markers[stem]
        gone = (storage.join(commits.data_dir(out, stem), ""), storage.join(commits.errors_dir(out, stem), ""))
        present = {f for f in present if not f.startswith(gone)}
    if p.retired:
        log.info("retired %d input(s) that are no longer under --input (first: %s); --keep-removed keeps "
                 "them", len(p.retired), p.retired[0])
    p.garbage = commits.collect_garbage(out, markers, present)
    if any(p.garbage.values()):
        log.info("removed what earlier runs left uncommitted: %s", p.garbage)
    for f in files:
        mk = markers.get(f.stem)
        (p.new if mk is None else p.unchanged if mk.get("identity") == f.identity else p.changed).append(f)
    return p
