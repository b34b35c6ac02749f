#!/usr/bin/env bash
# Run the whole test suite. The GUI tests need a display: without one, xvfb-run provides it
# when installed; otherwise tests/conftest.py skips them and says so loudly at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# The 20 slowest tests are listed at the end: the suite has a 20-minute budget on 2 cores.
set -- --durations=20 "$@"
if [ -z "${DISPLAY:-}" ] && [ "$(uname -s)" = Linux ]; then
  # xvfb-run itself fails without xauth, so both are needed.
  if command -v xvfb-run >/dev/null 2>&1 && command -v xauth >/dev/null 2>&1; then
    exec xvfb-run -a -s "-screen 0 1280x1024x24" python -m pytest -q "$@"
  fi
  echo "scripts/test.sh: no display and no xvfb-run/xauth: the GUI tests will be SKIPPED" \
    "(install xvfb xauth libgl1-mesa-dri, as .ci/run does, to run them)." >&2
fi
exec python -m pytest -q "$@"
