#!/usr/bin/env bash
# Sets up a development environment (idempotently) and runs gpumat's demo or tests.
#
#   ./dev.sh run [ARGS...]    the main job: train LeNet-5 on Fashion-MNIST on the best
#                             backend (python -m gpumat train lenet5 --dataset
#                             fashion-mnist --epochs 10 ARGS...; e.g. --backend cpu)
#   ./dev.sh test [ARGS...]   python -m pytest -q ARGS...   (tests/ by default;
#                             requires the native module and the opencl backend)
#   ./dev.sh demo [ARGS...]   python -m gpumat demo ARGS... (the kernels vs NumPy)
#   ./dev.sh setup            only the setup below
#
# Setup, each step skipped when already done:
#   1. Debian packages: PoCL (an OpenCL device on the CPU), the OpenCL ICD
#      loader and headers, clinfo, CLBlast, and Fashion-MNIST (the main job's
#      data).  Needs root (or sudo); otherwise the commands to run are printed
#      and setup goes on without them.
#   2. .venv, a virtual environment made by python3 -m venv ($PYTHON overrides).
#   3. pip install -e ".[opencl,test]" into it (plus the cuda extra where
#      nvidia-smi sees a GPU), repeated only when
#      pyproject.toml, CMakeLists.txt, kernels/cpu/ (the native module's
#      sources) or the package layout changed since the last install.
# GPUMAT_SKIP_SETUP=1 skips all of it, for fast reruns.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$REPO_ROOT"

VENV="$REPO_ROOT/.venv"
VENV_PYTHON="$VENV/bin/python"
BOOTSTRAP_PYTHON="${PYTHON:-python3}"
INSTALL_STAMP="$VENV/.gpumat-install-stamp"
APT_PACKAGES=(pocl-opencl-icd ocl-icd-opencl-dev clinfo libclblast-dev dataset-fashion-mnist)

# A machine with an NVIDIA driver and GPU also gets CuPy, and its tests then require cuda.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    HAVE_GPU=1
    EXTRAS="opencl,cuda,test"
else
    HAVE_GPU=0
    EXTRAS="opencl,test"
fi

log() { printf '[dev.sh] %s\n' "$*" >&2; }

now_ns() { date +%s%N; }

# timed LABEL COMMAND...: runs COMMAND and reports how long it took.
timed() {
    local label=$1
    shift
    local start status
    start=$(now_ns)
    set +e
    "$@"
    status=$?
    set -e
    local elapsed_ms=$((($(now_ns) - start) / 1000000))
    log "$(printf '%-22s %4d.%03ds%s' "$label" $((elapsed_ms / 1000)) $((elapsed_ms % 1000)) \
        "$([ "$status" -eq 0 ] || echo "  (failed, exit $status)")")"
    return "$status"
}

usage() {
    sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

# ------------------------------------------------------------------ setup steps

missing_apt_packages() {
    local package
    for package in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -qx 'install ok installed'; then
            printf '%s\n' "$package"
        fi
    done
}

setup_apt() {
    if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
        log "no dpkg/apt-get here; install by hand: ${APT_PACKAGES[*]} (or your system's equivalents)"
        return 0
    fi
    local missing
    missing=$(missing_apt_packages | tr '\n' ' ')
    missing=${missing% }
    if [ -z "$missing" ]; then
        log "apt packages already installed: ${APT_PACKAGES[*]}"
        return 0
    fi
    local -a as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            as_root=(sudo -n)
        else
            log "missing apt packages: $missing; not root and no password-less sudo, so run as root:"
            log "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $missing"
            log "continuing without them (OpenCL tests may be skipped or fail)"
            return 0
        fi
    fi
    log "installing apt packages: $missing"
    # shellcheck disable=SC2086  # $missing is a list of package names
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
}

setup_venv() {
    if [ -x "$VENV_PYTHON" ] && "$VENV_PYTHON" -c 'import sys' >/dev/null 2>&1; then
        log "virtual environment $VENV exists"
        return 0
    fi
    if [ -e "$VENV" ]; then
        log "$VENV is broken (its Python does not run); recreating it"
        rm -rf "$VENV"
    fi
    log "creating $VENV with $BOOTSTRAP_PYTHON"
    "$BOOTSTRAP_PYTHON" -m venv "$VENV"
}

# Everything whose change needs a new `pip install -e .`: the project metadata,
# the CMake build, the native module's sources, and the package layout (the
# editable install reads Python files from the checkout, but it records which
# directories are packages when it is made, so a new __init__.py or
# subpackage needs a reinstall; a new module in an existing package does not).
# The venv's Python version is in the key too, as the native module is built
# for it.
install_key() {
    {
        "$VENV_PYTHON" -c 'import sys; print(sys.version)'
        printf 'extras %s\n' "$EXTRAS"
        local file
        for file in pyproject.toml CMakeLists.txt $(find kernels/cpu -type f ! -name '*.pyc' 2>/dev/null | LC_ALL=C sort); do
            printf '%s\n' "$file"
            sha256sum "$file"
        done
        find gpumat -name __pycache__ -prune -o -type d -print -o -name __init__.py -print 2>/dev/null |
            LC_ALL=C sort
    } | sha256sum | cut -d' ' -f1
}

native_module_installed() {
    compgen -G "$VENV/lib/python*/site-packages/gpumat/_native*.so" >/dev/null
}

setup_install() {
    local key
    key=$(install_key)
    if [ -f "$INSTALL_STAMP" ] && [ "$(cat "$INSTALL_STAMP")" = "$key" ] && native_module_installed; then
        log "gpumat already installed (editable) with current sources"
        return 0
    fi
    log "pip install -e \".[$EXTRAS]\" (builds gpumat._native)"
    rm -f "$INSTALL_STAMP"
    "$VENV_PYTHON" -m pip install --progress-bar off -q -e ".[$EXTRAS]"
    printf '%s\n' "$key" >"$INSTALL_STAMP"
}

setup() {
    if [ "${GPUMAT_SKIP_SETUP:-0}" = "1" ]; then
        log "GPUMAT_SKIP_SETUP=1: skipping setup"
        if [ ! -x "$VENV_PYTHON" ]; then
            log "error: $VENV does not exist; run once without GPUMAT_SKIP_SETUP"
            exit 1
        fi
        return 0
    fi
    local start
    start=$(now_ns)
    # One setup at a time: two concurrent pip installs into one venv clash.
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$REPO_ROOT/.dev.sh.lock"
        flock 9
    fi
    timed "apt packages" setup_apt
    timed "virtual environment" setup_venv
    timed "pip install" setup_install
    if command -v flock >/dev/null 2>&1; then
        flock -u 9
    fi
    local elapsed_ms=$((($(now_ns) - start) / 1000000))
    log "setup done in $((elapsed_ms / 1000)).$(printf '%03d' $((elapsed_ms % 1000)))s"
}

# ------------------------------------------------------------------ commands

command=${1:-}
[ $# -gt 0 ] && shift

case "$command" in
    run)
        setup
        exec "$VENV_PYTHON" -m gpumat train lenet5 --dataset fashion-mnist --epochs 10 "$@"
        ;;
    demo)
        setup
        exec "$VENV_PYTHON" -m gpumat demo "$@"
        ;;
    test)
        setup
        # A missing native module, or no OpenCL device although PoCL was just
        # installed, is a failure here rather than a smaller run.  Set
        # GPUMAT_REQUIRE_BACKENDS= (empty) to require no backend.
        export GPUMAT_REQUIRE_NATIVE=1
        if [ "$HAVE_GPU" = 1 ]; then
            export GPUMAT_REQUIRE_BACKENDS="${GPUMAT_REQUIRE_BACKENDS-opencl,cuda}"
        else
            export GPUMAT_REQUIRE_BACKENDS="${GPUMAT_REQUIRE_BACKENDS-opencl}"
        fi
        status=0
        "$VENV_PYTHON" -m pytest -q "$@" || status=$?
        if [ "$status" -eq 5 ]; then
            log "pytest collected no tests (exit 5): treated as a failure"
        fi
        exit "$status"
        ;;
    setup)
        setup
        ;;
    -h | --help | help)
        usage
        ;;
    *)
        usage
        [ -n "$command" ] && log "unknown command: $command"
        exit 2
        ;;
esac
