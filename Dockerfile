# syntax=docker/dockerfile:1
#
# overlay node image: `overlay bootstrap ...`, `overlay supernode ...`, `overlay lookup ...`.
#
#   docker build -t registry.example.com/overlay:0.1.0 .
#   docker run --rm registry.example.com/overlay:0.1.0 --help
#
# The runtime image runs as the unprivileged user 10001 and works with a read-only root
# filesystem: state (and the generated node key) goes to /data, scratch files to /tmp; mount
# writable volumes there (the Helm chart in charts/overlay does).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: install the project and its dependencies into a self-contained venv ----------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# Same path as in the runtime stage: console scripts keep this absolute interpreter path.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# A C compiler and Python's headers for the datagram relay's fast path
# (overlay/relay/_forwarder.c). The official Python images carry the headers; a Debian base
# with Debian's python3 gets them from python3-dev. Optional: without them (an image with no
# package source) the package installs without the extension and the relay forwards every
# datagram in Python.
RUN (command -v cc > /dev/null \
     && python -c 'import os, sysconfig; os.stat(sysconfig.get_paths()["include"] + "/Python.h")' \
        2> /dev/null) \
 || (apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev \
     $(python -c 'import os, sysconfig; os.path.exists(sysconfig.get_paths()["include"] + "/Python.h") or print("python3-dev")') \
     && rm -rf /var/lib/apt/lists/*) \
 || echo "no C compiler or Python headers: the datagram relay's fast path is not built"

WORKDIR /src
# Metadata first, then the package; README*/LICENSE* are optional (the globs may match nothing).
COPY pyproject.toml setup.py README* LICENSE* ./
COPY overlay ./overlay
RUN pip install --no-compile . \
 && python -m compileall -q -j 0 /opt/venv/lib \
 && overlay --help > /dev/null \
 && cd / && python -c 'from overlay.relay.datagram_io import fast_path_available as f; print("relay fast path:", f())'

# ---- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG OVERLAY_UID=10001
ARG OVERLAY_GID=10001

LABEL org.opencontainers.image.title="overlay" \
      org.opencontainers.image.description="Peer-to-peer overlay: Kademlia DHT bootstrap nodes and supernodes" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid "${OVERLAY_GID}" overlay \
 && useradd --system --uid "${OVERLAY_UID}" --gid overlay --home-dir /data --no-create-home \
            --shell /usr/sbin/nologin overlay \
 && install -d -m 0700 -o overlay -g overlay /data

COPY --from=builder /opt/venv /opt/venv

# Bytecode was compiled at build time; never write .pyc at run time (read-only root fs).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Numeric user so Kubernetes' runAsNonRoot can verify it without resolving names.
USER ${OVERLAY_UID}:${OVERLAY_GID}
WORKDIR /data
VOLUME ["/data"]

# Chart defaults: bootstrap 4000/udp (HTTP 8080), supernode 7000/udp+tcp (HTTP 8081).
EXPOSE 4000/udp 7000/udp 7000/tcp 8080/tcp 8081/tcp

# No HEALTHCHECK: the HTTP endpoint is opt-in (--http); Kubernetes probes /healthz and /readyz.
ENTRYPOINT ["overlay"]
CMD ["--help"]
