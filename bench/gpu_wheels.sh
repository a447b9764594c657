#!/usr/bin/env bash
# Run where the package registries are reachable: downloads into ./.whl (git-ignored) the wheels that
# the GPU machine's image lacks (CPython 3.12, x86-64: grain and its array-record / portpicker,
# ml-collections, nibabel). Carry `.whl` to the GPU machine with the working tree; bench/gpu_suite.sh
# installs from it, offline, when an import fails. Extra NAME==VERSION arguments are fetched too.
set -eu
cd "$(git rev-parse --show-toplevel)"
mkdir -p .whl
platforms=""
for glibc in 17 24 27 28 31 34; do platforms="$platforms --platform manylinux_2_${glibc}_x86_64"; done
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  $platforms --platform manylinux2014_x86_64 -d .whl \
  "grain>=0.2.12,<0.3" array-record portpicker "ml-collections>=1.0,<2" "nibabel>=5.2,<6" "$@"
du -sh .whl
