#!/usr/bin/env bash
# Runs bench/gpu_sweep.py (one-trial Ray sweeps of MoCo v2 and PP-SSL at 224 px, views on the CPU and
# on the GPU) on a GPU machine whose image has torch, timm, pyarrow and the CUDA stack but not Ray,
# Optuna, pydantic, Kornia or open_clip (and no network): they travel as wheels in .whl/ (git-ignored).
#   bash bench/gpu_sweep.sh download   # here, with pip access: fgray's runtime closure, at this venv's versions
#   bash bench/gpu_sweep.sh [ARGS]     # there: a venv over the image's packages + the wheels, the check into $OUT
# Ray's wheel alone is ~70 MB: carry .whl/ where the machine allows it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION="${GPU_PYTHON:-3.12}"  # the GPU image's Python

if [[ "${1:-}" == download ]]; then
  pins=$(python - <<'PY'
# fgray's runtime requirements and theirs (ray with its default, train, tune and data extras), at the
# versions installed here, minus the large packages the GPU image ships.
import re
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from packaging.requirements import Requirement

IMAGE = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*|numpy|scipy|pandas|pyarrow|pillow|"
                   r"matplotlib|timm|transformers|tokenizers|safetensors|huggingface-hub|jax.*|cupy.*|opencv.*|"
                   r"sympy|networkx|grpcio|setuptools|pip|faiss-.*)$")
with open("pyproject.toml", "rb") as f:  # fgray's own list (its installed metadata may be older)
    roots = [Requirement(line) for line in tomllib.load(f)["project"]["dependencies"]]
seen, todo = {}, [(r, tuple(r.extras)) for r in roots if r.marker is None or r.marker.evaluate()]
while todo:
    req, extras = todo.pop()
    name = re.sub(r"[-_.]+", "-", req.name).lower()
    if name in seen and set(extras) <= seen[name][1]:
        continue
    try:
        dist = distribution(req.name)
    except PackageNotFoundError:
        continue  # an optional dependency not installed here
    seen[name] = (dist.version, seen.get(name, (None, set()))[1] | set(extras))
    for line in dist.requires or []:
        child = Requirement(line)  # a base requirement, or one of an extra this package is wanted with
        if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in ("", *extras)):
            todo.append((child, tuple(child.extras)))
print(" ".join(f"{n}=={v}" for n, (v, _) in sorted(seen.items()) if not IMAGE.match(n)))
PY
)
  # shellcheck disable=SC2086
  python -m pip download --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $pins
  exit
fi

python3 -m venv --system-site-packages /tmp/fgray-venv
# Only what the image lacks is installed: the image's own packages satisfy the rest.
/tmp/fgray-venv/bin/python -m pip install -q --no-index --find-links .whl --no-compile --no-cache-dir \
  "ray[default,train,tune,data]" optuna pydantic open_clip_torch kornia pyyaml
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv || true
exec /tmp/fgray-venv/bin/python bench/gpu_sweep.py --out "${OUT:-out/gpu_sweep}" "$@"
