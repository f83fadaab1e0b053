#!/usr/bin/env bash
# Run a command inside cdm3d's virtual environment, setting it up first when needed:
#   bash tools/env.sh pytest -q
#   bash tools/env.sh cdm3d generate "a tall red lamp" -o outputs/lamp
# The environment lives in .venv (or $CDM3D_VENV) and is rebuilt when pyproject.toml
# or requirements/constraints.txt change. Installs the system library open3d needs
# (libusb-1.0-0) when run as root with apt-get, and says how otherwise.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${CDM3D_VENV:-$root/.venv}"
stamp="$venv/.cdm3d-installed"

say() { echo "cdm3d setup: $*" >&2; }

python=""
for candidate in python3.11 python3.12 python3.10 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] < (3, 14))' 2>/dev/null; then
    python=$candidate; break
  fi
done
[ -n "$python" ] || { say "needs Python 3.10-3.13 (python3.11 recommended); none found"; exit 1; }

# grep without -q reads all of ldconfig's output: with pipefail, -q's early exit would fail the pipe (SIGPIPE).
if ! ldconfig -p 2>/dev/null | grep 'libusb-1.0.so.0' >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing libusb-1.0-0 (open3d needs it)"
    apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1; } ||
      say "could not install libusb-1.0-0; open3d features (Poisson meshing) will be unavailable"
  else
    say "open3d needs the system library libusb-1.0-0: run 'sudo apt-get install libusb-1.0-0'"
  fi
fi

if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] || [ "$root/requirements/constraints.txt" -nt "$stamp" ]; then
  say "creating $venv and installing cdm3d (a few minutes the first time; log: $venv/install.log)"
  "$python" -m venv "$venv"
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check -c "$root/requirements/constraints.txt" \
       -e "$root[dev]" >"$venv/install.log" 2>&1; then
    grep -v "^WARNING: Location" "$venv/install.log" | tail -20 >&2
    say "installation failed (full log: $venv/install.log)"
    exit 1
  fi
  touch "$stamp"
fi

cd "$root"
export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv"
exec "$@"
