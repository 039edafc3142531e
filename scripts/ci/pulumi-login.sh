# shellcheck shell=bash
# Sourced by jobs that touch real stacks: cloud credentials and the Pulumi state backend,
# taken only from masked, protected CI/CD variables.
missing=""
for name in YC_SA_KEY_JSON_B64 YC_CLOUD_ID PULUMI_STATE_BUCKET AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY \
            PULUMI_CONFIG_PASSPHRASE; do
  [ -n "${!name:-}" ] || missing="$missing $name"
done
if [ -n "$missing" ]; then
  echo "missing CI/CD variables:$missing (protected variables reach only protected branches and tags)" >&2
  return 1
fi
key_file="$(mktemp)"
printf '%s' "$YC_SA_KEY_JSON_B64" | base64 -d > "$key_file"
export YC_SERVICE_ACCOUNT_KEY_FILE="$key_file"
export YC_CLOUD_ID
export PULUMI_SKIP_UPDATE_CHECK=true
# PULUMI_BACKEND_URL, when set, is the state backend instead (another bucket, or file:// in the
# pipeline rehearsal); Pulumi reads the same variable.
pulumi login "${PULUMI_BACKEND_URL:-s3://${PULUMI_STATE_BUCKET}?endpoint=storage.yandexcloud.net&region=ru-central1}"
