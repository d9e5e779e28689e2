"""KubeRay manifests (cluster/kuberay/) against KubeRay's real CRD schemas, the image (cluster/Dockerfile)
and the AWS cluster launcher config (cluster/aws.yaml) against Ray's own launcher schema.

The CRDs come from ../shared/kuberay/ beside the checkout (ray.io_rayclusters.yaml, ray.io_rayjobs.yaml);
the CRD tests skip only when that directory is missing.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

import helpers

REPO = Path(helpers.REPO)
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
CRD_DIR = REPO.parent / "shared" / "kuberay"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _ray_pin() -> str:
    # The `ray[...]==X` dependency pin in pyproject.toml (regex: tomllib needs Python 3.11).
    (pin,) = re.findall(r'^\s*"ray\[[^\]]*\]==([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    return pin


RAY_VERSION = _ray_pin()


# ---------------------------------------------------------------- CRD schema -> JSON Schema


def k8s_to_jsonschema(schema: dict) -> dict:
    """An openAPIV3Schema as the API server applies it, in JSON Schema (draft 7) terms.

    - Unknown fields: the API server prunes them silently (or rejects them with strict field
      validation); a typo in a manifest would be lost, so here every object that lists its
      ``properties`` and has no ``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields``
      rejects other keys.
    - ``x-kubernetes-int-or-string``: integer or string (the CRDs also spell it as anyOf).
    - ``x-kubernetes-validations`` (CEL): not evaluated here; :func:`cel_guarded_paths` lists where
      they sit and the tests assert the manifests set none of those fields.
    - ``x-kubernetes-embedded-resource``: apiVersion/kind/metadata are allowed in it.
    """
    s = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, list):
            for x in node:
                walk(x)
            return
        if not isinstance(node, dict):
            return
        if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if node.get("x-kubernetes-embedded-resource"):
            node.setdefault("properties", {})
            for k in ("apiVersion", "kind"):
                node["properties"].setdefault(k, {"type": "string"})
            node["properties"].setdefault("metadata", {"type": "object"})
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        for k, v in node.items():
            if k in ("properties", "patternProperties", "definitions"):
                for sub in v.values():
                    walk(sub)
            elif k in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
                walk(v)

    walk(s)
    return s


def cel_guarded_paths(schema: dict, path: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(schema, dict):
        if schema.get("x-kubernetes-validations"):
            out.append(path)
        for k, v in schema.get("properties", {}).items():
            out += cel_guarded_paths(v, path + (k,))
        if isinstance(schema.get("items"), dict):
            out += cel_guarded_paths(schema["items"], path + ("[]",))
    return out


def has_path(doc, path: tuple) -> bool:
    if not path:
        return True
    head, rest = path[0], path[1:]
    if head == "[]":
        return isinstance(doc, list) and any(has_path(x, rest) for x in doc)
    return isinstance(doc, dict) and head in doc and has_path(doc[head], rest)


_format_checker = jsonschema.FormatChecker()


@_format_checker.checks("int32")
def _int32(v) -> bool:
    return not isinstance(v, int) or -2**31 <= v < 2**31


@_format_checker.checks("int64")
def _int64(v) -> bool:
    return not isinstance(v, int) or -2**63 <= v < 2**63


@pytest.fixture(scope="module")
def crds() -> dict:
    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not found: {CRD_DIR} is missing (CI provides shared/ beside the checkout)")
    out = {}
    for kind, name in CRD_FILES.items():
        crd = yaml.safe_load((CRD_DIR / name).read_text())
        assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        assert v1["served"] and v1["storage"], f"{name}: v1 is not the served storage version"
        raw = v1["schema"]["openAPIV3Schema"]
        out[kind] = {"raw": raw, "validator": jsonschema.Draft7Validator(k8s_to_jsonschema(raw),
                                                                         format_checker=_format_checker)}
    return out


def load_manifests() -> list[tuple[str, dict]]:
    docs = []
    for f in MANIFESTS:
        for d in yaml.safe_load_all(f.read_text()):
            if d is not None:
                docs.append((f.name, d))
    return docs


def schema_errors(crds: dict, doc: dict) -> list[str]:
    v = crds[doc["kind"]]["validator"]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]


def cluster_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def pod_templates(spec: dict) -> list[tuple[str, dict]]:
    out = [("head", spec["headGroupSpec"]["template"])]
    out += [(g["groupName"], g["template"]) for g in spec["workerGroupSpecs"]]
    return out


def gpu_limit(template: dict) -> int:
    return sum(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
               for c in template["spec"]["containers"])


# ---------------------------------------------------------------- the tests


def test_every_manifest_is_a_ray_io_v1_resource():
    docs = load_manifests()
    kinds = sorted(d["kind"] for _, d in docs)
    assert kinds == ["RayCluster", "RayJob", "RayJob"], kinds
    for name, d in docs:
        assert d["apiVersion"] == "ray.io/v1", name
        assert DNS1123.match(d["metadata"]["name"]) and len(d["metadata"]["name"]) <= 47, name


def test_manifests_validate_against_the_kuberay_crds(crds):
    for name, doc in load_manifests():
        errors = schema_errors(crds, doc)
        assert not errors, f"{name}:\n" + "\n".join(errors)
        guarded = [p for p in cel_guarded_paths(crds[doc["kind"]]["raw"]) if has_path(doc, p)]
        assert not guarded, f"{name} sets fields with CEL rules this test does not evaluate: {guarded}"


def test_the_validator_rejects_what_the_api_server_would(crds):
    """The checks above can fail: typical mistakes are caught."""
    docs = dict((d["kind"] + ":" + d["metadata"]["name"], d) for _, d in load_manifests())
    job = copy.deepcopy(docs["RayJob:dae-train"])
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    assert any("num-cpus" in e for e in schema_errors(crds, job))
    job = copy.deepcopy(docs["RayJob:dae-train"])
    job["spec"]["shutdownAfterJobFinish"] = True  # typo
    assert any("shutdownAfterJobFinish" in e for e in schema_errors(crds, job))
    job = copy.deepcopy(docs["RayJob:dae-train"])
    del job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]  # required
    assert any("groupName" in e for e in schema_errors(crds, job))
    cl = copy.deepcopy(docs["RayCluster:dae"])
    cl["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "8 cores"
    assert schema_errors(crds, cl)
    cl = copy.deepcopy(docs["RayCluster:dae"])
    cl["spec"]["authOptions"]["mode"] = "password"  # enum: disabled, token
    assert any("authOptions" in e for e in schema_errors(crds, cl))


def test_cluster_layout_gpu_cpu_groups_head_without_tasks_and_token_auth():
    image = dockerfile_image_tag()
    for name, doc in load_manifests():
        spec = cluster_spec(doc)
        assert spec["rayVersion"] == RAY_VERSION, name
        assert spec["authOptions"]["mode"] == "token", name
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", name
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        assert set(groups) == {"gpu", "cpu"}, name
        gpu = groups["gpu"]["template"]["spec"]
        assert gpu_limit(groups["gpu"]["template"]) >= 1, name
        tolerations = gpu.get("tolerations", [])
        assert any(t["key"] == "nvidia.com/gpu" and t["operator"] == "Exists" and t["effect"] == "NoSchedule"
                   for t in tolerations), name
        assert gpu_limit(groups["cpu"]["template"]) == 0, name
        assert gpu_limit(spec["headGroupSpec"]["template"]) == 0, name
        for g in groups.values():
            assert g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], (name, g["groupName"])
        for group, tpl in pod_templates(spec):
            for c in tpl["spec"]["containers"]:
                assert c["image"] == image, (name, group, c["image"])
                # Shared storage: every Ray container gets the object-store credentials.
                assert {"secretRef": {"name": "dae-storage"}} in c.get("envFrom", []), (name, group)
                assert any(m["mountPath"] == "/dev/shm" for m in c.get("volumeMounts", [])), (name, group)


def _entrypoint_args(doc: dict, command: str) -> list[str]:
    # The image installs the package: its `dae` command, not the checkout's `python -m jobs.NAME`.
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:2] == ["dae", command], argv
    return argv[2:]


def test_rayjobs_train_and_denoise():
    jobs = {d["metadata"]["name"]: d for _, d in load_manifests() if d["kind"] == "RayJob"}
    assert set(jobs) == {"dae-train", "dae-denoise"}
    for name, job in jobs.items():
        spec = job["spec"]
        assert spec["shutdownAfterJobFinishes"] is True, name
        assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
        assert spec["activeDeadlineSeconds"] > 0
        # A fixed-size cluster: the jobs size their workers / actor pool from the cluster they find.
        assert spec["rayClusterSpec"]["enableInTreeAutoscaling"] is False, name
        for g in spec["rayClusterSpec"]["workerGroupSpecs"]:
            assert g["minReplicas"] == g["replicas"] == g["maxReplicas"], (name, g["groupName"])

    train = _entrypoint_args(jobs["dae-train"], "train")
    denoise = _entrypoint_args(jobs["dae-denoise"], "denoise")
    gpu_pods = {n: next(g for g in j["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
                for n, j in jobs.items()}

    tr = _parse_job_args("train", train)
    if tr is not None:
        cfg, parsed = tr
        assert cfg.storage.startswith("s3://") and cfg.data.startswith("s3://") and cfg.run_name
        assert cfg.gpus_per_worker == 1 and cfg.workers == gpu_pods["dae-train"]["replicas"]
        cpu_limit = float(gpu_pods["dae-train"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
        assert cfg.cpus_per_worker <= cpu_limit
    de = _parse_job_args("denoise", denoise)
    if de is not None:
        cfg, parsed = de
        assert cfg.output.startswith("s3://") and cfg.input.startswith("s3://")
        # The model the train job writes: STORAGE/RUN_NAME/best_model.
        if tr is not None:
            assert cfg.model == f"{tr[0].storage}/{tr[0].run_name}/best_model"
        assert cfg.device == "cuda" and cfg.max_actors <= gpu_pods["dae-denoise"]["replicas"]
        cpu_limit = float(gpu_pods["dae-denoise"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
        assert cfg.cpus_per_actor <= cpu_limit


def _parse_job_args(name: str, argv: list[str]):
    """The entrypoint's flags through the command's own parser (so a renamed flag fails here)."""
    import importlib

    from dae.config import resolve_config

    mod = importlib.import_module(f"dae.commands.{name}")
    parsed = mod.get_args_parser().parse_args(argv)
    cls = {"train": "TrainConfig", "denoise": "DenoiseConfig"}[name]
    cfg_cls = getattr(mod, cls, None)
    if cfg_cls is None:
        import dae.train as dt

        cfg_cls = getattr(dt, cls)
    return resolve_config(cfg_cls, parsed), parsed


# ---------------------------------------------------------------- Dockerfile


def dockerfile_image_tag() -> str:
    text = (CLUSTER / "Dockerfile").read_text()
    tags = set(re.findall(r"docker build -f cluster/Dockerfile -t (\S+) \.", text))
    assert len(tags) == 1, tags
    return tags.pop()


def test_dockerfile_builds_on_the_official_ray_gpu_image_with_the_pinned_package():
    text = (CLUSTER / "Dockerfile").read_text()
    (base,) = re.findall(r"^ARG RAY_IMAGE=(\S+)$", text, re.M)
    assert base == f"rayproject/ray:{RAY_VERSION}-py311-gpu"
    assert re.search(r"^FROM \$\{RAY_IMAGE\}$", text, re.M)
    # What the image's install needs (tests/e2e/test_install.py builds the wheel from exactly these).
    for src in ("pyproject.toml", "README.md", "LICENSE", "dae", "models"):
        assert re.search(rf"^COPY .*\b{re.escape(src)}\b", text, re.M), src
        assert (REPO / src).exists(), src
    assert re.search(r"^RUN pip install \.", text, re.M)
    assert f"ray.__version__ == '{RAY_VERSION}'" in text
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore


# ---------------------------------------------------------------- AWS cluster launcher


def test_aws_launcher_config_passes_rays_own_schema_and_has_the_layout():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    # What `ray up` does before it talks to AWS: merge the provider defaults, then the JSON schema
    # (ray/autoscaler/ray-schema.json) and the node-type checks.
    validate_config(prepare_config(copy.deepcopy(raw)))

    assert raw["provider"]["type"] == "aws" and raw["provider"]["region"]
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert not re.match(r"^(g|p)\d", head["node_config"]["InstanceType"]), "the head should be a CPU instance"
    assert "InstanceMarketOptions" not in head["node_config"], "the head should not be spot"
    gpu = [t for n, t in types.items()
           if n != raw["head_node_type"] and re.match(r"^(g|p)\d", t["node_config"]["InstanceType"])]
    cpu = [t for n, t in types.items() if n != raw["head_node_type"] and t not in gpu]
    assert gpu and cpu
    for t in gpu + cpu:
        assert t["min_workers"] == 0 < t["max_workers"], "workers autoscale from zero"
        assert t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert raw["max_workers"] >= sum(t["max_workers"] for t in gpu + cpu)

    assert raw["docker"]["image"] == f"rayproject/ray:{RAY_VERSION}-py311-gpu"
    pkg_dir = next(remote for remote, local in raw["file_mounts"].items() if local == ".")
    assert any(c.startswith("pip install") and pkg_dir in c for c in raw["setup_commands"])
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    head_start = " ".join(raw["head_start_ray_commands"])
    worker_start = " ".join(raw["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in worker_start
    assert "ray start --head" in head_start and "--num-cpus=0" in head_start
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker_start
    # The commands it documents are the installed package's (`dae NAME`, pip install -e on every node).
    from dae.cli import COMMANDS

    used = re.findall(r"ray job submit -- dae (\S+)", (CLUSTER / "aws.yaml").read_text())
    assert used and set(used) <= set(COMMANDS), used
