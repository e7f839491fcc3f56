//go:build tools

// Package peers pins the commands build-peers.sh compiles; the build tag keeps
// this file out of every build so the main packages can be listed here.
package peers

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
