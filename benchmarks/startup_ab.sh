#!/usr/bin/env bash
# A/B of the default demo: an older commit against this checkout, alternating, in one run
# (these machines are noisy: compare only rows of the same run).
#
#   git worktree add /tmp/old <commit> --detach
#   benchmarks/startup_ab.sh /tmp/old [runs]
#
# The old code runs from its worktree through PYTHONPATH (ahead of this venv's editable
# installs), with this checkout's venv; each demo gets a fresh FEDENGINE_HOME. Prints one line
# per demo: which, run, final accuracy, wall seconds, phases.
set -euo pipefail
OLD=${1:?usage: benchmarks/startup_ab.sh OLD_WORKTREE [RUNS]}
RUNS=${2:-3}
cd "$(dirname "$0")/.."
OLDPATH=$OLD/libs/fedcommon/src:$OLD/cli/src
for s in registry coordinator aggregator simulator gateway privacy; do
  OLDPATH=$OLDPATH:$OLD/services/$s/src
done
for i in $(seq 1 "$RUNS"); do
  for which in old new; do
    home=$(mktemp -d "/tmp/ab-$which-XXXX")
    if [ "$which" = old ]; then
      PYTHONPATH=$OLDPATH FEDENGINE_HOME=$home .venv/bin/fedengine demo --json "$home/out.json" \
        >/dev/null 2>&1
    else
      FEDENGINE_HOME=$home .venv/bin/fedengine demo --json "$home/out.json" >/dev/null 2>&1
    fi
    .venv/bin/python -c "
import json, sys
d = json.load(open(sys.argv[1]))
print(sys.argv[2], sys.argv[3], d['final_accuracy'], d['wall_s'], json.dumps(d['phases']))
" "$home/out.json" "$which" "$i"
    rm -rf "$home"
  done
done
