# shellcheck shell=bash
# Sourced by the promotion jobs, after pulumi-login.sh: skopeo (Debian's, into the job's image) and a
# login to the registries' host (REGISTRY_HOST, default cr.yandex) with the deployer's authorized key
# (user json_key), which may pull from the source stage's registry and push to the target's.
# REGISTRY_TLS_VERIFY=false: a plain-HTTP registry (a local one; stagectl promote follows it too).
if ! command -v skopeo >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends skopeo ca-certificates
fi
printf '%s' "$YC_SA_KEY_JSON_B64" | base64 -d \
  | skopeo login --tls-verify="${REGISTRY_TLS_VERIFY:-true}" --username json_key --password-stdin "${REGISTRY_HOST:-cr.yandex}"
