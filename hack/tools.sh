#!/usr/bin/env bash
# Builds the real servers the tests and `secretgrants dev` use, from the Go
# module proxy, into a git-ignored cache (.cache/bin, or $SECRETGRANTS_TOOLS_BIN),
# and installs Apache Kafka's jars from Maven Central beside it (.cache/kafka/libs).
# Idempotent: each tool is rebuilt only when its pin (hack/versions.env) or
# its module files change, so a warm run takes a second.
#
#   hack/tools.sh          build what is missing or stale
#   hack/tools.sh --force  rebuild everything
#   hack/tools.sh kafka    install only Kafka (no Go needed)
#   hack/tools.sh dev      only what `make dev` runs: the control plane and Vault (no Java)
#   hack/tools.sh gen      regenerate hack/tools/k8s/go.mod from the pins
#   hack/tools.sh versions print what is installed
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=hack/versions.env
source "$ROOT/hack/versions.env"
BIN="${SECRETGRANTS_TOOLS_BIN:-$ROOT/.cache/bin}"
FORCE=0
export GOFLAGS="${GOFLAGS:--buildvcs=false} -trimpath"

say() { printf '[tools] %s\n' "$*" >&2; }

need_go() {
  command -v go >/dev/null || { say "Go is required (https://go.dev/dl); it builds the test servers"; exit 1; }
}

# stamp NAME KEY: true when NAME was built with KEY already.
fresh() {
  [[ $FORCE == 0 && -f "$BIN/.$1.stamp" && "$(cat "$BIN/.$1.stamp")" == "$2" ]] || return 1
  local b
  for b in "${@:3}"; do [[ -x "$BIN/$b" ]] || return 1; done
}

stamp() { printf '%s' "$2" > "$BIN/.$1.stamp"; }

key_of() { # a key from the pins and the module files
  cat "$@" | sha256sum | cut -c1-16
}

timed() { # timed LABEL CMD...
  local label=$1 start=$SECONDS; shift
  say "building $label (a cold build takes minutes; later runs reuse the Go caches)"
  "$@"
  say "built $label in $((SECONDS - start))s"
}

build_k8s() {
  local minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
  local vpkg ldflags=""
  for vpkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $vpkg.gitVersion=$KUBERNETES_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor"
    ldflags+=" -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"
  done
  local key="$KUBERNETES_VERSION/$ETCD_VERSION/ldflags2/$(key_of "$ROOT/hack/tools/k8s/go.mod" "$ROOT/hack/tools/k8s/go.sum" "$ROOT/hack/tools/k8s/etcd/main.go")"
  fresh kubernetes "$key" kube-apiserver kube-controller-manager kubectl etcd && return 0
  need_go
  grep -q "k8s.io/kubernetes $KUBERNETES_VERSION" "$ROOT/hack/tools/k8s/go.mod" \
    || { say "hack/tools/k8s/go.mod does not pin $KUBERNETES_VERSION: run hack/tools.sh gen"; exit 1; }
  timed "kube-apiserver, kube-controller-manager, kubectl $KUBERNETES_VERSION and etcd $ETCD_VERSION" \
    bash -c "cd '$ROOT/hack/tools/k8s' && go build -ldflags='$ldflags' -o '$BIN/' k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl ./etcd"
  stamp kubernetes "$key"
}

build_vault() {
  local key="$VAULT_VERSION/$(key_of "$ROOT/hack/tools/vault/go.mod" "$ROOT/hack/tools/vault/go.sum")"
  fresh vault "$key" vault && return 0
  need_go
  timed "vault $VAULT_VERSION" \
    bash -c "cd '$ROOT/hack/tools/vault' && go build -o '$BIN/vault' github.com/hashicorp/vault"
  stamp vault "$key"
}

build_opa() {
  local key="$OPA_VERSION"
  fresh opa "$key" opa && return 0
  need_go
  timed "opa $OPA_VERSION" env GOBIN="$BIN" go install "github.com/open-policy-agent/opa@$OPA_VERSION"
  stamp opa "$key"
}

# Apache Kafka (KRaft broker + controller) as jars from Maven Central: the pom in
# hack/tools/kafka names kafka_2.13 and a logging binding; maven copies them with
# every dependency into $BIN/../kafka/libs. Needs java (17+) and mvn, no Go.
install_kafka() {
  local dest="$BIN/../kafka" key="$KAFKA_VERSION/$(key_of "$ROOT/hack/tools/kafka/pom.xml")"
  if [[ $FORCE == 0 && -f "$BIN/.kafka.stamp" && "$(cat "$BIN/.kafka.stamp")" == "$key" ]] \
    && compgen -G "$dest/libs/kafka_2.13-*.jar" >/dev/null; then
    return 0
  fi
  command -v java >/dev/null || { say "Java 17+ is required to run the Kafka broker of the tests"; exit 1; }
  command -v mvn >/dev/null || { say "Maven is required to fetch Kafka's jars (apt-get install maven)"; exit 1; }
  rm -rf "$dest/libs.new"
  local start=$SECONDS
  say "installing kafka $KAFKA_VERSION (jars from Maven Central; a cold install takes about 30s)"
  mkdir -p "$dest"
  mvn -B --no-transfer-progress -Dstyle.color=never -f "$ROOT/hack/tools/kafka/pom.xml" \
    -Dkafka.version="$KAFKA_VERSION" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$dest/libs.new" > "$dest/install.log" 2>&1 \
    || { tail -40 "$dest/install.log" >&2; say "kafka install failed (log: $dest/install.log)"; exit 1; }
  rm -rf "$dest/libs"
  mv "$dest/libs.new" "$dest/libs"
  stamp kafka "$key"
  say "installed kafka $KAFKA_VERSION in $((SECONDS - start))s"
}

build_helm() {
  local key="$HELM_VERSION"
  fresh helm "$key" helm && return 0
  need_go
  timed "helm $HELM_VERSION" env GOBIN="$BIN" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  stamp helm "$key"
}

gen_k8s_module() {
  need_go
  local staging="v0${KUBERNETES_VERSION#v1}" dir="$ROOT/hack/tools/k8s" gomod
  gomod="$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  {
    echo "module secretgrants.dev/hack/tools/k8s"
    echo
    echo "go $(awk '/^go /{print $2}' "$gomod")"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    echo "tool ("
    printf '\tk8s.io/kubernetes/cmd/%s\n' kube-apiserver kube-controller-manager kubectl
    echo ")"
    echo
    echo "// k8s.io/kubernetes points its staging modules at its own source tree;"
    echo "// their published twins stand in for them here."
    echo "replace ("
    awk -v s="$staging" '/=> \.\/staging\//{print "\t"$1" => "$1" "s}' "$gomod"
    echo ")"
  } > "$dir/go.mod"
  (cd "$dir" && go mod tidy)
  say "regenerated $dir/go.mod for $KUBERNETES_VERSION"
}

versions() {
  local b
  for b in etcd kube-apiserver kube-controller-manager kubectl vault opa helm; do
    if [[ -x "$BIN/$b" ]]; then
      case $b in
        etcd) printf '%-24s %s\n' "$b" "$("$BIN/$b" --version | head -1)";;
        kubectl) printf '%-24s %s\n' "$b" "$("$BIN/$b" version --client 2>/dev/null | head -1)";;
        vault|opa|helm) printf '%-24s %s\n' "$b" "$("$BIN/$b" version | head -1)";;
        *) printf '%-24s %s\n' "$b" "$("$BIN/$b" --version 2>&1 | head -1)";;
      esac
    else
      printf '%-24s %s\n' "$b" "missing"
    fi
  done
  local jar
  jar="$(compgen -G "$BIN/../kafka/libs/kafka_2.13-*.jar" | head -1 || true)"
  printf '%-24s %s\n' kafka "$( [[ -n $jar ]] && basename "$jar" .jar || echo missing)"
}

main() {
  mkdir -p "$BIN"
  case "${1:-}" in
    gen) gen_k8s_module; return;;
    versions) versions; return;;
    kafka) install_kafka; return;;
    dev) build_k8s; build_vault; say "dev tools ready in $BIN"; return;;  # what `secretgrants dev` runs
    --force) FORCE=1;;
    "") ;;
    *) say "usage: hack/tools.sh [--force|gen|versions|kafka|dev]"; exit 2;;
  esac
  local start=$SECONDS
  build_k8s
  build_vault
  build_opa
  build_helm
  install_kafka
  say "tools ready in $BIN ($((SECONDS - start))s)"
}

main "$@"
