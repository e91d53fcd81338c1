#!/usr/bin/env bash
# Runs the default test suite once per backend, in separate processes, and
# fails if either fails. Extra arguments go to pytest (e.g. -m slow, -k name).
# Uses .venv/bin/python when present, else python3.
set -u
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
status=0
summary=""
for backend in jax tensorflow; do
  echo "=============== KERAS_BACKEND=$backend ==============="
  log=$(mktemp)
  KERAS_BACKEND=$backend "$PY" -m pytest "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  # pytest exits 5 when nothing was collected: that is a failure here.
  [ "$rc" -ne 0 ] && status=1
  summary+="$backend: $(grep -E '^=+ .* in [0-9.]+s' "$log" | tail -1 | tr -d '=') (exit $rc)"$'\n'
  rm -f "$log"
done
echo "=============== summary ==============="
printf '%s' "$summary"
if [ "$status" -ne 0 ]; then echo "FAILED on at least one backend"; else echo "both backends passed"; fi
exit $status
