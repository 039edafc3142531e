//go:build tools

// The Pulumi CLI, built from its Go module at the version the Python SDK is pinned to
// (scripts/pulumi-cli.sh). go.mod and go.sum are its lock: every module and its hash.
package tools

import _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
