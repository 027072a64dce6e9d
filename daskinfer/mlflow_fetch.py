"""Fetch an MLflow run's model from S3 with boto3, once: `python -m daskinfer.mlflow_fetch UUID DEST`.

The Docker entrypoint calls this when PRED_MODEL_UUID is set and the model is not already
mounted. Objects under s3://$MODEL_BUCKET/$MODEL_PREFIX/<uuid>/artifacts/model/ land in
DEST/<uuid>/artifacts/model; the copy is assembled under a temporary name and renamed, so an
interrupted download is never mistaken for a model. Endpoint and credentials come from the
environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), as boto3 reads them.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import sys
import tempfile

from daskinfer.errors import first_line


def fetch(uuid: str, dest: str, bucket: str, prefix: str) -> str:
    """The local MLflow model folder of run uuid, downloaded unless already there."""
    target = os.path.join(dest, uuid, "artifacts", "model")
    if os.path.isdir(target):
        return target
    import boto3

    s3 = boto3.client("s3")
    root = posixpath.join(prefix, uuid, "artifacts", "model").lstrip("/") + "/"
    keys = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root)
        for obj in page.get("Contents", [])
    ]
    if not keys:
        raise FileNotFoundError(f"no model under s3://{bucket}/{root}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".model-", dir=os.path.dirname(target))
    try:
        for key in keys:
            local = os.path.join(staging, posixpath.relpath(key, root))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            s3.download_file(bucket, key, local)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list) -> int:
    if len(argv) != 2:
        print("usage: python -m daskinfer.mlflow_fetch UUID DEST", file=sys.stderr)
        return 2
    bucket = os.environ.get("MODEL_BUCKET")
    if not bucket:
        print("daskinfer: error: MODEL_BUCKET is not set (the bucket holding MLflow runs)", file=sys.stderr)
        return 2
    try:
        print(fetch(argv[0], argv[1], bucket, os.environ.get("MODEL_PREFIX", "")))
    except Exception as exc:  # boto3's errors are many; the user needs the one line
        print(f"daskinfer: error: cannot fetch model {argv[0]} from s3://{bucket}: {first_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
