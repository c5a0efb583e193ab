#!/bin/bash
# Determinism: two identical 100-edit UltraEdit runs on SmolLM2 (held-out ZsRE 500-599, one
# turn of 100, seed 0, one thread each so that both sum in the same order), side by side.
# Writes both runs' JSON and summary.json (same fingerprint? same per-case values?).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/results/ultraedit/determinism
DATA=${DATA:-../shared/data/zsre_eval_head.json}
mkdir -p $OUT
for r in 1 2; do
  OMP_NUM_THREADS=1 .venv/bin/kedsl bench "$DATA" --method ultraedit --mode sequential --batch-size 100 \
    --offset 500 --limit 100 --metrics efficacy,locality --seed 0 --json $OUT/run$r.json > $OUT/run$r.log 2>&1 &
done
wait
.venv/bin/python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
a, b = (json.load(open(f"{out}/run{r}.json")) for r in (1, 2))
summary = {
    "fingerprint_run1": a["config"]["fingerprint_after"],
    "fingerprint_run2": b["config"]["fingerprint_after"],
    "identical": a["config"]["fingerprint_after"] == b["config"]["fingerprint_after"],
    "per_case_identical": [c["metrics"] for c in a["cases"]] == [c["metrics"] for c in b["cases"]],
    "efficacy": a["aggregate"]["efficacy"],
    "locality": a["aggregate"]["locality"],
}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print(json.dumps(summary, indent=1))
PY
