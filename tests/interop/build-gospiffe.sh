#!/usr/bin/env bash
# Build the go-spiffe interop client (gospiffe/main.go over github.com/spiffe/go-spiffe/v2,
# pinned by gospiffe/go.mod) that tests/interop/test_gospiffe.py runs against the agent.
# The binary lands in a cache outside the repo keyed by the go-spiffe version and a hash of
# the sources, so a warm run does nothing. Prints the binary directory last.
#
#   BULWARK_CACHE   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/bulwark)
#   GO              go command (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod="$here/gospiffe"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME
cache_root="${BULWARK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bulwark}"
export GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local

cd "$mod"
version="$("$GO" list -m -f '{{.Version}}' github.com/spiffe/go-spiffe/v2)"
sum="$(cat go.mod go.sum main.go "$here/build-gospiffe.sh" | sha256sum | cut -c1-12)"
out="$cache_root/interop/gospiffe-${version}_${sum}"

if [[ -x "$out/gospiffe-check" ]]; then
    echo "$out"
    exit 0
fi

mkdir -p "$cache_root/interop"
exec 9>"$cache_root/interop/.build-gospiffe.lock"
flock 9
if [[ -x "$out/gospiffe-check" ]]; then
    echo "$out"
    exit 0
fi

tmp="$(mktemp -d "$cache_root/interop/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
export CGO_ENABLED=0
echo "building gospiffe-check against go-spiffe $version" >&2
nice -n 10 "$GO" build -trimpath -ldflags "-s -w" -o "$tmp/gospiffe-check" .
echo "$version" >"$tmp/GOSPIFFE_VERSION"
echo "built in $((SECONDS - start)) s" >&2
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
find "$cache_root/interop" -mindepth 1 -maxdepth 1 -type d -name 'gospiffe-*' ! -path "$out" \
    -exec rm -rf {} +
echo "$out"
