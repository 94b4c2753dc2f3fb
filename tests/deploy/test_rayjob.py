"""The KubeRay RayJob that runs uq-score on a cluster, and the image it runs."""

import re
import shlex
import shutil
import subprocess
import tomllib

import yaml

from artifacts.store import DEFAULT_CLASSIFIER_NAME
from scoring.cli import build_parser
from tests.conftest import REPOSITORY

MANIFEST = REPOSITORY / "deploy" / "k8s" / "scoring" / "rayjob-score.yaml"
DOCKERFILE = REPOSITORY / "deploy" / "scoring.Dockerfile"
PROJECT = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())


def documents() -> dict[str, dict]:
    return {document["kind"]: document for document in yaml.safe_load_all(MANIFEST.read_text())}


def pod_specs(job: dict) -> list[dict]:
    cluster = job["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"]["spec"]] + [
        group["template"]["spec"] for group in cluster["workerGroupSpecs"]]


def test_the_entrypoint_is_a_valid_uq_score_command_on_the_cluster():
    job = documents()["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[0] == "uq-score"
    assert PROJECT["project"]["scripts"]["uq-score"] == "scoring.cli:main"
    args = build_parser().parse_args(command[1:])
    assert args.ray_address == "auto"
    assert args.model.split(":")[0] == DEFAULT_CLASSIFIER_NAME
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    # input and output on the volume that the head (driver) and every worker mount
    for spec in pod_specs(job):
        mounts = {mount["mountPath"] for mount in spec["containers"][0]["volumeMounts"]}
        for path in (args.input, str(args.output)):
            assert any(path.startswith(mount + "/") for mount in mounts), (path, mounts)


def test_the_cluster_runs_the_pinned_ray_in_one_image_with_bounded_resources():
    kinds = documents()
    job, claim = kinds["RayJob"], kinds["PersistentVolumeClaim"]
    extra = PROJECT["project"]["optional-dependencies"]["ray"]
    pinned = next(r for r in extra if r.startswith("ray[")).split("==")[1]  # e.g. 2.60.*
    assert re.fullmatch(pinned.replace(".", r"\.").replace("*", r"\d+"),
                        job["spec"]["rayClusterSpec"]["rayVersion"])
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the driver only
    images = set()
    for spec in pod_specs(job):
        container = spec["containers"][0]
        images.add(container["image"])
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
        assert [volume["persistentVolumeClaim"]["claimName"] for volume in spec["volumes"]] == [
            claim["metadata"]["name"]]
    assert images == {"uq-score:latest"}
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_the_image_holds_what_uq_score_imports_and_the_ray_extra():
    text = DOCKERFILE.read_text()
    head = documents()["RayJob"]["spec"]["rayClusterSpec"]["headGroupSpec"]
    image = head["template"]["spec"]["containers"][0]["image"].split(":")[0]
    assert f"docker build -f deploy/scoring.Dockerfile -t {image} ." in text
    copied = set(re.findall(r"^COPY (\w+)/ \1/$", text, re.MULTILINE))
    # uq-score imports scoring, the core, the store, the service's input checks, the CLI plumbing
    assert {"scoring", "uncertainty", "artifacts", "service", "training"} <= copied
    included = {pattern.rstrip("*") for pattern in
                PROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert copied <= included
    assert "['optional-dependencies']['ray']" in text and "ray[default]==" in text
    assert f"bentoml models get {DEFAULT_CLASSIFIER_NAME}:latest" in text
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")


def test_the_image_is_clean_under_hadolint():
    hadolint = shutil.which("hadolint") or str(REPOSITORY / ".venv" / "bin" / "hadolint")
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "error",
                             str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_ray_process_of_the_job_gets_the_clusters_token_from_one_secret():
    """Token authentication: head, workers and the submitting pod share RAY_AUTH_MODE=token
    and RAY_AUTH_TOKEN from one Secret, which the driver (uq-score, on the head) inherits."""
    job = documents()["RayJob"]
    submitter = job["spec"]["submitterPodTemplate"]["spec"]
    for spec in [*pod_specs(job), submitter]:
        env = {item["name"]: item for item in spec["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": "uq-score-ray-token", "key": "auth_token"}
    assert "kubectl create secret generic uq-score-ray-token" in MANIFEST.read_text()
