#!/usr/bin/env bash
# Builds the service image with buildah (no Docker daemon: the tool the tests build and run the
# image with, tests/service/test_service_image.py) from service/ and its Dockerfile, once per stage:
# a release is one commit's build in three flavours, each carrying only its stage's backend and
# store clients (the Dockerfile's STAGE picks service/requirements/<stage>.txt). Each flavour is
# pushed tagged <commit>-<stage>, and the pushed manifest's digest is recorded in
# image-<stage>.digest; deploy:mvp pins mvp's as release.imageDigest and records all of them in
# release.images, which promotion carries (each stage runs its own flavour).
#
# Environment:
#   IMAGE_REPOSITORY     where to push (default cr.yandex/$YC_REGISTRY_ID/inference)
#   STAGES               the flavours to build, space-separated (default "mvp partner prod"; deploy:mvp
#                        needs all three: a subset is for building by hand)
#   YC_CR_KEY_JSON_B64   authorized key of a pusher on that registry (login user json_key); unset:
#                        no login (a registry that needs none)
#   REGISTRY_TLS_VERIFY  false for a plain-HTTP registry (a local one); default true
#   BASE_IMAGE           the Dockerfile's base, if not its default
#   BUILD_EXTRA_ARGS     more `buildah build` arguments (word-split), e.g. --volume for a CA bundle
#   BUILDAH_ROOT         buildah's storage root (default: buildah's own)
#   STORAGE_DRIVER       buildah's storage driver (vfs in an unprivileged container); the isolation
#                        comes from BUILDAH_ISOLATION, which `buildah build` reads
set -euo pipefail
cd "$(dirname "$0")/../.."
read -r -a stages <<< "${STAGES:-mvp partner prod}"
[ "${#stages[@]}" -gt 0 ] || { echo "build-image.sh: STAGES is empty: name the flavours to build (mvp partner prod)" >&2; exit 2; }
for stage in "${stages[@]}"; do
  case "$stage" in
    mvp|partner|prod) ;;
    *) echo "build-image.sh: unknown stage '$stage' in STAGES: the flavours are mvp, partner and prod" >&2; exit 2 ;;
  esac
  [ -f "service/requirements/$stage.txt" ] || { echo "build-image.sh: service/requirements/$stage.txt is missing" >&2; exit 2; }
done
if ! command -v buildah >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah ca-certificates
fi
repository="${IMAGE_REPOSITORY:-cr.yandex/${YC_REGISTRY_ID:?set YC_REGISTRY_ID (the mvp stack output registry_id) or IMAGE_REPOSITORY}/inference}"
registry="${repository%%/*}"
tls="${REGISTRY_TLS_VERIFY:-true}"
commit="${CI_COMMIT_SHA:?CI_COMMIT_SHA is not set}"
storage=()
if [ -n "${BUILDAH_ROOT:-}" ]; then
  storage+=(--root "$BUILDAH_ROOT/storage" --runroot "$BUILDAH_ROOT/run")
fi
if [ -n "${STORAGE_DRIVER:-}" ]; then
  storage+=(--storage-driver "$STORAGE_DRIVER")  # not every buildah reads the variable itself
fi
build_args=()
if [ -n "${BASE_IMAGE:-}" ]; then
  build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
fi
if [ -n "${BUILD_EXTRA_ARGS:-}" ]; then
  read -r -a extra <<< "$BUILD_EXTRA_ARGS"
  build_args+=("${extra[@]}")
fi
if [ -n "${YC_CR_KEY_JSON_B64:-}" ]; then
  printf '%s' "$YC_CR_KEY_JSON_B64" | base64 -d \
    | buildah "${storage[@]}" login --tls-verify="$tls" --username json_key --password-stdin "$registry"
fi
# no digest file of an earlier build may stand in for a flavour this one did not push
rm -f image-*.digest
for stage in "${stages[@]}"; do
  tag="${repository}:${commit}-${stage}"
  digest="image-${stage}.digest"
  buildah "${storage[@]}" build "${build_args[@]}" --build-arg "STAGE=${stage}" \
    --label "org.opencontainers.image.revision=${commit}" \
    --label "org.opencontainers.image.source=${CI_PROJECT_URL:-}" \
    --tag "$tag" --file service/Dockerfile service
  buildah "${storage[@]}" push --tls-verify="$tls" --digestfile "$digest" "$tag" "docker://$tag"
  # the local copy is not needed once pushed (vfs storage keeps a full copy of every image)
  buildah "${storage[@]}" rmi "$tag" >/dev/null || true
  scripts/ci/require-digest.sh "$digest"
  echo "pushed $tag (the $stage flavour, digest $(cat "$digest"))"
done
