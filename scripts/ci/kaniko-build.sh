#!/busybox/sh
# Builds the service image with kaniko (no Docker daemon); on main it pushes to Yandex
# Container Registry tagged with the commit and records the digest in image.digest.
set -eu
image="cr.yandex/${YC_REGISTRY_ID}/inference"
if [ "${PUSH:-false}" = "true" ]; then
  auth="$(printf 'json_key:%s' "$(printf '%s' "$YC_CR_KEY_JSON_B64" | base64 -d)" | base64 | tr -d '\n')"
  printf '{"auths":{"cr.yandex":{"auth":"%s"}}}' "$auth" > /kaniko/.docker/config.json
  /kaniko/executor --context "$CI_PROJECT_DIR" --dockerfile "$CI_PROJECT_DIR/service/Dockerfile" \
    --destination "${image}:${CI_COMMIT_SHA}" --digest-file "$CI_PROJECT_DIR/image.digest" \
    --label "org.opencontainers.image.revision=${CI_COMMIT_SHA}"
else
  /kaniko/executor --context "$CI_PROJECT_DIR" --dockerfile "$CI_PROJECT_DIR/service/Dockerfile" --no-push \
    --digest-file "$CI_PROJECT_DIR/image.digest"
fi
echo "image digest: $(cat "$CI_PROJECT_DIR/image.digest")"
