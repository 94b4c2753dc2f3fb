# The uncertainty-aware prediction service, with its model baked in.
#
#   bentoml models export uq-classifier:latest build/model/uq-classifier.bentomodel
#   docker build -t uq-service .
#   docker run -p 3000:3000 uq-service
#
# BASE_IMAGE: any Debian-like image with Python 3.11, venv and pip; where no registry
# is reachable, deploy/container-smoke.sh makes one with debootstrap.
# MODEL_DIR: a folder of exported .bentomodel files, imported into the image's store.
# TRAIN_DATASET: instead, train the default classifier on this dataset at build time
# (e.g. digits, offline; fashion_mnist needs its Debian package in the base image).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    BENTOML_HOME=/home/uq/bentoml

RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin uq \
    && python3 -m venv /opt/venv

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
# TensorFlow's C++ headers and libclang bindings only build custom ops, and its main
# library ships its symbol table: 560 MB that serving never reads.
WORKDIR /app
COPY pyproject.toml ./
ARG TRAIN_DATASET=
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends binutils \
    && python3 -c "import tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = project['optional-dependencies']['train'] if '${TRAIN_DATASET}' else []; \
print('\n'.join(project['dependencies'] + extras))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && pip uninstall --yes libclang \
    && rm -rf /opt/venv/lib/python3.11/site-packages/tensorflow/include \
    && strip --strip-unneeded /opt/venv/lib/python3.11/site-packages/tensorflow/*.so.2 \
    && apt-get purge --yes --auto-remove binutils \
    && rm -rf /var/lib/apt/lists/*

COPY README.md bentofile.yaml ./
COPY uncertainty/ uncertainty/
COPY artifacts/ artifacts/
COPY commandline/ commandline/
COPY service/ service/
COPY training/ training/
# the prediction log (bentoml.monitor) goes to monitoring/ under the working directory
RUN pip install --no-deps . \
    && install -d -o 10001 -g 10001 /app/monitoring

ARG MODEL_DIR=build/model
COPY --chown=10001:10001 ${MODEL_DIR}/ /tmp/models/
USER 10001
RUN if [ -n "${TRAIN_DATASET}" ]; then \
        uq-train --dataset "${TRAIN_DATASET}" --output-dir /tmp/train && rm -rf /tmp/train; \
    else \
        for model in /tmp/models/*.bentomodel; do bentoml models import "$model"; done; \
    fi \
    && rm -rf /tmp/models \
    && bentoml models get uq-classifier:latest > /dev/null

EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=4).status != 200)"]
CMD ["bentoml", "serve", "--host", "0.0.0.0", "--port", "3000"]
