#!/usr/bin/env bash
# Build (or reuse) the virtualenv that benchmarks/query_speed.py runs the peer libraries from, and print its python
# (the last line on stdout; progress goes to stderr):
#   bash benchmarks/setup_peers.sh                       # .cache/bench-venv (git-ignored)
#   BENCH_VENV=/elsewhere bash benchmarks/setup_peers.sh  # (a relative path is taken from the repo root)
# The venv holds activelab (-e ., so it measures the working tree), torch==2.14.1 as pyproject.toml pins it, and
# the peers pinned in benchmarks/requirements-peers.txt. uv does the install; it is told pip's configured indexes
# (pip config) so torch comes from the same place pip takes it, and compiles the bytecode up front (with
# PYTHONDONTWRITEBYTECODE set, as on these machines, every case's process would otherwise compile torch's sources
# again: over 10 s per import). A peer that fails to install is left out and named
# in $VENV/.peer-errors; query_speed.py reports it as a row with the error instead of dropping it silently.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
VENV=${BENCH_VENV:-.cache/bench-venv}
PY=${PYTHON:-python3}
REQ=benchmarks/requirements-peers.txt
WANT="$(grep -v '^#' "$REQ" | tr '\n' ' ') torch==2.14.1 uv==$UV_VERSION"

mkdir -p "$(dirname "$VENV")"
VENV=$(cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")
MARKER="$VENV/.activelab-ready"
if command -v flock >/dev/null; then
  exec 9>"$VENV.lock"
  flock 9
fi
if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$WANT" ] && "$VENV/bin/python" -c "import activelab" 2>/dev/null; then
  echo "setup_peers: reusing $VENV" >&2
  echo "$VENV/bin/python"
  exit 0
fi

start=$SECONDS
rm -rf "$VENV"
echo "setup_peers: installing into $VENV: $WANT" >&2
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION" >&2
# pip's extra indexes and find-links (a local wheel cache, where the machine has one), handed to uv.
uv_args=()
for url in $("$VENV/bin/python" -m pip config get global.extra-index-url 2>/dev/null || true); do
  uv_args+=(--extra-index-url "$url")
done
for dir in $("$VENV/bin/python" -m pip config get global.find-links 2>/dev/null || true); do
  uv_args+=(--find-links "$dir")
done
[ ${#uv_args[@]} -eq 0 ] || uv_args+=(--index-strategy unsafe-best-match)
uv() { "$VENV/bin/uv" pip install --compile-bytecode --python "$VENV/bin/python" "${uv_args[@]}" "$@" >&2; }
uv "torch==2.14.1" -e .
: > "$VENV/.peer-errors"
while read -r req; do
  case "$req" in ''|'#'*) continue ;; esac
  if ! out=$(uv "torch==2.14.1" "$req" 2>&1); then
    echo "setup_peers: $req did not install" >&2
    printf '%s\t%s\n' "$req" "$(echo "$out" | tail -3 | tr '\t\n' '  ')" >> "$VENV/.peer-errors"
  fi
done < "$REQ"
"$VENV/bin/python" -c "import activelab, torch, numpy; assert torch.__version__.startswith('2.14.1'), torch.__version__"
echo "$WANT" > "$MARKER.tmp"
mv "$MARKER.tmp" "$MARKER"
echo "setup_peers: ready in $((SECONDS - start)) s" >&2
echo "$VENV/bin/python"
