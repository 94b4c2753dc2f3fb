# Shell functions of the shipping checks (deploy/check-*.sh, deploy/container-smoke.sh):
# progress and one-line failures, tiny models, a served process and the contract check.
# Source it after setting CHECK (the script's name, for messages) and WORK (its temporary
# folder); it sets REPOSITORY and PYTHON (the project's .venv, from `make install`).
# shellcheck shell=bash

REPOSITORY=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=$REPOSITORY/.venv/bin/python
SERVER_PID=

fail() { echo "$CHECK: FAILED: $*" >&2; exit 1; }
step() { echo "$CHECK: $* ($(date +%T))"; }

require_venv() {
    [ -x "$PYTHON" ] || fail "no .venv: run 'make install' first"
}

free_port() {
    "$PYTHON" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
}

# train_classifier HOME: a tiny digits classifier of the cnn preset (a conv net: what the
# mlp preset serves and more), uq-classifier, about 20 s, in the model store at HOME,
# trained with the project's .venv
train_classifier() {
    step "training a tiny digits classifier into $1"
    (cd "$REPOSITORY" && BENTOML_HOME=$1 "$PYTHON" -m training.train --dataset digits \
        --preset cnn --epochs 6 --conv-filters 8,16 --hidden-units 64 --batch-size 64 \
        --learning-rate 0.01 --n-samples 30 --risk-target-error 0.1 --output-dir "$WORK/train") > "$WORK/train.log" 2>&1 \
        || fail "training the classifier failed: $(tail -n 1 "$WORK/train.log")"
}

# train_generator HOME: a tiny dense GAN generator for digits (uq-generator) beside it
train_generator() {
    step "training a tiny GAN generator into $1"
    (cd "$REPOSITORY" && BENTOML_HOME=$1 "$PYTHON" -m training.train_gan --dataset digits \
        --epochs 1 --latent-dim 8 --output-dir "$WORK/gan") > "$WORK/train-gan.log" 2>&1 \
        || fail "training the generator failed: $(tail -n 1 "$WORK/train-gan.log")"
}

# serve LOG COMMAND...: start COMMAND in a process group of its own, output to LOG
serve() {
    local log=$1
    shift
    setsid "$@" > "$log" 2>&1 < /dev/null &
    SERVER_PID=$!
}

# wait_ready URL LOG: until URL/readyz answers 200 (at most 5 minutes), or fail when the
# server exits
wait_ready() {
    local url=$1 log=$2
    for _ in $(seq 1 150); do
        kill -0 "$SERVER_PID" 2>/dev/null || fail "the server exited: $(tail -n 3 "$log")"
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz")" = 200 ] && return
        sleep 2
    done
    fail "$url/readyz never answered 200: $(tail -n 3 "$log")"
}

# stop_server: SIGTERM to the server's process group, SIGKILL if it lingers past 30 s
# (a Ray head drains for up to 30 s)
stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 30); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 1
    done
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# check_contract URL LOG: the contract check (loadtest/contract_check.py) from the project's
# .venv: every route and option, bad requests, and no traceback in LOG
check_contract() {
    local url=$1 log=$2
    step "checking the contract at $url"
    (cd "$REPOSITORY" && "$PYTHON" -m loadtest.contract_check "$url" --log "$log") \
        || fail "the service at $url breaks the contract (lines above)"
}
