#!/usr/bin/env bash
# Rehearse the by-hand cluster route of deploy/README.md on one host, end to end:
#   PostgreSQL (Optuna trials and MLflow metadata) -> deploy/mlflow-server.sh (proxied artifacts)
#   -> a token-auth Ray head with its job server -> `ray job submit --working-dir . -- micro-doe run study.yaml`
# from a user's project folder holding only study.yaml. Then it checks what a cluster user relies on:
# every trial COMPLETE in PostgreSQL, every run's artifact URI `mlflow-artifacts:/…` (short, no driver
# path), the files under the server's --artifacts-destination, the project folder untouched.
#
#   bash deploy/rehearse-job-submit.sh [WORKDIR]      # default: a new folder under /tmp; ≈ 2 min quiet on 2 cores
#
# Needs initdb/pg_ctl/psql on PATH (as root it runs PostgreSQL as the `postgres` user), micro-doe with
# the cluster extra (psycopg) and ray[default] in the active environment. Ports: 5433, 5055, 6390, 8266,
# all on 127.0.0.1 except Ray's GCS and raylet (see "Local runs: what listens where" in deploy/README.md).
# Stops everything it started on exit, and nothing else (not another Ray); leaves WORKDIR for inspection.
set -euo pipefail
W=${1:-$(mktemp -d /tmp/micro-doe-rehearsal-XXXX)}
mkdir -p "$W"/pg "$W"/pglog "$W"/mlflow-artifacts "$W"/project
as_pg() { if [ "$(id -u)" = 0 ]; then chown -R postgres "$W"/pg "$W"/pglog; su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=${RAY_AUTH_TOKEN:-$(python -c "import secrets; print(secrets.token_hex(16))")}
export RAY_USAGE_STATS_ENABLED=0 MLFLOW_PID=
RAYTMP="$W"/ray  # this rehearsal's Ray: its processes name this folder, so cleanup stops only them
stop_our_ray() {  # (a plain `ray stop` stops every Ray on the machine, another test run's too)
  pkill -TERM -f -- "$RAYTMP" 2>/dev/null || true
  for _ in $(seq 10); do pgrep -f -- "$RAYTMP" >/dev/null || return 0; sleep 1; done
  pkill -KILL -f -- "$RAYTMP" 2>/dev/null || true  # gcs_server and raylet may outlast SIGTERM
}
cleanup() {
  stop_our_ray
  [ -n "$MLFLOW_PID" ] && kill "$MLFLOW_PID" 2>/dev/null || true
  as_pg "pg_ctl -D $W/pg stop -m fast" >/dev/null 2>&1 || true
}
trap cleanup EXIT

as_pg "initdb -D $W/pg -A trust -U postgres >/dev/null && pg_ctl -D $W/pg -o '-p 5433 -k /tmp -c listen_addresses=127.0.0.1' -l $W/pglog/pg.log -w start >/dev/null"
psql -h 127.0.0.1 -p 5433 -U postgres -q -c "CREATE ROLE doe LOGIN" -c "CREATE DATABASE optuna OWNER doe" -c "CREATE DATABASE mlflow OWNER doe"

MLFLOW_BACKEND=postgresql+psycopg://doe@127.0.0.1:5433/mlflow MLFLOW_ARTIFACTS="$W"/mlflow-artifacts MLFLOW_PORT=5055 \
  bash "$(dirname "$0")"/mlflow-server.sh > "$W"/mlflow.log 2>&1 &
MLFLOW_PID=$!
ray start --head --temp-dir "$RAYTMP" --port 6390 --dashboard-host 127.0.0.1 --dashboard-port 8266 --num-cpus 2 \
  > "$W"/ray.log 2>&1
for _ in $(seq 60); do curl -sf http://127.0.0.1:5055/health >/dev/null && break; sleep 1; done

cat > "$W"/project/study.yaml <<EOF
# submitted as a Ray job: trials in PostgreSQL, runs and artifacts through the MLflow server
name: rehearsal
generator: {kind: micro3diff, model: "pretrained:spheres-32"}
search:
  n_h: {int: [0, 1]}
  steps: {int: [8, 12]}
samples_per_trial: 2
objectives:
  - {name: s2_error, direction: minimize}
  - {name: lineal_path_error, direction: minimize}
sampler: {kind: tpe, seed: 0}
budget: {n_trials: 3}
storage: postgresql+psycopg://doe@127.0.0.1:5433/optuna
tracking: http://127.0.0.1:5055
artifacts: $W/optuna-artifacts
EOF
(cd "$W"/project && RAY_ADDRESS=http://127.0.0.1:8266 ray job submit --working-dir . -- micro-doe run study.yaml) > "$W"/job.log 2>&1 \
  || { tail -20 "$W"/job.log; echo "FAIL: the job failed (log: $W/job.log)"; exit 1; }

q() { psql -h 127.0.0.1 -p 5433 -U postgres -d "$1" -Atc "$2"; }
states=$(q optuna "select string_agg(state::text, ',' order by number) from trials")
uris=$(q mlflow "select count(*) from runs where artifact_uri not like 'mlflow-artifacts:/%'")
longest=$(q mlflow "select max(length(artifact_uri)) from runs")
files=$(find "$W"/mlflow-artifacts -type f | wc -l)
extra=$(find "$W"/project -mindepth 1 ! -name study.yaml | wc -l)
echo "trials: $states; runs outside mlflow-artifacts:/ $uris; longest artifact URI $longest chars;" \
     "files under --artifacts-destination $files; new files in the project folder $extra"
[ "$states" = "COMPLETE,COMPLETE,COMPLETE" ] && [ "$uris" = 0 ] && [ "$files" -gt 0 ] && [ "$extra" = 0 ] \
  && echo "PASS (logs in $W)" || { echo "FAIL (logs in $W)"; exit 1; }
