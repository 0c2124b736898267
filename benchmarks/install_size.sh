#!/usr/bin/env bash
# Size and time of the base install (no PyTorch) and of the train extra, each in a fresh venv,
# with pip's cache disabled (so the time includes fetching from the package index).
#   bash benchmarks/install_size.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for v in base train; do
  d=$(mktemp -d)
  python3 -m venv "$d"
  spec="."; [ "$v" = train ] && spec=".[train]"
  t0=$(date +%s.%N)
  "$d/bin/pip" install -q --no-cache-dir "$spec" >/dev/null 2>&1
  t1=$(date +%s.%N)
  torch=$("$d/bin/python" -c 'import importlib.util as u; print(u.find_spec("torch") is not None)')
  echo "$v: $(echo "$t1 - $t0" | bc) s, $(du -sm "$d" | cut -f1) MB, torch installed: $torch"
  rm -rf "$d"
done
