#!/usr/bin/env bash
# Alternate the demo between two checkouts (each with its own .venv from `make install`), so
# that both are measured in one session: prints wall time and mean seconds per round per run.
#   benchmarks/compare_demo.sh /path/to/before /path/to/after [runs]
set -euo pipefail
before=$1 after=$2 runs=${3:-3}
for _ in $(seq "$runs"); do
  for tree in "$before" "$after"; do
    home=$(mktemp -d)
    (cd "$tree" && FEDENGINE_HOME=$home FEDENGINE_GATEWAY_PORT=8765 .venv/bin/fedengine demo \
      --devices 20 --per-round 10 --rounds 10 --json "$home/out.json" >"$home/log" 2>&1)
    python3 - "$tree" "$home" <<'PY'
import json, re, sys
tree, home = sys.argv[1], sys.argv[2]
result = json.load(open(f"{home}/out.json"))
seconds = [float(s) for s in re.findall(r"│ \d+\s+│(?:[^│]+│){5} ([\d.]+)", open(f"{home}/log").read())]
mean = round(sum(seconds) / len(seconds), 3) if seconds else None
print(tree, result["status"], round(result["final_accuracy"], 4), result["wall_s"], mean)
PY
    rm -rf "$home"
  done
done
