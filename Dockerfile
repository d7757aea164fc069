# GPU host image for the DDPM streaming server, rebuildable from public packages alone.
#   docker build -t ddpm-demo .
#   docker run --gpus all -p 127.0.0.1:8000:8000 ddpm-demo
# PyPI's Linux torch wheels carry the CUDA runtime (the nvidia-* wheels in the lock), so the host needs
# only the NVIDIA driver and the NVIDIA container toolkit. Dependencies come from requirements-image.lock
# (`make lock` regenerates it); the pyproject ranges are for people who use the library.
FROM debian:bookworm-slim AS deps

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only the lock: a code or README edit leaves this (large) layer cached. The optional build secret
# pip_ca is a CA bundle for pip, for a network that reaches PyPI through a TLS proxy
# (`--secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt`); a secret is never stored in a layer.
COPY requirements-image.lock /tmp/requirements-image.lock
RUN --mount=type=secret,id=pip_ca \
    if [ -f /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && python3 -m venv /opt/venv \
    && pip install --require-hashes -r /tmp/requirements-image.lock \
    && rm /tmp/requirements-image.lock

# A wheel of the packages; the page's templates and static files travel inside the app package.
FROM deps AS wheel
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY engine ./engine
COPY app ./app
COPY templates ./app/templates
COPY static ./app/static
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

FROM deps
# A plain (non-editable) install, the code root-owned and read-only to the service user. The wheel is
# mounted from its stage rather than copied, so it is not kept in a layer of its own.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    pip install --no-deps /tmp/wheels/*.whl \
    && useradd --create-home --uid 10001 ddpm

USER ddpm
WORKDIR /home/ddpm
# 0.0.0.0 inside the container; the README's run line publishes it on the host's loopback only.
ENV DDPM_HOST=0.0.0.0 \
    DDPM_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD ["python", "-m", "app.healthcheck"]
CMD ["ddpm", "serve"]
