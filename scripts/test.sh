#!/usr/bin/env bash
# The whole test suite: lint, type check, then every test (real sockets, real servers, files).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The dashboard's browser tests drive Debian's Chromium (never a downloaded browser build).
if [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "[test] installing Debian's chromium for the browser tests"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "[test] /usr/bin/chromium is missing and apt-get (as root) is not available:" \
             "the browser tests will be skipped; install Debian's chromium to run them" >&2
    fi
fi
# The scale-out tests start their own redis-server on 127.0.0.1 (Debian's package).
if ! command -v redis-server >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "[test] installing Debian's redis-server for the scale-out tests"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        echo "[test] redis-server is missing and apt-get (as root) is not available:" \
             "the scale-out tests will be skipped; install Debian's redis-server to run them" >&2
    fi
fi
# The C publisher's test builds clients/c/spike_publisher.c against Debian's libzmq and msgpack-c.
if [ ! -f /usr/include/zmq.h ] || [ ! -f /usr/include/msgpack.h ] || ! command -v cc >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "[test] installing Debian's gcc, libzmq3-dev and libmsgpack-dev for the C publisher test"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libzmq3-dev libmsgpack-dev >/dev/null
    else
        echo "[test] a C compiler, zmq.h or msgpack.h is missing and apt-get (as root) is not" \
             "available: the C publisher test will be skipped; install gcc, libzmq3-dev and" \
             "libmsgpack-dev to run it" >&2
    fi
fi
.venv/bin/ruff check .
.venv/bin/mypy
# The unit tests alone (in-process, about a minute): .venv/bin/python -m pytest -m unit
exec .venv/bin/python -m pytest -q "$@"
