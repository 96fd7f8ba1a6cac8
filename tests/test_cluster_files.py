"""The cluster files parse and validate: the autoscaler YAML with Ray's own config validation,
the KubeRay RayJob against the CRD fields it uses, the SLURM script with `bash -n`; they all
name the same image and Ray version, run the packaged paper experiment, and keep results on
shared storage."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from nabla_dist.experiment.config import load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"


def _object(properties: dict, required: tuple = ()) -> dict:
    """A Kubernetes object schema closed to fields it does not declare (a typo is refused)."""
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
QUANTITIES = {"type": "object", "additionalProperties": {"type": ["string", "integer"]}}
# The fields cluster/rayjob.yaml uses, with their types, as KubeRay's ray.io/v1 API defines
# them (ray-operator/apis/ray/v1/rayjob_types.go and raycluster_types.go: RayJobSpec,
# RayClusterSpec, HeadGroupSpec, WorkerGroupSpec) and core/v1 PodTemplateSpec.
CONTAINER = _object({
    "name": {"type": "string"}, "image": {"type": "string"},
    "env": {"type": "array", "items": _object({
        "name": {"type": "string"}, "value": {"type": "string"},
        "valueFrom": _object({"secretKeyRef": _object({"name": {"type": "string"}, "key": {"type": "string"},
                                                       "optional": {"type": "boolean"}}, ("key",))})}, ("name",))},
    "resources": _object({"requests": QUANTITIES, "limits": QUANTITIES}),
    "volumeMounts": {"type": "array", "items": _object({"name": {"type": "string"}, "mountPath": {"type": "string"},
                                                        "readOnly": {"type": "boolean"}}, ("name", "mountPath"))},
}, ("name",))
POD_TEMPLATE = _object({"spec": _object({
    "containers": {"type": "array", "items": CONTAINER, "minItems": 1},
    "volumes": {"type": "array", "items": _object({
        "name": {"type": "string"},
        "persistentVolumeClaim": _object({"claimName": {"type": "string"}, "readOnly": {"type": "boolean"}},
                                         ("claimName",))}, ("name",))},
}, ("containers",))})
RAYJOB = _object({
    "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"},
    "metadata": _object({"name": {"type": "string"}, "namespace": {"type": "string"}}, ("name",)),
    "spec": _object({
        "entrypoint": {"type": "string"},
        "shutdownAfterJobFinishes": {"type": "boolean"},
        "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
        "rayClusterSpec": _object({
            "rayVersion": {"type": "string"},
            "headGroupSpec": _object({"rayStartParams": STRING_MAP, "template": POD_TEMPLATE}, ("template",)),
            "workerGroupSpecs": {"type": "array", "items": _object({
                "groupName": {"type": "string"}, "replicas": {"type": "integer"},
                "minReplicas": {"type": "integer"}, "maxReplicas": {"type": "integer"},
                "rayStartParams": STRING_MAP, "template": POD_TEMPLATE,
            }, ("groupName", "template"))},
        }, ("headGroupSpec",)),
    }, ("entrypoint", "rayClusterSpec")),
}, ("apiVersion", "kind", "metadata", "spec"))


def dockerfile_ray_version() -> str:
    return re.search(r"^ARG RAY_VERSION=(\S+)$", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)


def test_the_autoscaler_file_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "autoscaler.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` runs first
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "--volume /shared:/shared" in config["docker"]["run_options"]
    config["docker"]["imge"] = "typo"
    with pytest.raises(jsonschema.ValidationError, match="imge"):
        validate_config(prepare_config(config))


def test_the_rayjob_uses_only_fields_of_the_kuberay_crd():
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    jsonschema.validate(job, RAYJOB)
    broken = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    broken["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] = 0  # KubeRay wants strings
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, RAYJOB)


def test_the_rayjob_runs_the_paper_experiment_into_the_shared_volume():
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[:3] == ["nabla-dist", "run", "paper/math500"]
    cfg = load_config(command[2], command[3:])
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    mounts = [m["mountPath"] for m in head["volumeMounts"]]
    assert any(cfg.output_dir.startswith(mount + "/") for mount in mounts)  # where the driver writes
    assert cfg.runtime.kind == "ray" and cfg.runtime.address == "auto"
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    gpus = int(worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert worker["replicas"] * gpus >= cfg.runtime.policy_replicas * cfg.runtime.tp_size + cfg.runtime.reward_replicas


def test_every_cluster_file_names_one_image_and_the_tested_ray_version():
    pinned = re.search(r"^ray==(\S+)$", (REPO / ".ci" / "constraints-cpu.txt").read_text(), re.M).group(1)
    assert dockerfile_ray_version() == pinned
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == pinned
    images = {c["image"] for group in [job["spec"]["rayClusterSpec"]["headGroupSpec"],
                                       *job["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
              for c in group["template"]["spec"]["containers"]}
    images.add(yaml.safe_load((CLUSTER / "autoscaler.yaml").read_text())["docker"]["image"])
    assert len(images) == 1


def test_the_slurm_script_parses_and_refuses_a_relative_output_dir(tmp_path):
    script = CLUSTER / "slurm.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    refused = subprocess.run(["bash", str(script), "run", "paper/math500", "output_dir=runs/math500"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=30)
    assert refused.returncode == 2 and "output_dir=/absolute/path on shared storage" in refused.stderr
    refused = subprocess.run(["bash", str(script), "sweep", "model_size"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=30)
    assert refused.returncode == 2 and "sweep.output_dir=/absolute/path" in refused.stderr
