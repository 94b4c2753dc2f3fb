#!/usr/bin/env bash
# uq-score against a real Ray cluster started with `ray start --head`, with Ray's default
# token authentication, as a user would start one.
#
#   bash deploy/check-ray-cluster.sh
#
# 1. Trains a tiny digits classifier into a temporary model store and writes a small
#    backlog of digits.
# 2. Generates the cluster's token (`ray get-auth-token --generate`, in a home of the
#    cluster's own) and starts a head on 127.0.0.1 (usage stats off): with a token
#    present, Ray turns token authentication on.
# 3. Scores the backlog locally, then with --ray-address 127.0.0.1:PORT from another home,
#    given the token the documented way (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN from
#    `ray get-auth-token`), and compares the scores and summaries bit for bit.
# 4. Checks that a client without the token fails in one line saying what to set.
# Stops the cluster; exits non-zero with one line at the first failure. Needs the
# project's .venv (make install: its ray extra).
set -euo pipefail

CHECK=check-ray-cluster
WORK=$(mktemp -d /tmp/uq-check-ray.XXXXXX)
# shellcheck source=deploy/lib.sh
source "$(dirname "$0")/lib.sh"
RAY=$REPOSITORY/.venv/bin/ray
HEAD_HOME=$WORK/head-home      # the cluster's user: the token in ~/.ray/auth_token
CLIENT_HOME=$WORK/client-home  # a user elsewhere: no token of its own
export BENTOML_HOME=$WORK/bentoml RAY_USAGE_STATS_ENABLED=0
unset RAY_AUTH_MODE RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH  # only the client told so gets the token

cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
require_venv

# score NAME ARGS...: uq-score of the backlog into $WORK/NAME (stderr: $WORK/NAME.err)
score() {
    local name=$1
    shift
    (cd "$REPOSITORY" && "$PYTHON" -m scoring.cli --model uq-classifier:latest \
        --input "npz:$WORK/backlog.npz" --output "$WORK/$name" --seed 3 --no-progress "$@") \
        > "$WORK/$name.out" 2> "$WORK/$name.err"
}

# wait_for_head LOG PORT: until `ray start --block` says the cluster runs and its GCS
# accepts connections on PORT (at most 2 minutes)
wait_for_head() {
    for _ in $(seq 1 60); do
        kill -0 "$SERVER_PID" 2>/dev/null || fail "ray start exited: $(tail -n 3 "$1")"
        grep -q "Ray runtime started" "$1" && accepts "$2" && return
        sleep 2
    done
    fail "the Ray head did not start within 2 minutes: $(tail -n 3 "$1")"
}

# accepts PORT: whether something accepts TCP connections on 127.0.0.1:PORT
accepts() {
    "$PYTHON" -c "import socket; socket.create_connection(('127.0.0.1', $1), 2).close()" \
        2>/dev/null
}

# head_failed MESSAGE: fail with MESSAGE and what the head's log last said
head_failed() {
    fail "$1; the head's log ends: $(tail -n 5 "$WORK/head.log" | tr '\n' ' ')"
}

mkdir -p "$HEAD_HOME" "$CLIENT_HOME"
train_classifier "$BENTOML_HOME"
(cd "$REPOSITORY" && "$PYTHON" -c "
import numpy as np
from sklearn.datasets import load_digits
images = load_digits().images[:48].astype(np.float32)
np.savez('$WORK/backlog.npz', x=images, ids=np.array([f'scan-{i}' for i in range(48)]))
") || fail "cannot write the backlog"

# start_head: a head on a free loopback port ($PORT), its log in $WORK/head.log
start_head() {
    PORT=$(free_port)
    step "starting a Ray head on 127.0.0.1:$PORT with token authentication"
    # the workers import the project's code from the repository
    HOME=$HEAD_HOME PYTHONPATH=$REPOSITORY serve "$WORK/head.log" "$RAY" start --head \
        --node-ip-address 127.0.0.1 --port "$PORT" --dashboard-port "$(free_port)" \
        --ray-client-server-port "$(free_port)" --disable-usage-stats \
        --temp-dir "$WORK/ray-temp" --block
    wait_for_head "$WORK/head.log" "$PORT"
    grep -q "Token authentication is enabled" "$WORK/head.log" \
        || fail "the head started without token authentication: $(grep -m 1 -i token "$WORK/head.log")"
}

# stop_head: `ray start --block` stops what it started on SIGTERM
stop_head() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 1
    done
    stop_server
}

# score_on_cluster: uq-score --ray-address with the token given the documented way
score_on_cluster() {
    HOME=$CLIENT_HOME RAY_AUTH_MODE=token \
        RAY_AUTH_TOKEN=$(HOME=$HEAD_HOME "$RAY" get-auth-token 2>/dev/null) \
        score cluster --ray-address "127.0.0.1:$PORT"
}

HOME=$HEAD_HOME "$RAY" get-auth-token --generate > /dev/null 2> "$WORK/token.log" \
    || fail "ray get-auth-token --generate failed: $(tail -n 1 "$WORK/token.log")"
start_head

step "scoring locally"
score local || fail "uq-score locally failed: $(tail -n 1 "$WORK/local.err")"
step "scoring on the cluster, with its token in RAY_AUTH_TOKEN"
if ! score_on_cluster; then
    # a head that stops answering right after it started has been seen once in many runs:
    # say so with its log, and try a new head once before failing
    echo "$CHECK: uq-score --ray-address failed ($(tail -n 1 "$WORK/cluster.err")); the" \
        "head's log ends: $(tail -n 5 "$WORK/head.log" | tr '\n' ' '); starting a new head"
    stop_head
    rm -rf "$WORK/cluster"
    start_head
    score_on_cluster || head_failed "uq-score --ray-address failed: $(tail -n 1 "$WORK/cluster.err")"
fi
(cd "$REPOSITORY" && "$PYTHON" -c "
import json, sys
from pathlib import Path
from scoring.output import SUMMARY, read_scores
local, cluster = (Path('$WORK', run) for run in ('local', 'cluster'))
if not read_scores(cluster).sort_by('id').equals(read_scores(local).sort_by('id')):
    sys.exit('the scores on the cluster differ from the local ones')
local_summary, cluster_summary = ({key: value for key, value in json.loads(
    (run / SUMMARY).read_text()).items() if key not in ('runner', 'scores')}
    for run in (local, cluster))
if cluster_summary != local_summary:
    sys.exit('summary.json on the cluster differs from the local one')
print(f'$CHECK: {local_summary[\"rows\"]} rows scored on the cluster equal the local run bit for bit')
") || fail "the cluster's run is not the local run (line above)"

step "joining without the token"
if HOME=$CLIENT_HOME score tokenless --ray-address "127.0.0.1:$PORT"; then
    fail "uq-score joined the cluster without its token"
fi
[ "$(wc -l < "$WORK/tokenless.err")" = 1 ] && grep -q "RAY_AUTH_MODE=token" "$WORK/tokenless.err" \
    && grep -q "ray get-auth-token" "$WORK/tokenless.err" \
    || fail "a client without the token was not told in one line what to set: $(head -c 300 "$WORK/tokenless.err")"
cat "$WORK/tokenless.err"

step "stopping the cluster"
stop_head
step "PASSED"
