# CPU image of slicesr with every extra. For GPU nodes, install the CUDA build of torch 2.13 instead
# of the CPU wheel; nothing else changes (nccl, bf16 and DeepSpeed ops are configuration).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends build-essential git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/slicesr
# torch first, pinned: pass TORCH_PIP_ARGS with your CPU or CUDA wheel index as needed.
ARG TORCH_PIP_ARGS=""
RUN pip install --upgrade "pip>=24" \
    && pip install "torch==2.13.0" $TORCH_PIP_ARGS
COPY setup.cfg pyproject.toml README.md ./
COPY slicesr slicesr
COPY cluster cluster
COPY preprocessing preprocessing
COPY configs configs
RUN pip install ".[s3,cluster,tracking,eval]"

ENTRYPOINT ["slicesr"]
CMD ["--help"]
