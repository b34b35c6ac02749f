#!/usr/bin/env bash
# Run the whole test suite; GUI tests need a display, so use Xvfb when there is none.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null 2>&1; then
  exec xvfb-run -a -s "-screen 0 1280x1024x24" python -m pytest -q "$@"
fi
exec python -m pytest -q "$@"
