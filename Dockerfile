# The one application image of the production stack (docker-compose.yml): the `migrate`, `api`
# and `worker` services all run it with different commands.
#
# Base image: python:3.11-slim, not nvidia/cuda:*-runtime. The torch 2.14.1 wheel from PyPI is a
# CUDA build that brings its own CUDA runtime, cuBLAS, cuDNN, NCCL, ... as nvidia-* pip wheels;
# the only GPU piece it needs from outside is the driver (libcuda.so), which the NVIDIA container
# toolkit mounts into the container when a service reserves a GPU (the worker does). A CUDA base
# image would only add a second, unused copy of those libraries (gigabytes) and a second Python.
# The host's driver must be new enough for the wheel's CUDA version (CUDA 13: driver >= 580).
#
# The bookworm variant is pinned because the Debian package dataset-fashion-mnist (the real
# Fashion-MNIST files in /usr/share/datasets/fashion-mnist, where tsla_core looks when
# DATA_ROOT/fashion-mnist is absent) is installed from Debian bookworm's archive.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TSLA_HOME=/var/lib/tsla \
    TSLA_DATA_ROOT=/data

# System layer: the Fashion-MNIST data set ships in the image; g++ compiles the fused batch-norm
# kernel of CPU training on first use (tsla_core/kernels/; without it CPU training is slower).
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist g++ \
    && rm -rf /var/lib/apt/lists/*

# Non-root user. The state folders are created here, owned by it, so that a new named volume
# mounted on /var/lib/tsla/checkpoints (a copy of the image's folder on first use) is writable.
RUN groupadd --system --gid 10001 tsla \
    && useradd --system --uid 10001 --gid tsla --home-dir /home/tsla --create-home \
        --shell /usr/sbin/nologin tsla \
    && mkdir -p /var/lib/tsla/checkpoints /var/lib/tsla/work /data \
    && chown -R tsla:tsla /var/lib/tsla /data

WORKDIR /app

# Dependency layer, before any code, so that editing code does not reinstall torch (gigabytes).
# The stub is the dependency list itself, read from pyproject.toml with tomllib, with the `s3`
# extra (object storage for checkpoints): this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['s3']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Code layer. The install is quick: every dependency is already there. It is a plain (not
# editable) install: the migrations ship inside it, so the sources are removed afterwards and
# every command runs from site-packages, from any working directory.
COPY README.md ./
COPY tsla_spec ./tsla_spec
COPY tsla_core ./tsla_core
COPY tsla_service ./tsla_service
COPY tsla_cli ./tsla_cli
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
RUN pip install --no-cache-dir ".[s3]" \
    && cd / && rm -rf /app/*
WORKDIR /var/lib/tsla

USER tsla

EXPOSE 8000

# The API by default; docker-compose.yml gives each service its command.
CMD ["python", "-m", "uvicorn", "api.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
