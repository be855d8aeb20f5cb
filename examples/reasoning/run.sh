#!/usr/bin/env bash
# One command per reasoning example: train it, then compare the tuned model with the base on the
# held-out test file (300 items x 4 samples, 95% paired bootstrap intervals), as a new user would.
#   bash examples/reasoning/run.sh efficiency    # tokens per correct answer, pass@1
#   bash examples/reasoning/run.sh calibration   # ECE, pass@1
# Extra arguments are config overrides (train.seed=1 ...). Results: runs/reasoning-TASK/compare.{json,md}
set -euo pipefail
task=${1:?usage: run.sh efficiency|calibration [key=value ...]}
shift
here=$(cd "$(dirname "$0")" && pwd)
out=${RFT_OUT:-runs/reasoning-$task}
case $task in
  efficiency) grader=answer_match ;;
  calibration) grader=$here/calibration_grader.yaml ;;
  *) echo "unknown task $task: efficiency or calibration" >&2; exit 2 ;;
esac
test=$here/../arithmetic/test.jsonl
rft train "$here/$task.yaml" run.dir="$out/run" "$@"
# eval_base.json + eval_tuned.json next to the run: the report's held-out table and reliability diagram
rft eval run --model bundled:tiny-reason --data "$test" --grader "$grader" --samples 4 --max-new-tokens 128 \
  --out "$out/eval_base.json"
rft eval run --model "$out/run/final" --data "$test" --grader "$grader" --samples 4 --max-new-tokens 128 \
  --out "$out/eval_tuned.json"
rft eval compare --base bundled:tiny-reason --tuned "$out/run/final" --data "$test" \
  --grader "$grader" --samples 4 --max-new-tokens 128 --out "$out/compare.json" --markdown "$out/compare.md"
rft report "$out/run"
