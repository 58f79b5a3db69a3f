#!/usr/bin/env bash
# Build the stage images and tag them with the package version (the tags step_configs uses by default).
#
#   images/build.sh [options] [light] [deepmd] [fp-ase] [fp-cp2k]      (default: all four, in that order)
#     --engine docker|podman   container engine (default: docker if it answers, else podman)
#     --registry REG/          tag prefix, e.g. registry.example.org/team/ (then set dflow_config.image_registry)
#     --base IMAGE             Debian 12 base image (default: the Dockerfile's debian:12.11-slim)
#     --push                   push every image built
#     --lock                   after building light, rewrite requirements/light.lock from the image's pip freeze
#     --print                  print the image tags and exit (nothing is built)
#   DEVICE=cuda images/build.sh deepmd    builds the CUDA variant, tagged <version>-cuda
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)
engine="" registry="" base="" push=0 lock=0 print=0 images=()
while [ $# -gt 0 ]; do
    case "$1" in
        --engine) engine=$2; shift 2 ;;
        --registry) registry=$2; shift 2 ;;
        --base) base=$2; shift 2 ;;
        --push) push=1; shift ;;
        --lock) lock=1; shift ;;
        --print) print=1; shift ;;
        light|deepmd|fp-ase|fp-cp2k) images+=("$1"); shift ;;
        *) echo "build.sh: unknown argument $1 (see the header of images/build.sh)" >&2; exit 2 ;;
    esac
done
[ ${#images[@]} -gt 0 ] || images=(light deepmd fp-ase fp-cp2k)
device=${DEVICE:-cpu}

tag_of() {  # image name -> full tag
    local suffix=""
    [ "$1" = deepmd ] && [ "$device" != cpu ] && suffix="-$device"
    echo "${registry}dflow-simplify/$1:${version}${suffix}"
}

if [ "$print" = 1 ]; then
    for name in "${images[@]}"; do echo "$name $(tag_of "$name")"; done
    exit 0
fi
if [ -z "$engine" ]; then
    if docker info > /dev/null 2>&1; then engine=docker; else engine=podman; fi
fi

for name in "${images[@]}"; do
    args=(--build-arg "VERSION=$version" -f "images/$name/Dockerfile" -t "$(tag_of "$name")")
    if [ "$engine" = podman ]; then args+=(--format docker); fi  # keeps SHELL (OCI images have none)
    if [ "$name" = light ]; then
        if [ -n "$base" ]; then args+=(--build-arg "BASE_IMAGE=$base"); fi
    else
        args+=(--build-arg "LIGHT_IMAGE=$(tag_of light)")
    fi
    if [ "$name" = deepmd ]; then args+=(--build-arg "DEVICE=$device"); fi
    echo "== $engine build $(tag_of "$name")"
    "$engine" build "${args[@]}" ${BUILD_EXTRA_ARGS:-} .
    if [ "$name" = light ] && [ "$lock" = 1 ]; then
        "$engine" run --rm "$(tag_of light)" pip freeze --exclude dflow-simplify \
            | { echo "# pip freeze of the light image (images/build.sh --lock); constraints for its build"; cat; } \
            > images/requirements/light.lock
    fi
    if [ "$push" = 1 ]; then "$engine" push "$(tag_of "$name")"; fi
done
