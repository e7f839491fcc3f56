#!/usr/bin/env bash
# Build cfssl (the Go peer of the issuance benchmark) from the Go module registry into a cache
# outside the repository. Prints the binary's path. Debian's golang-cfssl 1.2.0 turns a URI SAN
# into a DNS SAN, so a release that writes URI SANs is built instead.
set -euo pipefail
CFSSL_VERSION="${CFSSL_VERSION:-v1.6.5}"
CACHE="${BULWARK_CACHE:-$HOME/.cache/bulwark}/cfssl-${CFSSL_VERSION}"
BIN="$CACHE/bin/cfssl"
if [[ -x "$BIN" ]]; then
  echo "$BIN"
  exit 0
fi
if ! command -v go >/dev/null; then
  echo "installing Go (Debian package golang-go)" >&2
  apt-get update -qq >&2 && apt-get install -y -qq golang-go >&2
fi
mkdir -p "$CACHE"
GOBIN="$CACHE/bin" GOPATH="$CACHE/gopath" GOMODCACHE="$CACHE/gopath/pkg/mod" \
  GOFLAGS=-modcacherw CGO_ENABLED=0 \
  go install "github.com/cloudflare/cfssl/cmd/cfssl@${CFSSL_VERSION}" >&2
echo "$BIN"
