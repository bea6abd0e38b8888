#!/usr/bin/env bash
# Idempotent set-up of pola_mm's environment in .venv (called by `make setup`).
#
# - If the base Python ($PYTHON, default python3) already has a working OpenMMLab stack
#   (mmcv >= 2.0, < 2.2 with compiled ops), .venv is created on top of it
#   (--system-site-packages) and only what is missing is added.
# - Otherwise .venv gets torch/torchvision and an mmcv wheel built from its PyPI source
#   with its CPU/CUDA ops against that torch. The wheel is cached outside the checkout in
#   $POLA_MM_CACHE (default ~/.cache/pola_mm), keyed by mmcv, torch and Python versions,
#   so the ~13-minute build happens once per machine.
# - Then the pinned pure-Python packages (requirements/runtime.txt, tests.txt) and pola_mm
#   in editable mode; skipped when nothing changed since the last successful run.
# - Ends with tools/check_env.py: a one-line summary of versions, or what is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${POLA_MM_VENV:-$ROOT/.venv}
CACHE=${POLA_MM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pola_mm}
BASE_PYTHON=${PYTHON:-python3}
PY=$VENV/bin/python
STAMP=$VENV/.pola_mm_setup_stamp

log() { echo "[setup] $*"; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }
requirement() { sed -n "s/^$1==\(.*\)$/\1/p" "$ROOT/requirements/build.txt"; }

# $POLA_MM_TORCH / $POLA_MM_TORCHVISION: another torch than the tested pins (for the stack of
# another machine, tools/gpu_wheelhouse.sh)
TORCH_VERSION=${POLA_MM_TORCH:-$(requirement torch)}
TORCHVISION_VERSION=${POLA_MM_TORCHVISION:-$(requirement torchvision)}
MMCV_VERSION=$(requirement mmcv)

create_venv() {
    command -v "$BASE_PYTHON" >/dev/null || die "no Python interpreter '$BASE_PYTHON' (set PYTHON=...)"
    if "$BASE_PYTHON" "$ROOT/tools/check_env.py" --compiled-only --quiet 2>/dev/null; then
        log "reusing the OpenMMLab stack of $("$BASE_PYTHON" -c 'import sys; print(sys.executable)')"
        "$BASE_PYTHON" -m venv --system-site-packages "$VENV"
    else
        log "creating $VENV"
        "$BASE_PYTHON" -m venv "$VENV"
    fi
}

# Print the path of a cached mmcv wheel for the installed torch, building it if needed.
mmcv_wheel() {
    local key dir wheel work
    key=$("$PY" -c 'import sys, torch; print(f"torch{torch.__version__}-cp{sys.version_info[0]}{sys.version_info[1]}-cuda{torch.version.cuda}")')
    # CPU-only machines build CPU ops even with a CUDA build of torch.
    if ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
        key="$key-cpuops"
    fi
    dir="$CACHE/wheels/mmcv-$MMCV_VERSION/$key"
    wheel=$(ls "$dir"/mmcv-*.whl 2>/dev/null | head -n 1 || true)
    if [ -n "$wheel" ]; then
        log "using cached mmcv wheel $wheel" >&2
        echo "$wheel"
        return
    fi
    work=$(mktemp -d)
    log "building mmcv $MMCV_VERSION with ops against torch ($key); this takes ~13 minutes on 2 cores" >&2
    "$PY" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
        -d "$work" "mmcv==$MMCV_VERSION" >&2 || die "could not download the mmcv $MMCV_VERSION source"
    tar -xzf "$work"/mmcv-*.tar.gz -C "$work"
    # torch >= 2.6 headers need C++20; mmcv 2.1.0 asks for C++14/17.
    sed -i 's/c++14/c++20/g; s/c++17/c++20/g' "$work/mmcv-$MMCV_VERSION/setup.py"
    (cd "$work/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        "$PY" -m pip wheel --quiet --no-build-isolation --no-deps -w "$work/dist" . >&2) \
        || die "building mmcv $MMCV_VERSION failed (see the compiler output above)"
    mkdir -p "$dir"
    wheel=$(ls "$work"/dist/mmcv-*.whl)
    cp "$wheel" "$dir/.partial.whl" && mv "$dir/.partial.whl" "$dir/$(basename "$wheel")"
    rm -rf "$work"
    echo "$dir/$(basename "$wheel")"
}

install_compiled_stack() {
    "$PY" "$ROOT/tools/check_env.py" --compiled-only --quiet 2>/dev/null && return
    pip_install "setuptools<81" wheel
    if ! "$PY" -c 'import torch' 2>/dev/null; then
        log "installing torch $TORCH_VERSION, torchvision $TORCHVISION_VERSION"
        # torch pulls in the newest setuptools unless told otherwise; mmcv's setup.py
        # still imports pkg_resources, which setuptools 81 removed.
        pip_install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" "setuptools<81"
    fi
    local wheel
    wheel=$(mmcv_wheel)
    log "installing $(basename "$wheel")"
    "$PY" -m pip uninstall --quiet --yes mmcv mmcv-lite 2>/dev/null || true
    pip_install "$wheel"
}

requirements_digest() {
    cat "$ROOT/setup.py" "$ROOT"/requirements/*.txt | sha256sum | cut -d' ' -f1
}

main() {
    [ -x "$PY" ] || create_venv
    install_compiled_stack
    local digest
    digest="$(requirements_digest) $(readlink -f "$ROOT")"
    if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$digest" ]; then
        log "installing pinned packages and pola_mm (editable)"
        pip_install -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/tests.txt"
        pip_install --no-deps -e "$ROOT"
    fi
    "$PY" "$ROOT/tools/check_env.py" || die "the environment in $VENV is incomplete (see above)"
    echo "$digest" > "$STAMP"
}

main "$@"
