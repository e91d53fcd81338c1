#!/usr/bin/env bash
# Runs the default test suite once per backend, in separate processes, and
# fails if either fails. Extra arguments go to pytest (e.g. -m slow, -k name).
# Uses .venv/bin/python when present, else python3.
#
# The two backend passes run at the same time (each is mostly one busy
# thread: tracing, compiling, Python), so a 2-core machine finishes both in
# about the time of the longer one; each pass's output is printed when it
# ends. KERAS_GR_TESTS_SEQUENTIAL=1 runs them one after the other instead,
# with live output.
set -u
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
backends=(jax tensorflow)
logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT
start=$(date +%s)

run_pass() {  # backend, log file
  KERAS_BACKEND=$1 "$PY" -m pytest "${@:3}" >"$2" 2>&1
  echo $? >"$2.rc"
}

if [ "${KERAS_GR_TESTS_SEQUENTIAL:-0}" = "1" ]; then
  for backend in "${backends[@]}"; do
    echo "=============== KERAS_BACKEND=$backend ==============="
    run_pass "$backend" "$logdir/$backend.log" "$@"
    cat "$logdir/$backend.log"
  done
else
  pids=()
  for backend in "${backends[@]}"; do
    run_pass "$backend" "$logdir/$backend.log" "$@" &
    pids+=($!)
  done
  echo "running the JAX and TensorFlow passes side by side..."
  wait "${pids[@]}"
  for backend in "${backends[@]}"; do
    echo "=============== KERAS_BACKEND=$backend ==============="
    cat "$logdir/$backend.log"
  done
fi

status=0
echo "=============== summary ==============="
for backend in "${backends[@]}"; do
  rc=$(cat "$logdir/$backend.log.rc" 2>/dev/null || echo 1)
  # pytest exits 5 when nothing was collected: that is a failure here.
  [ "$rc" -ne 0 ] && status=1
  line=$(grep -E '(passed|failed|error|deselected|no tests ran).* in [0-9.]+s' \
    "$logdir/$backend.log" | tail -1 | tr -d '=')
  echo "$backend: $line (exit $rc)"
done
echo "wall time of both passes: $(( $(date +%s) - start ))s"
if [ "$status" -ne 0 ]; then echo "FAILED on at least one backend"; else echo "both backends passed"; fi
exit $status
