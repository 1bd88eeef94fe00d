#!/usr/bin/env bash
# Set up edgenas on a fresh machine: torch (CPU wheel, pinned first so pip never pulls CUDA builds),
# then the package with its TFLite extra. With --dev also the test tools, the system packages the
# tests need (OpenSSH server for the SSH testbed, Chromium for the report check), and the Python
# environments of the devices the agent is tested on (Python 3.7 with an old onnxruntime, tflite-runtime
# under numpy 1; in ~/.cache/edgenas/venvs, see dev_venv).
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

# torch pinned in the same request: unpinned, pip pulls several GB of CUDA packages. The editable install is built with
# this Python's own setuptools where it is recent enough (pyproject.toml's build requirement): pip's isolated build
# environment cost 2.4 s of this script's 8.5 on every run.
extras="tflite"
[ "$dev" = 1 ] && extras="tflite,dev"
isolation=""
if "$PY" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 68)' 2>/dev/null; then
  isolation="--no-build-isolation"
fi
# shellcheck disable=SC2086  # $isolation: one flag or none
"$PY" -m pip install -q $isolation "torch==2.13.0" -e ".[$extras]"
# pip byte-compiles what it installs, but not an editable install's sources; where PYTHONDONTWRITEBYTECODE is set (as
# in many containers) Python never writes that cache itself, and every `edgenas` process compiled the modules it
# imports again (the test suite starts some 270 Python processes).
"$PY" -m compileall -q edgenas >/dev/null
echo "install.sh: edgenas installed ($("$PY" -c 'import edgenas; print(edgenas.__version__)'))"

# Device environments for the agent's tests: what an old phone or Pi has, not what this machine has. They live in
# the user's cache (EDGENAS_VENVS, else ~/.cache/edgenas/venvs), not in the clone: every clone on this machine
# shares them (building both took 19 s of this script's 28), and one is rebuilt when what it was built from changes.
VENVS=${EDGENAS_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/edgenas/venvs}
dev_venv() {  # NAME PYTHON PACKAGES...
  local name=$1 python=$2; shift 2
  local dir="$VENVS/$name" spec
  spec="$("$python" -c 'import sys; print(sys.version.split()[0])') $*"
  if [ -f "$dir/.complete" ] && [ "$(cat "$dir/.complete")" = "$spec" ]; then return 0; fi
  echo "install.sh: building $dir ($*)"
  mkdir -p "$VENVS"
  "$python" -m venv --clear "$dir" && "$dir/bin/python" -m pip install -q "$@" && echo "$spec" > "$dir/.complete" \
    || { echo "install.sh: could not build $dir; the agent test that needs it will fail" >&2; rm -rf "$dir"; }
}
if [ "$dev" = 1 ]; then
  py37=""
  for candidate in "$(command -v python3.7 || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.7*/bin/python3.7; do
    # a pyenv shim may exist on PATH and still not run
    if [ -z "$py37" ] && [ -x "$candidate" ] && "$candidate" -c pass 2>/dev/null; then py37=$candidate; fi
  done
  if [ -n "$py37" ]; then
    dev_venv agent-py37 "$py37" "numpy<1.22" "onnxruntime<1.15"
  else
    echo "install.sh: no Python 3.7 found (python3.7 on PATH or pyenv's versions/3.7.*): the agent's Python 3.7 test will fail" >&2
  fi
  if "$PY" -c 'import sys; sys.exit(sys.version_info >= (3, 12))'; then  # tflite-runtime's last wheels stop at 3.11
    dev_venv tflite-runtime "$PY" "numpy<2" "tflite-runtime==2.14.0"
  fi
fi
