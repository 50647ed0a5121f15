#!/usr/bin/env bash
# Builds weir's image with podman where no base image can be pulled: the binary, the shared
# libraries it links, CA certificates and a passwd file naming the user weir (uid 10001), in
# `scratch`, with `weir` as the entrypoint (the runtime stage of deploy/Dockerfile, from this
# machine's files). podman reads deploy/podman/containers.conf unless CONTAINERS_CONF names
# another.
#   scripts/image.sh [--binary target/release/weir] [--tag localhost/weir:0.1.0]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BINARY=${CARGO_TARGET_DIR:-$ROOT/target}/release/weir
TAG=localhost/weir:0.1.0
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) BINARY=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    *) echo "image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$BINARY" ] || { echo "image.sh: no weir binary at $BINARY (cargo build --release)" >&2; exit 1; }
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/deploy/podman/containers.conf}

CTX=$(mktemp -d)
trap 'rm -rf "$CTX"' EXIT
FS=$CTX/rootfs
mkdir -p "$FS/usr/local/bin" "$FS/etc/ssl/certs" "$FS/tmp"
chmod 1777 "$FS/tmp"
cp "$BINARY" "$FS/usr/local/bin/weir"
# The dynamic loader and every library the binary links, at the paths it looks for them.
for lib in $(ldd "$BINARY" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
  cp --parents -L "$lib" "$FS/"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$FS/etc/ssl/certs/"
echo "weir:x:10001:10001::/nonexistent:/sbin/nologin" > "$FS/etc/passwd"
echo "weir:x:10001:" > "$FS/etc/group"
cat > "$CTX/Containerfile" <<'CONTAINERFILE'
FROM scratch
COPY rootfs/ /
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/weir"]
CONTAINERFILE
podman build --quiet --tag "$TAG" --file "$CTX/Containerfile" "$CTX" >/dev/null
echo "image.sh: built $TAG from $BINARY"
