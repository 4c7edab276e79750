#!/usr/bin/env bash
# Build (or reuse) the virtualenv that tests/integration/test_label_studio.py runs Label Studio from, and print the
# path of its label-studio executable (the last line on stdout; progress goes to stderr). Label Studio pins Django,
# numpy, pandas and much else of its own, so it lives apart from activelab's .venv:
#   bash scripts/labelstudio_venv.sh                           # .cache/labelstudio-venv (git-ignored)
#   LABEL_STUDIO_VENV=/elsewhere bash scripts/labelstudio_venv.sh   # (a relative path is taken from the repo root)
# Needs PyPI. uv (pip-installed into the same venv) does the install: under a minute on a fresh machine with 2 cores,
# where pip alone took 3 to 4.5 minutes (one download at a time; each of the five sdists fetches setuptools anew).
# The marker file is written last, after an import check: a venv without it (an install killed half-way) or made for
# other versions is removed and built again. A lock file keeps two runs from building it at the same time.
set -euo pipefail
cd "$(dirname "$0")/.."

LS_VERSION=1.23.2     # the release the round-trip test was verified against
UV_VERSION=0.13.9
VENV=${LABEL_STUDIO_VENV:-.cache/labelstudio-venv}
PY=${PYTHON:-python3}
WANT="label-studio==$LS_VERSION uv==$UV_VERSION"

mkdir -p "$(dirname "$VENV")"
VENV=$(cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")
MARKER="$VENV/.activelab-ready"
if command -v flock >/dev/null; then
  exec 9>"$VENV.lock"
  flock 9
fi

if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$WANT" ] && [ -x "$VENV/bin/label-studio" ] \
   && "$VENV/bin/python" -c "" 2>/dev/null; then
  echo "labelstudio_venv: reusing $VENV ($WANT)" >&2
  echo "$VENV/bin/label-studio"
  exit 0
fi

start=$SECONDS
if [ -e "$VENV" ]; then
  echo "labelstudio_venv: $VENV is incomplete, broken or for other versions; building it again" >&2
  rm -rf "$VENV"
fi
echo "labelstudio_venv: installing $WANT into $VENV" >&2
# Each step runs in the background and is waited for, so that a SIGTERM/SIGINT/SIGHUP here (the test timing out, or
# pytest killed) stops the step too instead of leaving pip or uv writing into the venv.
child=
trap '[ -z "$child" ] || kill "$child" 2>/dev/null; exit 143' TERM INT HUP
step() { "$@" >&2 & child=$!; wait "$child"; child=; }
step "$PY" -m venv "$VENV"
step "$VENV/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
step "$VENV/bin/uv" pip install --python "$VENV/bin/python" ${PIP_INDEX_URL:+--index-url "$PIP_INDEX_URL"} \
  "label-studio==$LS_VERSION"
got=$("$VENV/bin/python" -c "import label_studio; print(label_studio.__version__)")
if [ "$got" != "$LS_VERSION" ]; then
  echo "labelstudio_venv: installed label-studio $got, wanted $LS_VERSION" >&2
  exit 1
fi
[ -x "$VENV/bin/label-studio" ] || { echo "labelstudio_venv: no $VENV/bin/label-studio" >&2; exit 1; }
echo "$WANT" > "$MARKER.tmp"
mv "$MARKER.tmp" "$MARKER"
echo "labelstudio_venv: ready in $((SECONDS - start)) s" >&2
echo "$VENV/bin/label-studio"
