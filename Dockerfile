# The loraplane operator image. The operator never imports torch, so the
# image installs the distribution without its ML dependencies and adds only
# what the control path needs (kopf, the Kubernetes client, pydantic,
# prometheus-client, PyYAML): ~150 MB instead of several GB.
# Not built in CI (no Docker engine on the CI machines); build with
#   docker build -t ghcr.io/loraplane/operator:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY loraplane ./loraplane
COPY operator ./operator
COPY modelstore ./modelstore
COPY worker_image ./worker_image
COPY training_jobs ./training_jobs
COPY perf ./perf
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --uid 10001 --create-home loraplane
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl --no-deps \
 && pip install --no-cache-dir "kopf>=1.37" "kubernetes>=29" "pydantic>=2.6,<3" "prometheus-client>=0.20" "pyyaml>=6" \
 && rm -rf /wheels
USER 10001
EXPOSE 8080
ENTRYPOINT ["loraplane", "operator", "run"]
