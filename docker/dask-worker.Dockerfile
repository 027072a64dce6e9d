# Scheduler and worker image for VMs: the same software as the batch image.
#   docker build -f docker/dask-worker.Dockerfile -t daskinfer-worker .
#   docker run --network host daskinfer-worker dask scheduler --host 10.0.0.10
#   docker run --network host -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -e AWS_ENDPOINT_URL \
#       daskinfer-worker dask worker tcp://10.0.0.10:8786 --nthreads 4
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/home/aisg

RUN groupadd --gid 2222 aisg \
    && useradd --uid 2222 --gid 2222 --create-home --home-dir /home/aisg aisg

WORKDIR /home/aisg/daskinfer
COPY --chown=2222:2222 pyproject.toml README.md ./
COPY --chown=2222:2222 daskinfer ./daskinfer
COPY --chown=2222:2222 conf ./conf
COPY docker/dask.yaml /etc/dask/daskinfer.yaml
# With the MLflow client (daskinfer[mlflow]): workers fetch runs:/ and models:/ models themselves.
RUN pip install --no-cache-dir "./[mlflow]" && chown -R 2222:2222 /home/aisg

USER 2222:2222
EXPOSE 8786 8787
CMD ["dask", "worker", "--help"]
