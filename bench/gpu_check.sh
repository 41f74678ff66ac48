#!/usr/bin/env bash
# Runs bench/gpu_check.py on a GPU machine whose image has torch, timm and pyarrow but not the rest
# of fgray's needs (no network there): they travel as wheels in .whl/ (git-ignored).
#   bash bench/gpu_check.sh download   # here, with pip access: the wheels, at this venv's versions
#   bash bench/gpu_check.sh [ARGS]     # there: install them to /tmp/site, run the check into $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES="pydantic pydantic_core annotated-types typing-inspection typing_extensions open_clip_torch ftfy wcwidth"
PY_VERSION="${GPU_PYTHON:-3.12}"  # the GPU image's Python

if [[ "${1:-}" == download ]]; then
  pins=$(python - $PACKAGES <<'PY'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
PY
)
  # shellcheck disable=SC2086
  python -m pip download --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $pins
  exit
fi

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv || true
exec python3 bench/gpu_check.py --out "${OUT:-out/gpu_check}" "$@"
