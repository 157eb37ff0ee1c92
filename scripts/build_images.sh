#!/usr/bin/env bash
# Build the job images from containers/<job>/Dockerfile and push them to ECR (`make images`).
#
#   ECR_REGISTRY=123456789012.dkr.ecr.eu-central-1.amazonaws.com scripts/build_images.sh [job...]
#
# Jobs: preprocessing, training, inference (default: all three). Each image is tagged
# <registry>/forecast-assets/<job>:<tag>, the repository the execution role may pull from
# (iam/sagemaker-execution-role-policy.json); it is created if missing. IMAGE_TAG defaults to a
# hash of the files the image is built from, so an unchanged image keeps its tag. PUSH=0 builds
# only (no registry needed). At the end it prints the FORECAST_<JOB>_IMAGE_URI lines for .env.
#
# Needs docker (with a running daemon) and, to push, the AWS CLI with credentials.
set -euo pipefail

if ! command -v docker >/dev/null 2>&1; then
    echo "build_images: docker is not installed or not on PATH. Build the images on a machine" \
        "with Docker, or leave FORECAST_<JOB>_IMAGE_URI empty to run on SageMaker's prebuilt" \
        "image with the wheelhouse (make wheelhouse)." >&2
    exit 2
fi
if ! docker info >/dev/null 2>&1; then
    echo "build_images: docker cannot reach its daemon ('docker info' failed): start Docker" \
        "or point DOCKER_HOST at a running daemon." >&2
    exit 2
fi

cd "$(dirname "$0")/.."
PUSH="${PUSH:-1}"
REGISTRY="${ECR_REGISTRY:-}"
if [[ "$PUSH" != 0 && -z "$REGISTRY" ]]; then
    echo "build_images: set ECR_REGISTRY=<account>.dkr.ecr.<region>.amazonaws.com (or PUSH=0)." >&2
    exit 2
fi
REGISTRY="${REGISTRY:-local}"
JOBS=("$@")
if [[ ${#JOBS[@]} -eq 0 ]]; then
    JOBS=(preprocessing training inference)
fi

# The hash of the job's Dockerfile and of everything it COPYs from the build context (the
# training image copies only its requirements, so new code needs no new image).
content_tag() {
    local sources
    sources="$(sed -n 's/^COPY[[:space:]]\{1,\}\([^-][^[:space:]]*\)[[:space:]].*/\1/p' \
        "containers/$1/Dockerfile")"
    # shellcheck disable=SC2086  # one word per COPY source
    (cd containers && find "$1/Dockerfile" $sources -type f ! -path '*/__pycache__/*' \
        ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
}

if [[ "$PUSH" != 0 ]]; then
    region="$(cut -d. -f4 <<<"$REGISTRY")"
    aws ecr get-login-password --region "$region" \
        | docker login --username AWS --password-stdin "$REGISTRY"
fi

uris=()
for job in "${JOBS[@]}"; do
    if [[ ! -f "containers/$job/Dockerfile" ]]; then
        echo "build_images: no containers/$job/Dockerfile" >&2
        exit 2
    fi
    tag="${IMAGE_TAG:-$(content_tag "$job")}"
    uri="$REGISTRY/forecast-assets/$job:$tag"
    # SageMaker's ml.* instances are x86_64, whatever this machine is.
    docker build --platform linux/amd64 -f "containers/$job/Dockerfile" -t "$uri" containers
    if [[ "$PUSH" != 0 ]]; then
        aws ecr describe-repositories --region "$region" \
            --repository-names "forecast-assets/$job" >/dev/null 2>&1 \
            || aws ecr create-repository --region "$region" \
                --repository-name "forecast-assets/$job" >/dev/null
        docker push "$uri"
    fi
    uris+=("FORECAST_${job^^}_IMAGE_URI=$uri")
done
printf '%s\n' "${uris[@]}"
