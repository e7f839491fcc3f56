#!/usr/bin/env bash
# Build the real control-plane peers the Kubernetes tests run against:
# kube-apiserver and kubectl from k8s.io/kubernetes, etcd from go.etcd.io/etcd/server/v3,
# all pinned by tests/k8s/peers/go.mod. Binaries land in a cache outside the repo keyed
# by versions and go.sum, so a warm run does nothing. Prints the binary directory last.
#
#   BULWARK_CACHE   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/bulwark)
#   GO              go command (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
peers="$here/peers"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
cache_root="${BULWARK_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/bulwark}"

cd "$peers"
k8s_version="$("$GO" list -m -f '{{.Version}}' k8s.io/kubernetes)"
etcd_version="$("$GO" list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
sum="$(cat go.mod go.sum "$here/build-peers.sh" | sha256sum | cut -c1-12)"
out="$cache_root/k8s/${k8s_version}_etcd-${etcd_version}_${sum}"

if [[ -x "$out/kube-apiserver" && -x "$out/etcd" && -x "$out/kubectl" ]]; then
    echo "$out"
    exit 0
fi

mkdir -p "$cache_root/k8s"
exec 9>"$cache_root/k8s/.build.lock"
flock 9
if [[ -x "$out/kube-apiserver" && -x "$out/etcd" && -x "$out/kubectl" ]]; then
    echo "$out"
    exit 0
fi

# k8s.io/kubernetes ships without its own version stamp outside its Makefile.
major="${k8s_version#v}"; major="${major%%.*}"
minor="${k8s_version#v*.}"; minor="${minor%%.*}"
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$k8s_version -X $vpkg.gitMajor=$major -X $vpkg.gitMinor=$minor"
ldflags+=" -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"

tmp="$(mktemp -d "$cache_root/k8s/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
export CGO_ENABLED=0
for cmd in k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl; do
    echo "building $cmd $k8s_version" >&2
    nice -n 10 "$GO" build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$tmp/${cmd##*/}" "$cmd"
done
echo "building etcd $etcd_version" >&2
nice -n 10 "$GO" build -trimpath -buildvcs=false -ldflags "-s -w" -o "$tmp/etcd" \
    go.etcd.io/etcd/server/v3
echo "built in $((SECONDS - start)) s" >&2
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
# Older builds are ~200 MB each: keep only this one.
find "$cache_root/k8s" -mindepth 1 -maxdepth 1 -type d -name 'v*_etcd-*' ! -path "$out" \
    -exec rm -rf {} +
echo "$out"
