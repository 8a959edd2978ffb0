# The loraplane operator image. The operator never imports torch, so the
# image installs the distribution without its dependencies (--no-deps) and
# adds only the control path's (kopf, the Kubernetes client, pydantic,
# prometheus-client, PyYAML), at the versions pinned in constraints.txt.
#
# Build from the repository root (`loraplane images build --only operator`
# does this with buildah or docker, and caches by content hash):
#   docker build -t loraplane/operator .
# BASE_IMAGE: any Debian-like image with python3 >= 3.11 and its venv module;
# `loraplane images build` passes a local debootstrap bookworm base when no
# registry is reachable.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Only for pip during the build (e.g. a CA bundle mounted at a separate
# path); never set in the image.
ARG PIP_CERT
ARG PIP_INDEX_URL

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONSAFEPATH=1 \
    PATH=/opt/venv/bin:$PATH

# tini from apt where the base lacks it; the venv at /opt/venv.
RUN set -eux; \
    if [ ! -x /usr/bin/tini ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m venv /opt/venv; \
    groupadd --gid 10001 loraplane; \
    useradd --uid 10001 --gid 10001 --home-dir /home/loraplane --create-home --shell /usr/sbin/nologin loraplane

# Set by `loraplane images build` to hashes of the files each RUN step
# bind-mounts: buildah does not hash mounted files into its layer cache, a
# changed argument does invalidate the step. Harmless when unset.
ARG DEPS_HASH
# The build context is bind-mounted into RUN steps (no COPY layers: with
# buildah's vfs storage every layer is a full copy of the filesystem).
RUN --mount=type=bind,source=constraints.txt,target=/mnt/context/constraints.txt \
    set -eux; \
    pip install --disable-pip-version-check -c /mnt/context/constraints.txt --upgrade pip; \
    pip install --disable-pip-version-check -c /mnt/context/constraints.txt \
        kopf kubernetes pydantic prometheus-client pyyaml; \
    mountpoint -q /root/.cache/pip || rm -rf /root/.cache/pip

ARG SOURCE_HASH
# The wheel's build backend (setuptools) comes pinned from constraints.txt;
# the check proves the control path imports without torch or transformers;
# pip is removed: nothing needs it at run time.
RUN --mount=type=bind,source=constraints.txt,target=/mnt/context/constraints.txt \
    --mount=type=bind,source=pyproject.toml,target=/mnt/context/pyproject.toml \
    --mount=type=bind,source=README.md,target=/mnt/context/README.md \
    --mount=type=bind,source=loraplane,target=/mnt/context/loraplane \
    --mount=type=bind,source=operator,target=/mnt/context/operator \
    --mount=type=bind,source=modelstore,target=/mnt/context/modelstore \
    --mount=type=bind,source=worker_image,target=/mnt/context/worker_image \
    --mount=type=bind,source=training_jobs,target=/mnt/context/training_jobs \
    --mount=type=bind,source=perf,target=/mnt/context/perf \
    set -eux; \
    cp -r /mnt/context /tmp/src; \
    PIP_CONSTRAINT=/tmp/src/constraints.txt pip install --disable-pip-version-check --no-deps /tmp/src; \
    rm -rf /tmp/src; \
    python -m loraplane.devcluster.controlpath; \
    pip uninstall -y pip setuptools; \
    mountpoint -q /root/.cache/pip || rm -rf /root/.cache/pip

# HOME only now: during the build pip's cache is root's ($HOME/.cache/pip),
# which `loraplane images build` mounts from the host (buildah --volume).
ENV HOME=/home/loraplane
USER 10001:10001
WORKDIR /home/loraplane
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["loraplane", "operator", "run"]
