#!/usr/bin/env bash
# Install what `make demo` / `make test` need and is missing; fast when nothing is.
#   scripts/bootstrap.sh demo   PostgreSQL 15 + PostGIS 3, the .venv with gisgrid
#   scripts/bootstrap.sh test   the same, plus Chromium and CJK fonts for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-demo}

pkgs=(postgresql-15 postgresql-15-postgis-3)
[ "$what" = test ] && pkgs+=(chromium fonts-noto-cjk)
[ "$what" = bench ] && pkgs+=(gdal-bin)      # bench/import.py's anchor: ogr2ogr
python3 -c 'import ensurepip, venv' 2>/dev/null || pkgs+=(python3-venv)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "gisgrid needs these Debian packages; run as root:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.gisgrid-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing gisgrid into .venv (editable, with test extras)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi
if [ "$what" = bench ] && ! .venv/bin/python -c "import httptools, uvloop, gerrychain, spopt, pymetis" 2>/dev/null; then
  echo "installing the bench extras into .venv"
  .venv/bin/pip install -q -e '.[test,bench]'
fi
