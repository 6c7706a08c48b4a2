#!/usr/bin/env bash
# Download the wheels the offline GPU machine lacks (it has torch, triton, lightning, torchmetrics, einops,
# imageio, h5py, scikit-image, opencv, numpy) into .whl/ (git-ignored via .git/info/exclude).
# gpu_check.sh installs them with `pip install --no-index --no-deps --target /tmp/site`, so the
# packages already there (torch, numpy, triton) are never replaced. Python 3.12, manylinux x86_64.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
mkdir -p "$DEST"
# With dependencies: wandb's closure (pydantic, protobuf, opentelemetry, ...) and jsonargparse[signatures].
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$DEST" wandb "jsonargparse[signatures]" typeshed-client docstring-parser
# Already on the GPU machine (and large): never ship these.
rm -f "$DEST"/{torch,numpy,triton,nvidia_,lightning,pytorch_lightning,torchmetrics,sympy,networkx,jinja2,fsspec,filelock,mpmath,setuptools}*-*.whl
du -sh "$DEST"; ls "$DEST"
