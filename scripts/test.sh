#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: needs only python3 (>= 3.11) and pip;
# node/npm are used for the JS interoperability tests when present, Debian's chromium
# for the real-browser test, Debian's haproxy for the load-balancer tests, Debian's
# PostgreSQL with PL/Tcl, tcllib and the build tools of the wyseman schema tool's native
# addons for the wysegi test (each installed here when missing and this runs as root with
# apt-get; nothing downloads a browser of its own).
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
# The libp2p transport's extra (py-libp2p, ~80 packages with hard pins): its tests skip,
# saying so, when it does not install beside the rest.
if ! .venv/bin/python -m pip install -q -e '.[test,p2p]'; then
    echo "the wyseman[p2p] extra did not install: the libp2p tests will be skipped"
fi

if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
        && command -v apt-get >/dev/null 2>&1; then
    echo "== apt-get install chromium (the real-browser test, tests/test_browser.py)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends chromium \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends chromium; }
fi

if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ] && [ "$(id -u)" = 0 ] \
        && command -v apt-get >/dev/null 2>&1; then
    echo "== apt-get install haproxy (the load-balancer tests, tests/test_balancer.py)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends haproxy \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends haproxy; }
fi

# The wysegi test (tests/test_wysegi.py) builds a wyselib database with the wyseman
# schema tool: PL/Tcl in the system's PostgreSQL, tcllib, and what its native npm addons
# (tcl, pg-native) need to build during npm ci below.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    wanted="tcllib tcl-dev libpq-dev build-essential python3"
    # PL/Tcl for each installed PostgreSQL; none installed: the distribution's own
    version=""
    for home in /usr/lib/postgresql/*; do
        [ -x "$home/bin/pg_ctl" ] && version=$(basename "$home") \
            && wanted="$wanted postgresql-pltcl-$version"
    done
    if [ -z "$version" ]; then
        version=$(apt-cache depends postgresql 2>/dev/null \
            | sed -n 's/.*Depends: postgresql-\([0-9][0-9]*\)$/\1/p' | head -1)
        [ -n "$version" ] && wanted="$wanted postgresql-$version postgresql-pltcl-$version"
    fi
    missing=""
    for package in $wanted; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || missing="$missing $package"
    done
    if [ -n "$missing" ]; then
        echo "== apt-get install$missing (the wysegi test, tests/test_wysegi.py)"
        export DEBIAN_FRONTEND=noninteractive
        # shellcheck disable=SC2086
        apt-get install -y -q --no-install-recommends $missing \
            || { apt-get update -q && apt-get install -y -q --no-install-recommends $missing; }
    fi
fi

if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    echo "== npm ci (the pinned JS client for interoperability tests)"
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
else
    echo "node/npm not found: JS interoperability tests will be skipped"
fi

echo "== ruff"
.venv/bin/ruff check wyseman tests twisted benchmarks

echo "== import contracts (setup.cfg [importlinter]: each layer imports only those below)"
.venv/bin/lint-imports

echo "== mypy (setup.cfg [mypy])"
.venv/bin/mypy

echo "== trial"
log=$(mktemp)
set +e
.venv/bin/python -m twisted.trial --reporter=text "${@:-tests}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# The embedded PostgreSQL runs differently for root (a dedicated system user) and for
# everyone else (the caller): when this runs as root, check the unprivileged path too.
if [ "$(id -u)" = 0 ] && command -v runuser >/dev/null 2>&1 && id nobody >/dev/null 2>&1; then
    echo "== embedded PostgreSQL as an unprivileged user (nobody)"
    # The venv's interpreter may live where nobody cannot go (e.g. pyenv under /root):
    # then use the system's interpreter of the same version on the venv's packages.
    site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    version=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    runner=""
    if runuser -u nobody -- .venv/bin/python -c '' >/dev/null 2>&1; then
        runner=".venv/bin/python"
    elif runuser -u nobody -- "python$version" -c '' >/dev/null 2>&1; then
        runner="python$version"
    fi
    if [ -n "$runner" ] && runuser -u nobody -- test -r wyseman/__init__.py -a -r "$site"; then
        home=$(mktemp -d)
        chmod 777 "$home"
        runuser -u nobody -- env HOME="$home" PYTHONPATH="$PWD:$site" "$runner" \
            -m twisted.trial --reporter=text --temp-directory="$home/trial" \
            tests.test_service.EmbeddedTests 2>&1 | tee -a "$log"
        [ "${PIPESTATUS[0]}" = 0 ] || status=1
        rm -rf "$home"
    else
        echo "skipped: no Python $version that user nobody can run, or this checkout is not" \
             "readable by nobody"
    fi
fi
set -e
# One plain summary line over every trial run: "N passed, N failed, N skipped".
.venv/bin/python - "$log" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
counts: dict = {}
for _, inner in re.findall(r"^(PASSED|FAILED) \((.*)\)\s*$", text, re.M):
    for key, number in re.findall(r"(\w+)=(\d+)", inner):
        counts[key] = counts.get(key, 0) + int(number)
bad = sum(int(counts.get(k, 0)) for k in ("failures", "errors", "unexpectedSuccesses"))
print(f"{counts.get('successes', 0)} passed, {bad} failed, {counts.get('skips', 0)} skipped")
PY
rm -f "$log"
exit "$status"
