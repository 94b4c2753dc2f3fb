#!/usr/bin/env bash
# What `pip install .` ships and what the Bento from bentofile.yaml carries, each served
# and held to the public contract.
#
#   bash deploy/check-serving.sh
#
# 1. Makes a virtual environment with `pip install .` only (the serving dependencies,
#    no extra) from a copy of the working tree, and trains a tiny digits classifier and
#    GAN generator into a temporary model store with the project's .venv.
# 2. Serves the installed package (`bentoml serve service.service:UQService` from an
#    empty folder, so nothing comes from the source tree) with the generator configured,
#    and runs the contract check (python -m loadtest.contract_check) against it.
# 3. Builds the Bento with `bentoml build`, uninstalls the project from the virtual
#    environment (its serving dependencies stay: what bentofile.yaml installs), serves
#    `uq-service:latest` from it and runs the contract check again: a file missing from
#    bentofile.yaml's include list fails here.
# Exits non-zero with one line at the first failure. Needs the project's .venv (make install)
# and git (the copy holds the files git tracks or would track).
set -euo pipefail

CHECK=check-serving
WORK=$(mktemp -d /tmp/uq-check-serving.XXXXXX)
# shellcheck source=deploy/lib.sh
source "$(dirname "$0")/lib.sh"
VENV=$WORK/venv
export BENTOML_HOME=$WORK/bentoml

cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
require_venv

# serve_and_check NAME TARGET: `bentoml serve TARGET` from the virtual environment, with
# the generator configured, held to the contract (run from an empty folder, not the
# source tree)
serve_and_check() {
    local name=$1 target=$2 port
    port=$(free_port)
    step "serving $name on 127.0.0.1:$port"
    UQ_GENERATOR=uq-generator:latest serve "$WORK/$name.log" \
        "$VENV/bin/bentoml" serve "$target" --host 127.0.0.1 --port "$port"
    wait_ready "http://127.0.0.1:$port" "$WORK/$name.log"
    check_contract "http://127.0.0.1:$port" "$WORK/$name.log"
    stop_server
}

step "copying the working tree and installing it with 'pip install .'"
mkdir -p "$WORK/source" "$WORK/run"
cd "$WORK/run"
git -C "$REPOSITORY" ls-files -z --cached --others --exclude-standard \
    | tar -C "$REPOSITORY" --null -T - -c | tar -x -C "$WORK/source" \
    || fail "cannot copy the working tree (is $REPOSITORY a git checkout?)"
python3 -m venv "$VENV" || fail "python3 -m venv failed (apt-get install python3-venv)"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "$WORK/source" \
    > "$WORK/pip.log" 2>&1 || fail "pip install . failed: $(tail -n 1 "$WORK/pip.log")"
train_classifier "$BENTOML_HOME"
train_generator "$BENTOML_HOME"

serve_and_check pip-install service.service:UQService

step "building the Bento from bentofile.yaml"
(cd "$WORK/source" && UQ_MODEL=uq-classifier:latest UQ_GENERATOR=uq-generator:latest \
    "$PYTHON" -m bentoml build) > "$WORK/build.log" 2>&1 \
    || fail "bentoml build failed: $(tail -n 1 "$WORK/build.log")"
"$VENV/bin/pip" uninstall --yes --quiet uq-serving > "$WORK/pip.log" 2>&1 \
    || fail "cannot uninstall the project: $(tail -n 1 "$WORK/pip.log")"
serve_and_check bento uq-service:latest

step "PASSED"
