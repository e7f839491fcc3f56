#!/usr/bin/env bash
# Build kube-controller-manager, whose service-account token controller alone runs beside the
# second API server of the multicluster tests (it fills the token Secret `bulwark kube
# create-remote-secret` makes). Pinned by tests/k8s/tools/kube-controller-manager/go.mod at the
# kube-apiserver version of peers/go.mod; a module and script of its own, so adding it left the
# caches of build-peers.sh and build-tool.sh valid. The binary lands in a cache outside the
# repo keyed by go.mod, go.sum and this script; a warm run does nothing. Prints its path last.
#
#   BULWARK_CACHE   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/bulwark)
#   GO              go command (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod="$here/tools/kube-controller-manager"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
cache_root="${BULWARK_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/bulwark}"

cd "$mod"
version="$("$GO" list -m -f '{{.Version}}' k8s.io/kubernetes)"
peers="$(cd "$here/peers" && "$GO" list -m -f '{{.Version}}' k8s.io/kubernetes)"
if [[ "$version" != "$peers" ]]; then
    echo "build-controller-manager.sh: k8s.io/kubernetes $version here, $peers in peers/go.mod" >&2
    exit 2
fi
sum="$(cat go.mod go.sum "$here/build-controller-manager.sh" | sha256sum | cut -c1-12)"
out="$cache_root/tools/kube-controller-manager/${version}_${sum}"
bin="$out/kube-controller-manager"

if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi

mkdir -p "$cache_root/tools/kube-controller-manager"
exec 9>"$cache_root/tools/kube-controller-manager/.build.lock"
flock 9
if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi

# As build-peers.sh stamps kube-apiserver: outside its Makefile k8s.io/kubernetes has no version.
major="${version#v}"; major="${major%%.*}"
minor="${version#v*.}"; minor="${minor%%.*}"
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$version -X $vpkg.gitMajor=$major -X $vpkg.gitMinor=$minor"
ldflags+=" -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"

tmp="$(mktemp -d "$cache_root/tools/kube-controller-manager/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
echo "building k8s.io/kubernetes/cmd/kube-controller-manager $version" >&2
CGO_ENABLED=0 nice -n 10 "$GO" build -trimpath -buildvcs=false -ldflags "$ldflags" \
    -o "$tmp/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager
echo "built kube-controller-manager in $((SECONDS - start)) s" >&2
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
find "$cache_root/tools/kube-controller-manager" -mindepth 1 -maxdepth 1 -type d -name 'v*' \
    ! -path "$out" -exec rm -rf {} +
echo "$bin"
