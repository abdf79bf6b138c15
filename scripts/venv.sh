# shellcheck shell=bash
# Sourced by scripts/test, scripts/demo and scripts/lint: make .venv (Python 3.11+) and install
# the package with the extras a command needs. Nothing has to be set up by hand first.

pick_python() {
    local candidate
    if [ -n "${PYTHON:-}" ]; then
        if ! command -v "$PYTHON" >/dev/null 2>&1; then
            echo "error: PYTHON=$PYTHON: not found" >&2
            return 1
        fi
        if "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$PYTHON"
            return 0
        fi
        echo "error: PYTHON=$PYTHON is not Python 3.11 or newer" >&2
        return 1
    fi
    # 3.11 or 3.12 first: pgserver (the embedded PostgreSQL of the demo and the test extras)
    # has no wheel for 3.13 yet (docs/operations.md, "Python versions")
    for candidate in python3 python3.12 python3.11 python; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info < (3, 13))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    for candidate in python3 python3.13 python3.14 python; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "warning: only $("$candidate" --version 2>&1) found: the daemon runs on it, but" \
                "pgserver (embedded PostgreSQL for the demo and the tests) has no wheel for it;" \
                "install python3.12 or python3.11, or set PYTHON=" >&2
            echo "$candidate"
            return 0
        fi
    done
    echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

# ensure_venv EXTRA: .venv exists and has `pip install -e '.[EXTRA]'` for the current pyproject.
ensure_venv() {
    local extra=$1 python stamp
    if [ ! -x .venv/bin/python ]; then
        python=$(pick_python)
        echo "==> creating .venv with $("$python" --version 2>&1)"
        if ! "$python" -m venv .venv; then
            rm -rf .venv
            echo "error: '$python -m venv' failed; on Debian or Ubuntu: apt-get install python3-venv" >&2
            return 1
        fi
    fi
    if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "error: .venv has $(.venv/bin/python --version 2>&1); remove it to rebuild with 3.11+" >&2
        return 1
    fi
    stamp=".venv/.installed-$extra"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "==> installing webhook-dispatcher[$extra] into .venv"
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
            .venv/bin/python -m pip install --quiet --editable ".[$extra]"
        touch "$stamp"
    fi
}
