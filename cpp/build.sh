#!/usr/bin/env bash
# Build cpp/build/classify (Release). What `make cpp` runs; safe to run again (incremental).
#
#   LIBTORCH=/path/to/libtorch cpp/build.sh   use that libtorch (an unzipped download from pytorch.org)
#   cpp/build.sh                              unpack libtorch from the CPU wheel of torch 2.13.0 into cpp/libtorch
#   BUILD_TYPE=Debug BUILD_DIR=cpp/build-debug cpp/build.sh   another build (the README's measurements)
#
# Missing cmake, g++ or Debian's libopencv-dev are installed with apt-get when running as root;
# otherwise the script says what to install and fails.
set -euo pipefail
cd "$(dirname "$0")"

TORCH_VERSION=2.13.0
WHEEL_NAME="torch-${TORCH_VERSION}+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
BUILD_DIR=${BUILD_DIR:-build}
BUILD_DIR=${BUILD_DIR#cpp/}
BUILD_TYPE=${BUILD_TYPE:-Release}

fail() { echo "cpp/build.sh: $*" >&2; exit 1; }

missing_packages=()
command -v cmake >/dev/null || missing_packages+=(cmake)
command -v g++ >/dev/null || missing_packages+=(g++)
ls /usr/lib/*/cmake/opencv4/OpenCVConfig.cmake >/dev/null 2>&1 || missing_packages+=(libopencv-dev)
if [ ${#missing_packages[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || fail "missing ${missing_packages[*]}: install them (apt-get install ${missing_packages[*]})"
    echo "cpp/build.sh: installing ${missing_packages[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing_packages[@]}" >/dev/null
fi

find_wheel() {
    # This machine keeps the CPU wheel in pip's find-links folder; elsewhere pip fetches it from PyPI's mirror.
    for candidate in "${TORCH_WHEEL:-}" "/opt/wheels/$WHEEL_NAME" "/work/.library/env/packages/$WHEEL_NAME"; do
        [ -n "$candidate" ] && [ -f "$candidate" ] && { echo "$candidate"; return; }
    done
    local download=libtorch.download
    mkdir -p "$download"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
        --platform manylinux_2_28_x86_64 -d "$download" "torch==${TORCH_VERSION}+cpu" >&2 \
        || fail "no $WHEEL_NAME found; set LIBTORCH to an unzipped libtorch or TORCH_WHEEL to the wheel"
    echo "$download/$WHEEL_NAME"
}

if [ -n "${LIBTORCH:-}" ]; then
    [ -f "$LIBTORCH/share/cmake/Torch/TorchConfig.cmake" ] \
        || fail "LIBTORCH=$LIBTORCH has no share/cmake/Torch/TorchConfig.cmake (expected an unzipped libtorch)"
    libtorch=$(cd "$LIBTORCH" && pwd)
else
    libtorch=$PWD/libtorch
    if [ ! -f "$libtorch/.complete" ]; then
        wheel=$(find_wheel)
        echo "cpp/build.sh: unpacking libtorch $TORCH_VERSION (CPU) from $wheel into cpp/libtorch" >&2
        rm -rf "$libtorch" "$libtorch.partial"
        # The wheel is a zip whose torch/ folder is a libtorch: include/, lib/, share/cmake/Torch.
        python3 - "$wheel" "$libtorch.partial" <<'EOF'
import sys, zipfile
wheel, out = sys.argv[1:]
keep = ("torch/include/", "torch/share/cmake/", "torch/lib/libc10.so", "torch/lib/libtorch.so",
        "torch/lib/libtorch_cpu.so", "torch/lib/libtorch_global_deps.so", "torch/lib/libgomp.so.1",
        "torch/lib/libshm.so")
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(keep):
            z.extract(name, out)
EOF
        mv "$libtorch.partial/torch" "$libtorch"
        rm -rf "$libtorch.partial" libtorch.download
        touch "$libtorch/.complete"
    fi
fi

cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DCMAKE_PREFIX_PATH="$libtorch" >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)"
echo "built cpp/$BUILD_DIR/classify ($BUILD_TYPE, libtorch $libtorch)"
