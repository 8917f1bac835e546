# Worker/head image of a Ray cluster running slicesr. It installs through scripts/setup.sh, the
# script `make setup` and CI run, so CI tests what the image runs. No data, no credentials inside.
#
#   CPU:  docker build -t slicesr:cpu .
#   CUDA: docker build -t slicesr:cu128 \
#           --build-arg TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu128 --extra-index-url https://pypi.org/simple" .
#   Another base (e.g. a Ray image with Python 3.11): --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311
# GPU paths (nccl, bf16, fused Adam) are configuration (cluster.use_gpu, cluster.bf16), not another image.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_PIP_ARGS=""
ARG EXTRAS="s3,cluster,tracking,eval"
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    TORCH_EXTENSIONS_DIR=/opt/slicesr/.torch_extensions \
    VENV=none PYTHON=python3 TORCH_PIP_ARGS=${TORCH_PIP_ARGS} EXTRAS=${EXTRAS}

# DeepSpeed builds its ops with a compiler; git for pip's VCS metadata
USER 0
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/slicesr
# Dependencies first (a cached layer while only the sources change): the metadata and a stub package.
COPY setup.cfg pyproject.toml README.md ./
COPY scripts/setup.sh scripts/setup.sh
COPY slicesr/__init__.py slicesr/__init__.py
RUN STEP=deps scripts/setup.sh

COPY slicesr slicesr
COPY cluster cluster
COPY preprocessing preprocessing
COPY configs configs
RUN STEP=package scripts/setup.sh \
    && useradd --create-home --uid 1000 slicesr \
    && chmod -R a+rX /opt/slicesr
USER 1000

CMD ["slicesr", "--help"]
