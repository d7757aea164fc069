# GPU host image for the DDPM streaming server.
#   docker build -t ddpm-demo .
#   docker run --gpus all -p 8000:8000 ddpm-demo
# The base pins CUDA 12.4 + cuDNN 9 + PyTorch 2.5.1 (+ torchvision 0.20.1), inside this project's
# torch>=2.4,<2.15 range, so pip keeps the image's CUDA build instead of pulling another one.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DDPM_HOST=0.0.0.0 \
    DDPM_PORT=8000

RUN useradd --create-home --uid 10001 ddpm
WORKDIR /app

# Dependencies first, so code edits don't invalidate this layer.
COPY pyproject.toml README.md ./
RUN mkdir engine app && touch engine/__init__.py app/__init__.py \
    && pip install --quiet . && pip uninstall --yes --quiet ddpm-demo \
    && rm -rf engine app build *.egg-info

# Only what the server needs: the packages (with the bundled model and data), the page.
COPY engine ./engine
COPY app ./app
COPY templates ./templates
COPY static ./static
RUN pip install --quiet --no-deps -e . && chown -R ddpm:ddpm /app

USER ddpm
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)" || exit 1
CMD ["ddpm", "serve", "--host", "0.0.0.0"]
