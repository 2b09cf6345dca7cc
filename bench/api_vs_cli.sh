#!/bin/bash
# The README's first Python snippet (docs/python-api.md) against the same work through the CLI,
# beside two busy processes, fresh cache each time, alternating: API, CLI, API, CLI.
set -e
cd "$(dirname "$0")/.."; ROOT=$(pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
busy() { $PY -c "
import numpy as np
x = np.random.rand(1500, 1500)
while True: x @ x
" & }
busy; B1=$!; busy; B2=$!
sleep 3
sed -n '/^```python$/,/^```$/p' docs/python-api.md | sed -n '2,/^```$/p' | sed '$d' > $ROOT/bench/results/.api_snippet.py
for round in 1 2; do
  export AUTOPRUNE_CACHE=$(mktemp -d)
  W=$(mktemp -d); cp -r "$ROOT/studies" $W/; cd $W
  S=$(date +%s.%N); $PY $ROOT/bench/results/.api_snippet.py > /dev/null 2>&1; E=$(date +%s.%N)
  echo "api round $round: $(echo "$E - $S" | bc) s"
  export AUTOPRUNE_CACHE=$(mktemp -d)
  W=$(mktemp -d); cp -r "$ROOT/studies" $W/; cd $W
  S=$(date +%s.%N)
  $PY -m autoprune train --epochs 15 -q > /dev/null 2>&1
  $PY -m autoprune compress --recipe studies/recipes/deep-compression-lenet5.toml --out lenet5.apk --epochs 15 -q > /dev/null 2>&1
  $PY -m autoprune eval lenet5.apk --no-latency > /dev/null 2>&1
  E=$(date +%s.%N)
  echo "cli round $round: $(echo "$E - $S" | bc) s"
  cd "$ROOT"
done
kill $B1 $B2
