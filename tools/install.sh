#!/usr/bin/env bash
# Set up edgenas on a fresh machine: torch (CPU wheel, pinned first so pip never pulls CUDA builds),
# then the package with its TFLite extra. With --dev also the test tools and the system packages the
# tests need (OpenSSH server for the SSH testbed, Chromium for the report check).
# Usage: bash tools/install.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    *) echo "install.sh: unknown option '$arg' (expected: --dev)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ "$dev" = 1 ] && command -v apt-get >/dev/null 2>&1; then
  need=()
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "install.sh: installing system packages: ${need[*]}"
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}" >/dev/null
  fi
fi

# torch first, pinned: any other request pulls several GB of CUDA packages.
"$PY" -m pip install -q "torch==2.13.0"
extras="tflite"
[ "$dev" = 1 ] && extras="tflite,dev"
"$PY" -m pip install -q -e ".[$extras]"
echo "install.sh: edgenas installed ($("$PY" -c 'import edgenas; print(edgenas.__version__)'))"
