"""dae.paths: relative paths refused under `ray job submit --working-dir`, and the node check's parts
(what a node sees at a path, the probe files, the comparison) without Ray."""

import os

import pytest

from dae import paths
from dae.denoise import DenoiseConfig
from dae.train import TrainConfig

PKG = "/tmp/ray/session_x/runtime_resources/working_dir_files/_ray_pkg_0123abcd"


def test_local_paths_skip_uris_and_pretrained_names():
    cfg = DenoiseConfig(input="s3://b/in", model="pretrained:color-blind", output="out/d")
    assert paths.local_paths(cfg) == [("--output", "out/d", "out")]
    cfg = TrainConfig(data="/data/x", storage="runs", model="unet")  # model: a network name, not a path
    assert [(f, k) for f, _, k in paths.local_paths(cfg)] == [("--data", "in"), ("--storage", "out")]


def test_relative_paths_are_refused_only_inside_rays_package_copy():
    cfg = DenoiseConfig(input="/data/in", model="pretrained:gray-blind", output="out/d")
    paths.check_relative(cfg, cwd="/home/me/project")  # a laptop: relative is fine
    with pytest.raises(ValueError, match=r"--output 'out/d' is a relative path, and this job runs in Ray's "
                                         r"temporary copy of the working dir .*_ray_pkg_.*written inside it and lost"):
        paths.check_relative(cfg, cwd=PKG)
    paths.check_relative(DenoiseConfig(input="/d", model="pretrained:gray-blind", output="/abs/out"), cwd=PKG)
    paths.check_relative(DenoiseConfig(input="/d", model="pretrained:gray-blind", output="s3://b/o"), cwd=PKG)
    with pytest.raises(ValueError, match="--data 'data/x' is a relative path.*read from the uploaded copy"):
        paths.check_relative(TrainConfig(data="data/x", storage="/abs/runs"), cwd=PKG)


def test_the_probe_and_fingerprints_tell_a_shared_path_from_a_node_local_one(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out" / "new"
    inp.mkdir()
    (inp / "a.png").write_bytes(b"12345")
    entries = [("--input", str(inp), "in"), ("--output", str(out), "out")]
    probes = paths.write_probes(entries)
    assert list(probes) == [str(out)] and os.path.exists(probes[str(out)])
    here = paths.look(entries, probes)
    assert here == {str(inp): paths.fingerprint(str(inp)), str(out): "probe seen"}
    paths.compare(entries, here, {"node-a": dict(here), "node-b": dict(here)})  # everyone sees the same

    other = {str(inp): here[str(inp)], str(out): "no probe"}  # node-b's /tmp is its own
    with pytest.raises(ValueError, match="--output '.*new' is a local path that not every node of this cluster "
                                         "can see: node node-b does not see the probe file"):
        paths.compare(entries, here, {"node-a": dict(here), "node-b": other})
    (inp / "b.png").write_bytes(b"1")  # another node's copy of the input differs
    changed = paths.look(entries, probes)
    with pytest.raises(ValueError, match=r"--input .* node node-a sees something else there \(dir .* vs dir"):
        paths.compare(entries, here, {"node-a": changed})
    assert paths.fingerprint(str(tmp_path / "nope")) == "missing"
    assert paths.fingerprint(str(inp / "a.png")) == "file 5"
