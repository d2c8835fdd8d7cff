# Sourced by scripts/dev and scripts/test: makes .venv (Python >= 3.11) with the given extra, once per
# pyproject.toml change.
set -euo pipefail
extra="$1"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      python="$candidate"; break
    fi
  done
fi
[ -n "$python" ] || { echo "ninkik-tasks needs Python 3.11 or newer: install it or set PYTHON=/path/to/python" >&2; exit 2; }
stamp="$root/.venv/.installed-$extra"
want="$(cat "$root/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -x "$root/.venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if [ -x "$root/.venv/bin/python" ]; then
    echo "updating $root/.venv ($extra): pyproject.toml changed ..." >&2
  else
    echo "building $root/.venv ($extra) with $python: installing ninkik-tasks and its dependencies, about a minute the first time ..." >&2
    "$python" -m venv "$root/.venv"
  fi
  "$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[$extra]" 2>&1 \
    | grep -v "^WARNING: Location" >&2 || true
  "$root/.venv/bin/python" -c "import ninkik_tasks" || { echo "installing ninkik-tasks failed" >&2; exit 1; }
  echo "$want" > "$stamp"
  echo "$root/.venv is ready" >&2
fi
