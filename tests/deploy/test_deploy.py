"""The deploy artifacts: bentofile.yaml, the Dockerfile and the Kubernetes manifests.
(deploy/container-smoke.sh builds and runs the image itself; CI runs it.)"""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import bentoml
import pytest
import yaml

from service.settings import Settings
from tests.conftest import REPOSITORY

DOCKERFILE = (REPOSITORY / "Dockerfile").read_text()


def manifests() -> dict[str, dict]:
    """kind -> the manifest of deploy/k8s."""
    documents = {}
    for path in sorted((REPOSITORY / "deploy" / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            documents[document["kind"]] = document
    return documents


def test_bentoml_build_accepts_the_bentofile(classifier_tag, generator_tag, tmp_path):
    env = {**os.environ, "UQ_MODEL": classifier_tag, "UQ_GENERATOR": generator_tag}
    result = subprocess.run([sys.executable, "-m", "bentoml", "build"], cwd=REPOSITORY, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    bento = bentoml.bentos.get("uq-service:latest")
    packed = [str(model.tag) for model in bento.info.all_models]
    assert classifier_tag in packed and generator_tag in packed
    assert bento.info.labels["owner"] == "uq-team"
    source = Path(bento.path_of("src"))
    assert (source / "service" / "service.py").is_file()
    assert (source / "uncertainty" / "mc" / "engine.py").is_file()
    assert (source / "service" / "oip" / "app.py").is_file()


def test_bentofile_packages_are_the_serving_dependencies():
    bentofile = yaml.safe_load((REPOSITORY / "bentofile.yaml").read_text())
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    assert bentofile["service"] == "service.service:UQService"
    assert set(bentofile["python"]["packages"]) == set(project["dependencies"])


def test_dockerfile_is_clean_under_hadolint():
    hadolint = shutil.which("hadolint") or str(REPOSITORY / ".venv" / "bin" / "hadolint")
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "error", "-"],
                            input=DOCKERFILE, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contract():
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", DOCKERFILE, re.MULTILINE)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", DOCKERFILE, re.MULTILINE)
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^EXPOSE 3000$", DOCKERFILE, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n?.*/readyz", DOCKERFILE, re.MULTILINE)
    assert 'CMD ["bentoml", "serve", "--host", "0.0.0.0", "--port", "3000"]' in DOCKERFILE
    # the dependency layer comes before the code, so code changes reuse it
    assert DOCKERFILE.index("pip install -r") < DOCKERFILE.index("COPY service/")
    assert "bentoml models import" in DOCKERFILE


def test_kubernetes_manifests_fit_the_image_and_the_settings():
    documents = manifests()
    assert set(documents) == {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"}
    container = documents["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    exposed = int(re.search(r"^EXPOSE (\d+)$", DOCKERFILE, re.MULTILINE).group(1))
    assert [port["containerPort"] for port in container["ports"]] == [exposed]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    config_map = documents["ConfigMap"]
    assert container["envFrom"] == [{"configMapRef": {"name": config_map["metadata"]["name"]}}]
    known = {f"UQ_{name.upper()}" for name in Settings.model_fields}
    assert set(config_map["data"]) <= known
    service = documents["Service"]["spec"]
    assert service["selector"] == documents["Deployment"]["spec"]["selector"]["matchLabels"]
    assert service["ports"][0]["targetPort"] in ("http", exposed)
    target = documents["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment",
                                                documents["Deployment"]["metadata"]["name"])


@pytest.mark.parametrize("path", ["deploy/lib.sh", "deploy/container-smoke.sh",
                                  "deploy/check-serving.sh", "deploy/check-ray-cluster.sh",
                                  ".ci/run"])
def test_scripts_are_valid_bash(path):
    result = subprocess.run(["bash", "-n", str(REPOSITORY / path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
