#!/usr/bin/env bash
# Build the JSON reader's two test programs from src/json.cpp alone, without libtorch or CMake (seconds):
#   json_check  g++ as CMakeLists.txt's Release build compiles the client (-O3): the reader as classify runs it
#   json_fuzz   clang++ -fsanitize=fuzzer,address,undefined: libFuzzer's harness (fuzz/json_fuzz.cpp)
# into cpp/build-json, or BUILD_DIR (absolute, or relative to cpp/). tests/repo/test_cpp_json.py runs both;
# `make test-tools` installs clang and its libFuzzer runtime (Debian's clang and libclang-rt-14-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-json}
BUILD_DIR=${BUILD_DIR#cpp/}
mkdir -p "$BUILD_DIR"

g++ -std=c++17 -O3 -DNDEBUG -Wall -Wextra -Werror -Isrc tests/json_check.cpp src/json.cpp -o "$BUILD_DIR/json_check"
# -fno-sanitize-recover: an undefined-behaviour report stops the run, so the fuzzer counts it as a crash.
clang++ -std=c++17 -g -O1 -Wall -Wextra -Werror -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -Isrc fuzz/json_fuzz.cpp src/json.cpp -o "$BUILD_DIR/json_fuzz"
echo "built $BUILD_DIR/json_check and $BUILD_DIR/json_fuzz"
