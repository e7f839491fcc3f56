#!/usr/bin/env bash
# Build one deployment tool the Kubernetes and deploy tests run: helm, kustomize or promtool,
# each pinned by its own Go module under tests/k8s/tools/<name>/ (a `tool` line in go.mod,
# fetched from the Go module proxy). Separate modules keep the three dependency graphs apart.
# The binary lands in a cache outside the repo keyed by go.mod, go.sum and this script, so a
# warm run does nothing. Prints the binary's path last.
#
#   build-tool.sh helm|kustomize|promtool
#   BULWARK_CACHE   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/bulwark)
#   GO              go command (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

name="${1:?usage: build-tool.sh helm|kustomize|promtool}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod="$here/tools/$name"
[[ -f "$mod/go.mod" ]] || { echo "build-tool.sh: no module tests/k8s/tools/$name" >&2; exit 2; }
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
cache_root="${BULWARK_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/bulwark}"

cd "$mod"
pkg="$(awk '$1 == "tool" {print $2; exit}' go.mod)"
case "$name" in
    helm) owner=helm.sh/helm/v3 ;;
    kustomize) owner=sigs.k8s.io/kustomize/kustomize/v5 ;;
    promtool) owner=github.com/prometheus/prometheus ;;
    *) echo "build-tool.sh: unknown tool $name" >&2; exit 2 ;;
esac
version="$("$GO" list -m -f '{{.Version}}' "$owner")"
sum="$(cat go.mod go.sum "$here/build-tool.sh" | sha256sum | cut -c1-12)"
out="$cache_root/tools/$name/${version}_${sum}"
bin="$out/$name"

if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi

mkdir -p "$cache_root/tools/$name"
exec 9>"$cache_root/tools/$name/.build.lock"
flock 9
if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi

# Each project stamps its version through its own Makefile; do the same here so
# `helm version` / `promtool --version` tell the truth.
case "$name" in
    helm)
        # Helm's default Kubernetes version (helm template, lint) comes from client-go's.
        cg="$("$GO" list -m -f '{{.Version}}' k8s.io/client-go)"; cg="${cg#v}"
        kmajor=$(( ${cg%%.*} + 1 )); kminor="${cg#*.}"; kminor="${kminor%%.*}"
        ldflags="-X helm.sh/helm/v3/internal/version.version=$version"
        for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
            ldflags+=" -X $p.k8sVersionMajor=$kmajor -X $p.k8sVersionMinor=$kminor"
        done ;;
    kustomize) ldflags="-X sigs.k8s.io/kustomize/api/provenance.version=$version" ;;
    promtool)
        # Prometheus v3.X.Y is published as Go module v0.3XX.Y.
        num="${version#v0.}"; mm="${num%%.*}"
        ldflags="-X github.com/prometheus/common/version.Version=$((mm / 100)).$((mm % 100)).${num#*.}" ;;
esac

tmp="$(mktemp -d "$cache_root/tools/$name/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
echo "building $pkg $version" >&2
CGO_ENABLED=0 nice -n 15 "$GO" build -trimpath -buildvcs=false -ldflags "-s -w $ldflags" \
    -o "$tmp/$name" "$pkg"
echo "built $name in $((SECONDS - start)) s" >&2
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
find "$cache_root/tools/$name" -mindepth 1 -maxdepth 1 -type d -name 'v*' ! -path "$out" \
    -exec rm -rf {} +
echo "$bin"
