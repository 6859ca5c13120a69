#!/usr/bin/env bash
# MLflow tracking server for a cluster: PostgreSQL metadata, a shared artifact folder,
# bound to 127.0.0.1 (expose it only through an SSH tunnel or an authenticating proxy).
set -euo pipefail
: "${MLFLOW_BACKEND:?set MLFLOW_BACKEND, e.g. postgresql+psycopg://mlflow:PASSWORD@db-host:5432/mlflow}"
: "${MLFLOW_ARTIFACTS:?set MLFLOW_ARTIFACTS, e.g. /shared/mlflow-artifacts}"
export MLFLOW_DISABLE_TELEMETRY=true
exec mlflow server \
  --host 127.0.0.1 --port "${MLFLOW_PORT:-5000}" \
  --backend-store-uri "$MLFLOW_BACKEND" \
  --artifacts-destination "$MLFLOW_ARTIFACTS"
