#!/usr/bin/env bash
# Builds the pinned control-plane binaries fleetops tests and the demo run against:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok, helm, kustomize.
#
# Everything goes into a cache outside the repo ($FLEETOPS_CACHE, default ~/.cache/fleetops):
# the binaries in $FLEETOPS_CACHE/bin, Go's module and build caches under it too, so a warm run
# only checks version stamps and takes seconds. There are no prebuilt downloads: every binary
# is built from its Go module through the Go module proxy.
set -Eeuo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
KUSTOMIZE_VERSION=${KUSTOMIZE_VERSION:-v5.8.1}  # v5.8.3 needs a kube-openapi the module proxy does not serve

CACHE=${FLEETOPS_CACHE:-$HOME/.cache/fleetops}
BIN=$CACHE/bin
SRC=$CACHE/src
STAMPS=$CACHE/stamps
mkdir -p "$BIN" "$SRC" "$STAMPS"
export GOMODCACHE=${GOMODCACHE:-$CACHE/gomod}
export GOCACHE=${GOCACHE:-$CACHE/gobuild}
export GOFLAGS=-buildvcs=false
export CGO_ENABLED=0

have() { # have NAME VERSION: is the binary built at that version?
  [[ -x $BIN/$1 && -f $STAMPS/$1 && $(cat "$STAMPS/$1") == "$2" ]]
}

if [[ ${1:-} == --missing ]]; then # list what a build would make, one per line; needs no Go
  for pair in kube-apiserver:$K8S_VERSION kube-controller-manager:$K8S_VERSION \
    kube-scheduler:$K8S_VERSION kubectl:$K8S_VERSION etcd:$ETCD_VERSION kwok:$KWOK_VERSION \
    helm:$HELM_VERSION kustomize:$KUSTOMIZE_VERSION; do
    have "${pair%%:*}" "${pair#*:}" || echo "${pair%%:*} ${pair#*:}"
  done
  exit 0
fi

command -v go >/dev/null || {
  echo "build-binaries: 'go' is not installed; install Go 1.24 or newer (e.g. apt-get install golang) and rerun" >&2
  exit 1
}

step=""
fail() {
  echo "build-binaries: step '$step' failed (see the output above)." >&2
  echo "  If it is a download error, check that the Go module proxy is reachable (go env GOPROXY) and rerun;" >&2
  echo "  if it is a compile error, the pinned version may need a newer Go: set GOTOOLCHAIN=auto and rerun." >&2
}
trap fail ERR

stamp() { echo "$2" >"$STAMPS/$1"; }
timed() { # timed NAME CMD...: run a build step and print how long it took
  local start=$SECONDS
  step=$1
  shift
  echo "build-binaries: building $step ..."
  "$@"
  echo "build-binaries: built $step in $((SECONDS - start)) s"
}

build_kubernetes() {
  local all=1
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    have "$cmd" "$K8S_VERSION" || all=0
  done
  [[ $all == 1 ]] && return
  local dir=$SRC/kubernetes-$K8S_VERSION minor gomod
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  local patch
  patch=$(echo "$K8S_VERSION" | cut -d. -f3)
  mkdir -p "$dir"
  cd "$dir"
  # kubernetes requires its staging modules at v0.0.0 and replaces them with ./staging; a
  # module that depends on it has to replace each with the published v0.<minor>.<patch>.
  echo "build-binaries: downloading the k8s.io/kubernetes $K8S_VERSION modules (minutes on a first run) ..."
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module fleetops.local/k8sbuild"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    grep -E '^\s*k8s\.io/[a-z0-9-]+ v0\.0\.0\s*$' "$gomod" | awk -v v="v0.$minor.$patch" '{print "replace " $1 " => " $1 " " v}'
  } >go.mod
  cat >tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  GOTOOLCHAIN=${GOTOOLCHAIN:-auto} go mod tidy
  local v=k8s.io/component-base/version
  local ldflags="-s -w -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    have "$cmd" "$K8S_VERSION" && continue
    timed "$cmd $K8S_VERSION" go build -trimpath -ldflags "$ldflags" -o "$BIN/$cmd" "k8s.io/kubernetes/cmd/$cmd"
    stamp "$cmd" "$K8S_VERSION"
  done
}

build_etcd() {
  have etcd "$ETCD_VERSION" && return
  local dir=$SRC/etcd-$ETCD_VERSION
  mkdir -p "$dir"
  cd "$dir"
  cat >go.mod <<GOMOD
module fleetops.local/etcdbuild

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
GOMOD
  cat >tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  echo "build-binaries: downloading the etcd $ETCD_VERSION modules ..."
  GOTOOLCHAIN=${GOTOOLCHAIN:-auto} go mod tidy
  timed "etcd $ETCD_VERSION" go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
  stamp etcd "$ETCD_VERSION"
}

go_install() { # go_install NAME PACKAGE VERSION
  have "$1" "$3" && return
  timed "$1 $3" env GOBIN="$BIN" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" go install -trimpath -ldflags "-s -w" "$2@$3"
  stamp "$1" "$3"
}

kwok_stages() {
  # kwok refuses to start without stages; they ship in its module source.
  [[ -f $CACHE/kwok-stages/.version && $(cat "$CACHE/kwok-stages/.version") == "$KWOK_VERSION" ]] && return
  local src
  src=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$CACHE/kwok-stages"
  for f in node/fast/node-initialize.yaml node/heartbeat/node-heartbeat.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    if [[ -f $src/kustomize/stage/$f ]]; then
      cp "$src/kustomize/stage/$f" "$CACHE/kwok-stages/"
    fi
  done
  chmod -R u+w "$CACHE/kwok-stages"
  echo "$KWOK_VERSION" >"$CACHE/kwok-stages/.version"
}

only=${1:-all}
total_start=$SECONDS
case $only in
  all | kubernetes) build_kubernetes ;;&
  all | etcd) build_etcd ;;&
  all | kwok)
    go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
    step="kwok stages"
    kwok_stages
    ;;&
  all | helm) go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" ;;&
  all | kustomize) go_install kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION" ;;&
  *) ;;
esac
echo "build-binaries: binaries ready in $BIN ($((SECONDS - total_start)) s)"
