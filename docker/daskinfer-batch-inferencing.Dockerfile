# Batch inference image: daskinfer on a LocalCluster inside the container.
#   docker build -f docker/daskinfer-batch-inferencing.Dockerfile -t daskinfer-batch .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/home/aisg

# The same uid and gid as the original images, so mounted volumes keep their owners.
RUN groupadd --gid 2222 aisg \
    && useradd --uid 2222 --gid 2222 --create-home --home-dir /home/aisg aisg

WORKDIR /home/aisg/daskinfer
COPY --chown=2222:2222 pyproject.toml README.md ./
COPY --chown=2222:2222 daskinfer ./daskinfer
COPY --chown=2222:2222 conf ./conf
COPY --chown=2222:2222 docker/entrypoint.sh /usr/local/bin/daskinfer-entrypoint
# With the MLflow client (daskinfer[mlflow]): PRED_MODEL_UUID resolves through MLFLOW_TRACKING_URI.
RUN pip install --no-cache-dir "./[mlflow]" \
    && mkdir -p /home/aisg/from-ecs /home/aisg/daskinfer/outputs /home/aisg/daskinfer/data \
    && chown -R 2222:2222 /home/aisg

USER 2222:2222
# Models at /home/aisg/from-ecs, documents under ./data, results under ./outputs.
VOLUME ["/home/aisg/from-ecs", "/home/aisg/daskinfer/outputs", "/home/aisg/daskinfer/data"]
ENTRYPOINT ["/usr/local/bin/daskinfer-entrypoint"]
