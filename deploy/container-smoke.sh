#!/usr/bin/env bash
# Container smoke test: build the image from the Dockerfile and run the service in it.
#
#   bash deploy/container-smoke.sh
#
# 1. Makes a local base image when none is given (BASE_IMAGE): no container
#    registry is reachable here, so a Debian rootfs from debootstrap with
#    python3, venv and pip, the host's CA bundle and a pip configuration.
# 2. Trains a tiny digits classifier and GAN generator into a temporary model store
#    and exports both to build/model/ (or exports MODEL_TAG from the default store).
# 3. Builds the image with `podman build --isolation=chroot`.
# 4. Runs `bentoml serve` inside it (with the generator configured, when one is baked
#    in) with `buildah run --isolation chroot` on a free loopback port (`podman run`
#    does not work on these machines), waits for /readyz and runs the contract check
#    (python -m loadtest.contract_check) from the project's .venv against it: every
#    route and option, bad requests, no 5xx and no traceback in the server's output.
# Cleans up its container and image; exits non-zero with a message at the first failure.
#
# Needs root, podman, buildah and debootstrap (apt-get install podman buildah
# debootstrap) and the project's .venv (make install).
set -euo pipefail

CHECK=container-smoke
WORK=$(mktemp -d /tmp/uq-container-smoke.XXXXXX)
# shellcheck source=deploy/lib.sh
source "$(dirname "$0")/lib.sh"
BASE_IMAGE=${BASE_IMAGE:-}
LOCAL_BASE=localhost/uq-base:bookworm
IMAGE=localhost/uq-service:smoke
CONTAINER=uq-service-smoke-$$
MODELS=$REPOSITORY/build/model
export BUILDAH_ISOLATION=chroot  # the default (crun) fails: cgroups in hybrid mode

CONTAINER_NAMESPACE=
# every process in the container's mount namespace: bentoml's workers leave buildah's
# process group, and PID 1 adopts them
container_processes() {
    local pid
    [ -n "$CONTAINER_NAMESPACE" ] || return 0
    for pid in /proc/[0-9]*; do
        [ "$(readlink "$pid/ns/mnt" 2>/dev/null)" = "$CONTAINER_NAMESPACE" ] && echo "${pid#/proc/}"
    done
}

cleanup() {
    stop_server
    container_processes | xargs -r kill -KILL 2>/dev/null || true
    buildah rm "$CONTAINER" >/dev/null 2>&1 || true
    [ "${KEEP_IMAGE:-0}" = 1 ] || podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
    rm -rf "$WORK" "$MODELS"
}
trap cleanup EXIT

for tool in podman buildah curl; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (apt-get install podman buildah curl)"
done
require_venv

make_base_image() {
    if podman image exists "$LOCAL_BASE"; then
        step "base image $LOCAL_BASE exists"
        return
    fi
    command -v debootstrap >/dev/null || fail "debootstrap is not installed (apt-get install debootstrap)"
    step "making the base image $LOCAL_BASE with debootstrap"
    local rootfs=$WORK/rootfs mirror
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" > "$WORK/debootstrap.log" 2>&1 \
        || fail "debootstrap failed: $(tail -n 1 "$WORK/debootstrap.log")"
    rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
    # pip inside must trust what the host trusts (this network's proxy re-signs TLS);
    # the host's pip configuration points at local paths that the image lacks
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\ndefault-timeout = 180\n' \
        > "$rootfs/etc/pip.conf"
    tar -C "$rootfs" -c . | podman import - "$LOCAL_BASE" > "$WORK/import.log" 2>&1 \
        || fail "podman import of the base rootfs failed"
    rm -rf "$rootfs"
}

# export_models: the models to bake in, as .bentomodel files in build/model/; sets
# GENERATOR to the generator's tag when one is among them
GENERATOR=
export_models() {
    mkdir -p "$MODELS"
    if [ -n "${MODEL_TAG:-}" ]; then
        step "exporting $MODEL_TAG"
        "$PYTHON" -m bentoml models export "$MODEL_TAG" "$MODELS/uq-classifier.bentomodel" \
            > /dev/null || fail "cannot export $MODEL_TAG"
        return
    fi
    train_classifier "$WORK/bentoml"
    train_generator "$WORK/bentoml"
    for model in uq-classifier uq-generator; do
        BENTOML_HOME=$WORK/bentoml "$PYTHON" -m bentoml models export "$model:latest" \
            "$MODELS/$model.bentomodel" > /dev/null || fail "cannot export $model"
    done
    GENERATOR=uq-generator:latest
}

if [ -z "$BASE_IMAGE" ]; then
    make_base_image
    BASE_IMAGE=$LOCAL_BASE
fi
export_models

step "building $IMAGE from $BASE_IMAGE"
podman build --isolation=chroot --format docker --pull=never \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE" "$REPOSITORY" > "$WORK/build.log" 2>&1 \
    || fail "podman build failed: $(tail -n 3 "$WORK/build.log")"
SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE")
step "image size $((SIZE / 1000000)) MB"

PORT=$(free_port)
buildah from --pull-never --name "$CONTAINER" "$IMAGE" > /dev/null || fail "buildah from failed"
step "serving inside the container on 127.0.0.1:$PORT${GENERATOR:+ with the generator $GENERATOR}"
serve "$WORK/serve.log" buildah run --isolation chroot "$CONTAINER" -- \
    env ${GENERATOR:+"UQ_GENERATOR=$GENERATOR"} bentoml serve --host 127.0.0.1 --port "$PORT"
for _ in $(seq 1 30); do
    SERVE_PID=$(pgrep -f "bentoml serve --host 127.0.0.1 --port $PORT" | grep -vx "$SERVER_PID" \
        | tail -n 1 || true)
    NAMESPACE=$(readlink "/proc/${SERVE_PID:-0}/ns/mnt" 2>/dev/null || true)
    if [ -n "$NAMESPACE" ] && [ "$NAMESPACE" != "$(readlink /proc/self/ns/mnt)" ]; then
        CONTAINER_NAMESPACE=$NAMESPACE
        break
    fi
    sleep 1
done

wait_ready "http://127.0.0.1:$PORT" "$WORK/serve.log"
step "ready"
check_contract "http://127.0.0.1:$PORT" "$WORK/serve.log"
step "PASSED"
