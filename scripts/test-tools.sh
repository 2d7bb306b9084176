#!/usr/bin/env bash
# Installs what the test suite drives besides Node.js, each only when missing:
#   - Debian's postgresql, chromium, gcc and libc6-dev packages (PostgreSQL store,
#     dashboard, a library that makes fsync fail);
#   - the pinned grpcurl, with `go install`, into ~/.cache/relgate-go/bin;
#   - the Python and Go example clients (scripts/setup-polyglot.sh).
# `npm test` runs it first (test/global-setup.ts), and so does .ci/run.
# A second run takes about a second.   Usage: bash scripts/test-tools.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}"
GRPCURL_MODULE="github.com/fullstorydev/grpcurl"
GRPCURL_VERSION="v1.9.3"   # also in test/helpers/find-grpcurl.ts
GO_BIN_CACHE="$CACHE_DIR/relgate-go/bin"

die() {
  printf 'test-tools: %s\n' "$*" >&2
  exit 1
}

postgres_bin_dir() {
  local initdb
  initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n1)
  [ -n "$initdb" ] && dirname "$initdb"
}

# apt_install PACKAGE...: Debian packages, as root or through sudo.
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "install $* with your system's package manager (the tests need them)"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing Debian packages: $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_packages() {
  local missing=()
  [ -n "$(postgres_bin_dir)" ] || missing+=(postgresql)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  # A C compiler and libc's headers build the fsync-failing library one test preloads into a gateway.
  command -v cc >/dev/null 2>&1 || missing+=(gcc)
  [ -f /usr/include/dlfcn.h ] || missing+=(libc6-dev)
  if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
  [ -n "$(postgres_bin_dir)" ] || die "postgresql installed but no initdb under /usr/lib/postgresql"
  # As root, throw-away clusters run as the package's postgres user (initdb refuses root).
  if [ "$(id -u)" = 0 ]; then id postgres >/dev/null 2>&1 || die "running as root needs the postgres system user"; fi
}

grpcurl_is_pinned() {
  local binary="$GO_BIN_CACHE/grpcurl"
  [ -x "$binary" ] || return 1
  # The binary records the module version it was built from.
  go version -m "$binary" 2>/dev/null | grep -Eq "^[[:space:]]+mod[[:space:]]+$GRPCURL_MODULE[[:space:]]+$GRPCURL_VERSION([[:space:]]|$)"
}

ensure_grpcurl() {
  command -v go >/dev/null 2>&1 || die "Go is needed to install grpcurl (go install $GRPCURL_MODULE/cmd/grpcurl@$GRPCURL_VERSION)"
  grpcurl_is_pinned && return
  echo "installing grpcurl $GRPCURL_VERSION into $GO_BIN_CACHE"
  mkdir -p "$GO_BIN_CACHE"
  GOBIN="$GO_BIN_CACHE" go install "$GRPCURL_MODULE/cmd/grpcurl@$GRPCURL_VERSION"
  grpcurl_is_pinned || die "go install did not produce grpcurl $GRPCURL_VERSION in $GO_BIN_CACHE"
}

ensure_packages
ensure_grpcurl
bash scripts/setup-polyglot.sh >/dev/null
echo "test tools ready: $("$(postgres_bin_dir)/postgres" --version), $(chromium --version 2>/dev/null | tail -n1), grpcurl $GRPCURL_VERSION, Python and Go clients"
