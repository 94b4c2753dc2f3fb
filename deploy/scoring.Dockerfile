# The uq-score image for Ray clusters (deploy/k8s/scoring/rayjob-score.yaml): the project
# with its Ray extra (plus Ray's job server, which KubeRay submits through), and the
# classifier baked into its model store. The Ray driver (uq-score, on the head) reads the
# model there and ships it to the workers with the job.
#
#   bentoml models export uq-classifier:latest build/model/uq-classifier.bentomodel
#   docker build -f deploy/scoring.Dockerfile -t uq-score .
#
# BASE_IMAGE: any Debian-like image with Python 3.11, venv and pip (as for the Dockerfile).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    RAY_USAGE_STATS_ENABLED=0 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    BENTOML_HOME=/home/uq/bentoml

# KubeRay runs `ray start` through bash and probes the pods with wget
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /bin/bash uq \
    && python3 -m venv /opt/venv

# Dependencies first, in their own layer: the serving ones, the ray extra and, at the same
# version, Ray's dashboard and job server.
WORKDIR /app
COPY pyproject.toml ./
RUN python3 -c "import tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
ray = project['optional-dependencies']['ray']; \
version = next(r for r in ray if r.startswith('ray[')).split('==')[1]; \
print('\n'.join(project['dependencies'] + ray + ['ray[default]==' + version]))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY uncertainty/ uncertainty/
COPY artifacts/ artifacts/
COPY commandline/ commandline/
COPY service/ service/
COPY training/ training/
COPY scoring/ scoring/
RUN pip install --no-deps .

ARG MODEL_DIR=build/model
COPY --chown=10001:10001 ${MODEL_DIR}/ /tmp/models/
USER 10001
WORKDIR /home/uq
RUN for model in /tmp/models/*.bentomodel; do bentoml models import "$model"; done \
    && rm -rf /tmp/models \
    && bentoml models get uq-classifier:latest > /dev/null
