#!/usr/bin/env bash
# Build cpp/build/classify, classify-bench and test_resize (Release; CMakeLists.txt says what each is).
# What `make cpp` runs; safe to run again (incremental).
#
#   LIBTORCH=/path/to/libtorch cpp/build.sh   use that libtorch (an unzipped download from pytorch.org)
#   cpp/build.sh                              unpack libtorch from the CPU wheel of torch 2.13.0 into cpp/libtorch
#   BUILD_TYPE=Debug BUILD_DIR=cpp/build-debug cpp/build.sh   another build (docs/cpp-client.md's measurements)
#
# Missing cmake, g++ or Debian's libopencv-dev are installed with apt-get when running as root;
# otherwise the script says what to install and fails (scripts/ensure-debian-package.sh).
set -euo pipefail
cd "$(dirname "$0")"

TORCH_VERSION=2.13.0
WHEEL_NAME="torch-${TORCH_VERSION}+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
BUILD_DIR=${BUILD_DIR:-build}
BUILD_DIR=${BUILD_DIR#cpp/}
BUILD_TYPE=${BUILD_TYPE:-Release}

fail() { echo "cpp/build.sh: $*" >&2; exit 1; }

# OpenCV is there when its CMake config is (the glob is expanded by the script); zlib when its header is.
../scripts/ensure-debian-package.sh cmake cmake g++ g++ \
    '/usr/lib/*/cmake/opencv4/OpenCVConfig.cmake' libopencv-dev /usr/include/zlib.h zlib1g-dev

find_wheel() {
    # TORCH_WHEEL if set; else pip, which finds the wheel in its configured find-links folder or
    # index (on this machine pip.conf's find-links=/opt/wheels holds it) and copies it here.
    [ -n "${TORCH_WHEEL:-}" ] && [ -f "$TORCH_WHEEL" ] && { echo "$TORCH_WHEEL"; return; }
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
echo "built cpp/$BUILD_DIR/classify, classify-bench and test_resize ($BUILD_TYPE, libtorch $libtorch)"
