#!/usr/bin/env bash
# Build the bench's Istio CA peer (istio-ca/cmd/istio-ca: a thin main over istiod's CA,
# CA server, gRPC options and JWT authenticator), pinned by istio-ca/go.mod to the same
# istio.io/istio as tests/interop/istio/go.mod. The binary lands in a cache outside the repo
# keyed by the Istio version and a hash of these sources, so a warm run does nothing.
# Prints the binary directory last.
#
#   BULWARK_CACHE   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/bulwark)
#   GO              go command (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod="$here/istio-ca"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME
cache_root="${BULWARK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bulwark}"
export GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local

cd "$mod"
istio_version="$("$GO" list -m -f '{{.Version}}' istio.io/istio)"
sum="$(cat go.mod go.sum cmd/istio-ca/main.go "$here/build-istio-ca.sh" | sha256sum | cut -c1-12)"
out="$cache_root/bench/istio-ca-${istio_version}_${sum}"

if [[ -x "$out/istio-ca" ]]; then
    echo "$out"
    exit 0
fi

mkdir -p "$cache_root/bench"
exec 9>"$cache_root/bench/.build.lock"
flock 9
if [[ -x "$out/istio-ca" ]]; then
    echo "$out"
    exit 0
fi

tmp="$(mktemp -d "$cache_root/bench/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
export CGO_ENABLED=0
echo "building istio-ca from istio.io/istio $istio_version" >&2
nice -n 10 "$GO" build -trimpath -ldflags "-s -w" -o "$tmp/istio-ca" ./cmd/istio-ca
echo "$istio_version" >"$tmp/ISTIO_VERSION"
echo "built in $((SECONDS - start)) s" >&2
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
find "$cache_root/bench" -mindepth 1 -maxdepth 1 -type d -name 'istio-ca-*' ! -path "$out" \
    -exec rm -rf {} +
echo "$out"
