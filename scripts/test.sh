#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: needs only python3 (>= 3.11) and pip;
# node/npm are used for the JS interoperability tests when present.
# Creates ./.venv, installs the package with its test extras, the pinned JS client,
# then runs ruff and trial. Exit status is non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    echo "== npm ci (the pinned JS client for interoperability tests)"
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
else
    echo "node/npm not found: JS interoperability tests will be skipped"
fi

echo "== ruff"
.venv/bin/ruff check wyseman tests twisted benchmarks

echo "== trial"
log=$(mktemp)
set +e
.venv/bin/python -m twisted.trial --reporter=text "${@:-tests}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One plain summary line: "N passed, N failed, N skipped".
.venv/bin/python - "$log" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
m = re.findall(r"^(PASSED|FAILED) \((.*)\)\s*$", text, re.M)
counts = dict(re.findall(r"(\w+)=(\d+)", m[-1][1])) if m else {}
bad = sum(int(counts.get(k, 0)) for k in ("failures", "errors", "unexpectedSuccesses"))
print(f"{counts.get('successes', 0)} passed, {bad} failed, {counts.get('skips', 0)} skipped")
PY
rm -f "$log"
exit "$status"
