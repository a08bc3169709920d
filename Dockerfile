# syntax=docker/dockerfile:1
# One image, both entry points: `canaryml operator` and `canaryml serve` / `canaryml router`.
#
# The build stage uses Debian 12's own Python 3.11, the same interpreter at the same path
# (/usr/bin/python3.11) as the distroless runtime, so the virtual environment copied across
# runs unchanged there. The runtime has no shell and no package manager, runs as uid 65532
# (distroless "nonroot", the uid the operator's pods run as) and writes only to mounted
# volumes: the serving pods mount /tmp and /var/cache/canaryml, the operator /tmp.
#
#   docker build -t canaryml .                       # the base install
#   docker build --build-arg EXTRAS=s3,gcs -t canaryml .  # with optional model storages
#
# The base images are build arguments so that a release pins them by digest (a tag moves, a
# digest is the bytes that were tested): `docker buildx imagetools inspect IMAGE` prints a tag's
# digest, then
#   docker build --build-arg BUILD_IMAGE=debian:12-slim@sha256:... \
#     --build-arg RUNTIME_IMAGE=gcr.io/distroless/python3-debian12:nonroot@sha256:... .
# Keep the tag in front of the digest: it says which release line the digest belongs to.
ARG BUILD_IMAGE=debian:12-slim
ARG RUNTIME_IMAGE=gcr.io/distroless/python3-debian12:nonroot

FROM ${BUILD_IMAGE} AS build
ARG EXTRAS=""
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/*
# python3.11, not python3: the venv links to /usr/bin/python3.11, which distroless has too.
RUN python3.11 -m venv /opt/canaryml
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY api ./api
COPY httpd ./httpd
COPY server ./server
COPY router ./router
COPY operator ./operator
COPY cli ./cli
# The libraries' own test suites (about 110 MB of scipy, pandas, numpy...) are never imported.
# constraints.txt pins every version (scripts/lock.sh), so the image gets the set CI tested.
RUN /opt/canaryml/bin/pip install --constraint constraints.txt ".${EXTRAS:+[$EXTRAS]}" \
    && /opt/canaryml/bin/pip uninstall --yes pip \
    && find /opt/canaryml/lib -type d -name tests -prune -exec rm -rf {} + \
    && /opt/canaryml/bin/canaryml --help >/dev/null

FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=build /opt/canaryml /opt/canaryml
ENV PATH=/opt/canaryml/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/opt/canaryml/bin/canaryml"]
CMD ["--help"]
