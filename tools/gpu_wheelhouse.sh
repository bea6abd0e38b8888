#!/usr/bin/env bash
# Wheels of the OpenMMLab stack for a CUDA machine that has PyTorch (with Triton, numpy,
# opencv, scipy, matplotlib, timm, ...) but no OpenMMLab packages and no internet, so that
# pola_mm and tools/analysis/gpu_check.py run there from a copy of the checkout.
#
#   PYTHON=python3.12 TORCH=2.11.0 TORCHVISION=0.26.0 bash tools/gpu_wheelhouse.sh [DIR]
#
# PYTHON: an interpreter here of the target's Python minor version; TORCH, TORCHVISION: the
# target's versions (`python3 -c 'import torch; print(torch.__version__)'` there). Builds,
# through tools/setup_env.sh, an environment of that Python and torch in $POLA_MM_CACHE
# (mmcv compiled against that torch: ~13 minutes once, then cached), then writes to DIR
# (default .whl, ignored by git) the wheels of mmcv, mmengine, mmdet and the small
# packages they need that such an image lacks (PACKAGES below, at the versions tested
# here); nothing else, so the target's own numpy, torch etc. stay in charge. On the target:
#
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site DIR/*.whl
#   PYTHONPATH=/tmp/site python3 tools/analysis/gpu_check.py
#
# mmcv is compiled here, without a GPU, so with its CPU ops only: mmcv ops called on GPU
# tensors (RoIAlign, NMS, the sigmoid focal loss) fail there; gpu_check's training check
# runs mmdet's PyTorch focal loss instead, and pola_mm's backbones need no mmcv op.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${POLA_MM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pola_mm}
: "${PYTHON:?set PYTHON to an interpreter of the Python version of the target machine}"
: "${TORCH:?set TORCH to the torch version of the target machine}"
: "${TORCHVISION:?set TORCHVISION to the torchvision version of the target machine}"
DIR=$(mkdir -p "${1:-$ROOT/.whl}" && cd "${1:-$ROOT/.whl}" && pwd)
PACKAGES=(mmengine mmdet addict yapf platformdirs termcolor pycocotools shapely terminaltables)

log() { echo "[gpu_wheelhouse] $*"; }

py_version=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
venv="$CACHE/venv-py$py_version-torch$TORCH"
log "environment of Python $py_version and torch $TORCH in $venv"
PYTHON="$PYTHON" POLA_MM_VENV="$venv" POLA_MM_CACHE="$CACHE" POLA_MM_TORCH="$TORCH" \
    POLA_MM_TORCHVISION="$TORCHVISION" bash "$ROOT/tools/setup_env.sh"

rm -f "$DIR"/*.whl
mmcv_version=$("$venv/bin/python" -c 'import mmcv; print(mmcv.__version__)')
cp "$(ls "$CACHE/wheels/mmcv-$mmcv_version/torch$TORCH"*"-cp${py_version/./}-"*/mmcv-*.whl)" "$DIR/"
pins=()
for package in "${PACKAGES[@]}"; do
    version=$("$venv/bin/python" -c 'import sys; from importlib.metadata import version; print(version(sys.argv[1]))' "$package")
    pins+=("$package==$version")
done
"$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: -d "$DIR" "${pins[@]}"
log "$(ls "$DIR"/*.whl | wc -l) wheels, $(du -sh "$DIR" | cut -f1), in $DIR"
