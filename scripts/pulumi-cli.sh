#!/usr/bin/env bash
# Builds the Pulumi CLI from its Go module, at the version tools/pulumi/go.mod requires (the Python
# SDK's pin; tests/environment/test_versions.py checks they agree), into .tools/pulumi-<version>/
# and prints the binary's path. Every module comes from the Go module proxy, checked against
# tools/pulumi/go.sum. A binary already built for that version is reused (the first build takes
# about 9 minutes on 2 cores).
#
# The release archives also carry the language hosts (pulumi-language-python, ...) that
# `pulumi preview`/`up` need to run a program; the CLI alone logs in, manages stacks, stack tags and
# configuration (what the pipeline rehearsal runs for real).
set -euo pipefail
cd "$(dirname "$0")/.."
module=tools/pulumi
version="$(awk '$1 == "require" && $2 == "github.com/pulumi/pulumi/pkg/v3" {print $3}' "$module/go.mod")"
[ -n "$version" ] || { echo "pulumi-cli.sh: $module/go.mod does not require github.com/pulumi/pulumi/pkg/v3" >&2; exit 1; }
out=".tools/pulumi-${version#v}/bin/pulumi"
if [ -x "$out" ] && [ "$("$out" version 2>/dev/null)" = "$version" ]; then
  echo "$out"
  exit 0
fi
command -v go >/dev/null || { echo "pulumi-cli.sh: Go is not installed (the CLI is built from its module)" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
# The CLI's own release build: no cgo, the user and DNS lookups in Go, no gRPC tracing; the
# version is stamped as its Makefile does.
(cd "$module" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -tags osusergo,netgo,grpcnotrace \
  -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=${version}" \
  -o "../../$out" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi) >&2
echo "$out"
