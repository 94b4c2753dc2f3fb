#!/usr/bin/env bash
# Container smoke test: build the image from the Dockerfile and run the service in it.
#
#   bash deploy/container-smoke.sh
#
# 1. Makes a local base image when none is given (BASE_IMAGE): no container
#    registry is reachable here, so a Debian rootfs from debootstrap with
#    python3, venv and pip, the host's CA bundle and a pip configuration.
# 2. Trains a tiny digits classifier (about 15 s) into a temporary model store
#    and exports it to build/model/ (or exports MODEL_TAG from the default store).
# 3. Builds the image with `podman build --isolation=chroot`.
# 4. Runs `bentoml serve` inside it with `buildah run --isolation chroot` on a free
#    loopback port (`podman run` does not work on these machines), waits for
#    /readyz, sends a real /predict and a bad request, and checks both answers.
# Cleans up its container and image; exits non-zero with a message at the first failure.
#
# Needs root, podman, buildah and debootstrap (apt-get install podman buildah
# debootstrap) and the project's .venv (make install).
set -euo pipefail

REPOSITORY=$(cd "$(dirname "$0")/.." && pwd)
BASE_IMAGE=${BASE_IMAGE:-}
LOCAL_BASE=localhost/uq-base:bookworm
IMAGE=localhost/uq-service:smoke
CONTAINER=uq-service-smoke-$$
WORK=$(mktemp -d /tmp/uq-container-smoke.XXXXXX)
PYTHON=$REPOSITORY/.venv/bin/python
export BUILDAH_ISOLATION=chroot  # the default (crun) fails: cgroups in hybrid mode
SERVER_PID=

fail() { echo "container-smoke: FAILED: $*" >&2; exit 1; }
step() { echo "container-smoke: $* ($(date +%T))"; }

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
    if [ -n "$SERVER_PID" ]; then
        kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
        sleep 2
        kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    fi
    container_processes | xargs -r kill -KILL 2>/dev/null || true
    buildah rm "$CONTAINER" >/dev/null 2>&1 || true
    [ "${KEEP_IMAGE:-0}" = 1 ] || podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
    rm -rf "$WORK" "$REPOSITORY/build/model"
}
trap cleanup EXIT

for tool in podman buildah curl; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (apt-get install podman buildah curl)"
done
[ -x "$PYTHON" ] || fail "no .venv: run 'make install' first"

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

export_model() {
    mkdir -p "$REPOSITORY/build/model"
    local bundle=$REPOSITORY/build/model/uq-classifier.bentomodel
    if [ -n "${MODEL_TAG:-}" ]; then
        step "exporting $MODEL_TAG"
        "$PYTHON" -m bentoml models export "$MODEL_TAG" "$bundle" > /dev/null \
            || fail "cannot export $MODEL_TAG"
        return
    fi
    step "training a tiny digits classifier to bake in"
    BENTOML_HOME=$WORK/bentoml "$PYTHON" -m training.train --dataset digits --epochs 4 \
        --hidden-units 64 --batch-size 64 --learning-rate 0.01 --n-samples 30 \
        --risk-target-error 0.1 --output-dir "$WORK/train" > "$WORK/train.log" 2>&1 \
        || fail "training the smoke model failed: $(tail -n 1 "$WORK/train.log")"
    BENTOML_HOME=$WORK/bentoml "$PYTHON" -m bentoml models export uq-classifier:latest "$bundle" \
        > /dev/null || fail "cannot export the smoke model"
}

if [ -z "$BASE_IMAGE" ]; then
    make_base_image
    BASE_IMAGE=$LOCAL_BASE
fi
export_model

step "building $IMAGE from $BASE_IMAGE"
podman build --isolation=chroot --format docker --pull=never \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE" "$REPOSITORY" > "$WORK/build.log" 2>&1 \
    || fail "podman build failed: $(tail -n 3 "$WORK/build.log")"
SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE")
step "image size $((SIZE / 1000000)) MB"

PORT=$("$PYTHON" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
buildah from --pull-never --name "$CONTAINER" "$IMAGE" > /dev/null || fail "buildah from failed"
step "serving inside the container on 127.0.0.1:$PORT"
setsid buildah run --isolation chroot "$CONTAINER" -- \
    bentoml serve --host 127.0.0.1 --port "$PORT" > "$WORK/serve.log" 2>&1 < /dev/null &
SERVER_PID=$!
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

for _ in $(seq 1 150); do
    kill -0 "$SERVER_PID" 2>/dev/null || fail "the server exited: $(tail -n 3 "$WORK/serve.log")"
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/readyz")" = 200 ] && break
    sleep 2
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/readyz")" = 200 ] \
    || fail "/readyz never answered 200: $(tail -n 3 "$WORK/serve.log")"
step "ready"

INSTANCE=$("$PYTHON" -c "import json; print(json.dumps([float(v % 17) for v in range(64)]))")
ANSWER=$(curl -s -w '\n%{http_code}' -H 'content-type: application/json' \
    -d "{\"instances\": [$INSTANCE], \"n_samples\": 30, \"seed\": 1}" \
    "http://127.0.0.1:$PORT/predict")
[ "$(tail -n 1 <<< "$ANSWER")" = 200 ] || fail "/predict answered $ANSWER"
head -n 1 <<< "$ANSWER" | "$PYTHON" -c "
import json, sys
body = json.load(sys.stdin)
prediction = body['predictions'][0]
assert body['n_samples'] == 30 and len(prediction['probabilities']) == 10, body
assert {'flagged', 'metric', 'score', 'threshold'} <= prediction['risk'].keys(), prediction
print('container-smoke: /predict ->', prediction['class_name'], 'flagged', prediction['risk']['flagged'])
" || fail "/predict's answer lacks the contract's fields: $(head -c 300 <<< "$ANSWER")"

BAD=$(curl -s -w '\n%{http_code}' -H 'content-type: application/json' \
    -d '{"instances": [[1, 2, 3]]}' "http://127.0.0.1:$PORT/predict")
[ "$(tail -n 1 <<< "$BAD")" = 400 ] || fail "a bad request answered $BAD"
head -n 1 <<< "$BAD" | "$PYTHON" -c "
import json, sys
body = json.load(sys.stdin)
assert set(body) == {'error'} and 'instance 0' in body['error'], body
print('container-smoke: bad request ->', body['error'])
" || fail "a bad request's answer is not an error object: $BAD"

step "PASSED"
