#!/usr/bin/env bash
# Batch inference container: find the MLflow run's model, then run daskinfer on
# INPUT_DATA_DIR. Extra arguments (key=value overrides) are passed through.
#
# With MLFLOW_TRACKING_URI set, the model is runs:/$PRED_MODEL_UUID/model, resolved and
# downloaded by daskinfer through MLflow (once, into $MODELS_DIR/mlflow-cache). Without it,
# the model is fetched from the S3 layout the runs were stored in, unless it is mounted.
#
#   INPUT_DATA_DIR    documents to score (folder or s3:// URI)                 required
#   PRED_MODEL_UUID   MLflow run id whose artifacts/model to use               required unless PRED_MODEL_PATH
#   PRED_MODEL_PATH   a model already on disk (mounted), or any model URI; wins over the UUID
#   MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD (or _TOKEN),
#   MLFLOW_S3_ENDPOINT_URL: the tracking server and its artifact store, as MLflow reads them
#   MODEL_BUCKET      bucket holding MLflow runs (with PRED_MODEL_UUID, without MLFLOW_TRACKING_URI)
#   MODEL_PREFIX      prefix of the runs in that bucket (default: none)
#   MODELS_DIR        where fetched models are kept (default /home/aisg/from-ecs)
#   AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...: read by boto3, s3fs and
#                     MLflow; never baked into the image.
set -euo pipefail

fail() { echo "daskinfer: error: $*" >&2; exit 2; }

[ -n "${INPUT_DATA_DIR:-}" ] || fail "INPUT_DATA_DIR is not set (the folder or s3:// URI of the documents)"
models_dir="${MODELS_DIR:-/home/aisg/from-ecs}"

cache=()
if [ -z "${PRED_MODEL_PATH:-}" ]; then
  [ -n "${PRED_MODEL_UUID:-}" ] || fail "set PRED_MODEL_UUID (an MLflow run id) or PRED_MODEL_PATH (a mounted model)"
  if [ -n "${MLFLOW_TRACKING_URI:-}" ]; then
    PRED_MODEL_PATH="runs:/$PRED_MODEL_UUID/model"
    # the models volume keeps the download across starts (a later key=value argument wins)
    cache=("inference.model_cache_dir=$models_dir/mlflow-cache")
  else
    mounted="$models_dir/$PRED_MODEL_UUID/artifacts/model"
    if [ -d "$mounted" ]; then
      PRED_MODEL_PATH="$mounted"
    else
      [ -n "${MODEL_BUCKET:-}" ] || fail "MODEL_BUCKET is not set (the bucket holding MLflow runs)"
      PRED_MODEL_PATH="$(python -m daskinfer.mlflow_fetch "$PRED_MODEL_UUID" "$models_dir")"
    fi
  fi
fi

exec daskinfer "inference.model_path=$PRED_MODEL_PATH" "inference.input_data_dir=$INPUT_DATA_DIR" ${cache[@]+"${cache[@]}"} "$@"
