#!/usr/bin/env bash
# fedagg with a user's own aggregation rule and model, fedagg left unmodified:
#   bash examples/custom_aggregator/run.sh [more fedagg overrides]
# my_rules/ (this folder) is an ordinary Python package: PYTHONPATH makes it
# importable, and the `_target_` keys name its classes. Results: metrics.csv
# etc. in $OUT (default examples/custom_aggregator/outputs/median_run).
# FEDAGG: the fedagg command (default: the repo's .venv/bin/fedagg).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
FEDAGG="${FEDAGG:-$root/.venv/bin/fedagg}"
out="${OUT:-$here/outputs/median_run}"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
# shellcheck disable=SC2086  # FEDAGG may be a command with arguments
$FEDAGG \
  aggregator._target_=my_rules.rules.CoordinateMedian \
  model._target_=my_rules.nets.TinyNet +model.hidden=32 \
  dataset=digits num_clients=6 rounds=3 runtime=inprocess \
  "hydra.run.dir=$out" "$@"
echo "metrics: $out/metrics.csv"
