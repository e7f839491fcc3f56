#!/usr/bin/env bash
# Build Istio's own client binaries the interop tests run against Bulwark:
#   istio-csr    our thin main over Istio's citadel CA client, token plugin, secret cache
#                and pki/util (cmd/istio-csr)
#   pilot-agent  the real istio.io/istio/pilot/cmd/pilot-agent
#   envoy_bootstrap_tmpl.json  Istio's Envoy bootstrap template, which pilot-agent renders
#                (the proxyv2 image has it at /var/lib/istio/envoy/)
# both pinned by istio/go.mod (istio.io/istio has no semver tags: a pseudo-version).
# Binaries land in a cache outside the repo keyed by the Istio version and a hash of the
# sources, so a warm run does nothing. Prints the binary directory last.
#
#   BULWARK_CACHE   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/bulwark)
#   GO              go command (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod="$here/istio"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
# go keeps its module and build caches under HOME: give it one even where none is set.
HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME
cache_root="${BULWARK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bulwark}"
export GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local

cd "$mod"
istio_version="$("$GO" list -m -f '{{.Version}}' istio.io/istio)"
sum="$(cat go.mod go.sum cmd/istio-csr/main.go "$here/build-istio.sh" | sha256sum | cut -c1-12)"
out="$cache_root/interop/istio-${istio_version}_${sum}"

if [[ -x "$out/istio-csr" && -x "$out/pilot-agent" && -f "$out/envoy_bootstrap_tmpl.json" ]]; then
    echo "$out"
    exit 0
fi

mkdir -p "$cache_root/interop"
exec 9>"$cache_root/interop/.build.lock"
flock 9
if [[ -x "$out/istio-csr" && -x "$out/pilot-agent" && -f "$out/envoy_bootstrap_tmpl.json" ]]; then
    echo "$out"
    exit 0
fi

tmp="$(mktemp -d "$cache_root/interop/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
export CGO_ENABLED=0
# Outside Istio's Makefile the binaries carry no version stamp; give them the module's.
vpkg=istio.io/istio/pkg/version
ldflags="-s -w -X $vpkg.buildVersion=$istio_version -X $vpkg.buildGitRevision=${istio_version##*-}"
ldflags+=" -X $vpkg.buildStatus=Clean -X $vpkg.buildTag=$istio_version"
echo "building istio-csr and pilot-agent from istio.io/istio $istio_version" >&2
nice -n 10 "$GO" build -trimpath -ldflags "$ldflags" -o "$tmp/istio-csr" ./cmd/istio-csr
nice -n 10 "$GO" build -trimpath -ldflags "$ldflags" -o "$tmp/pilot-agent" istio.io/istio/pilot/cmd/pilot-agent
istio_dir="$("$GO" list -m -f '{{.Dir}}' istio.io/istio)"
cp "$istio_dir/tools/packaging/common/envoy_bootstrap.json" "$tmp/envoy_bootstrap_tmpl.json"
echo "$istio_version" >"$tmp/ISTIO_VERSION"
echo "built in $((SECONDS - start)) s" >&2
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
# Older builds (~150 MB each) are of no use: keep only this one.
find "$cache_root/interop" -mindepth 1 -maxdepth 1 -type d -name 'istio-*' ! -path "$out" \
    -exec rm -rf {} +
echo "$out"
