#!/usr/bin/env bash
# Give the emulated Arm board a Python 3.11 venv with the project's aarch64 wheels (issue 21).
#
#   scripts/platform/arm64-venv.sh ROOTFS CACHE
#
# Wheels are fetched on the host (pip can fetch another platform's wheels) into CACHE/wheels
# and installed offline inside, --no-deps, so the set is exactly what was fetched: torch and
# executorch pinned together, the project's other dependencies at the host venv's versions.
# The project itself is reinstalled from a wheel of the working tree on every call.
#
# PyPI's torch 2.13.0 for aarch64 is a CUDA build whose NVIDIA libraries this machine's index
# does not serve; scripts/platform/cuda_stubs.py gives torch stand-ins with the same sonames,
# which are never called on a CPU-only board (torch.cuda.is_available() is False).
set -euo pipefail
here=$(dirname "$(realpath "$0")")
repo=$(realpath "$here/../..")
rootfs=$(realpath "${1:?rootfs}")
cache=$(realpath -m "${2:?cache directory}")
py=${HOST_PYTHON:-$repo/.venv/bin/python}
wheels=$cache/wheels
mkdir -p "$wheels" "$cache/project"
# One caller at a time (pytest-xdist workers each set up the board): the others wait here.
exec 9>"$cache/.arm64-venv.lock"
flock 9
platforms=(--platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64
           --platform manylinux2014_aarch64 --platform linux_aarch64)

if [ ! -e "$wheels/.complete" ]; then
    # The host venv's versions, so both sides run the same code (less the x86-only extras).
    "$py" -m pip freeze | grep -v -E '^(-e|#)|mobizo|^torch==|^executorch==|coremltools|scikit|nvidia|cuda|triton' \
        > "$cache/constraints.txt"
    nice -n 19 "$py" -m pip download -q --no-deps --only-binary=:all: "${platforms[@]}" \
        --python-version 3.11 --implementation cp -d "$wheels" torch==2.13.0 executorch==1.5.1
    # executorch's own list less hydra/omegaconf (dev tooling, sdist-only antlr4) and the
    # x86-only coremltools/scikit-learn; torch's less its NVIDIA packages.
    nice -n 19 "$py" -m pip download -q --only-binary=:all: "${platforms[@]}" \
        --python-version 3.11 --implementation cp -c "$cache/constraints.txt" -d "$wheels" \
        "transformers>=4.56,<6" "tokenizers>=0.21" "safetensors>=0.5" "numpy>=1.26" \
        "pydantic>=2.7,<3" "paho-mqtt>=2.1,<3" "tqdm>=4.66" expecttest flatbuffers hypothesis \
        kgb mpmath packaging pandas parameterized py-cpuinfo requests pytorch-tokenizers \
        "torchao>=0.18,<0.19" pyyaml ruamel.yaml sympy tabulate typing-extensions filelock \
        setuptools networkx jinja2 fsspec
    touch "$wheels/.complete"
fi

if [ ! -e "$rootfs/opt/venv/.complete" ]; then
    echo "installing the aarch64 wheels into $rootfs/opt/venv (emulated: several minutes, once)"
    "$here/arm64-run.sh" "$rootfs" "$wheels" sh -c '
        set -e
        python3 -m venv /opt/venv
        nice -n 19 /opt/venv/bin/pip install -q --no-index --no-deps --disable-pip-version-check /share/*.whl'
    "$py" "$here/cuda_stubs.py" "$rootfs" "$rootfs/opt/venv/lib/python3.11/site-packages/torch/lib"
    touch "$rootfs/opt/venv/.complete"
fi

# The working tree, as a wheel (pure Python), reinstalled when it changed so the board runs
# this code. Its digest (names and CRCs of its files) is stamped into the venv. BOARD_SESSION
# (one pytest run; its xdist workers share it) installs once: a later worker must not
# reinstall under a board another worker is running.
session_stamp=$rootfs/opt/venv/.project-session
if [ -n "${BOARD_SESSION:-}" ] && [ "$(cat "$session_stamp" 2>/dev/null)" = "$BOARD_SESSION" ]; then
    exit 0
fi
rm -f "$cache/project"/*.whl
(cd "$repo" && nice -n 19 "$py" -m pip wheel -q --no-deps --no-build-isolation \
    -w "$cache/project" . >/dev/null)
digest=$("$py" -c 'import hashlib, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
print(hashlib.sha256(repr(sorted((i.filename, i.CRC) for i in z.infolist())).encode()).hexdigest())' \
    "$cache"/project/*.whl)
if [ "$(cat "$rootfs/opt/venv/.project" 2>/dev/null)" != "$digest" ]; then
    "$here/arm64-run.sh" "$rootfs" "$cache/project" sh -c \
        'pip install -q --no-index --no-deps --force-reinstall --disable-pip-version-check /share/*.whl'
    echo "$digest" > "$rootfs/opt/venv/.project"
fi
[ -z "${BOARD_SESSION:-}" ] || echo "$BOARD_SESSION" > "$session_stamp"
