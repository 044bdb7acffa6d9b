"""The JavaScript client package (clients/js) under Node.js, against a real server.

``npm test`` in clients/js: the copy of realtime/static/realtime.js brought up to
date (``pretest``), ``tsc`` on the typed usage examples (realtime.d.ts), then
``node --test`` with ``REALTIME_URL`` naming a ``realtime serve`` subprocess on the
session's SecantusDB and ``REALTIME_TEST_SERVE`` the command that starts another one
(the Node tests kill -9 and restart it). ``REALTIME_TEST_STRICT=1``: a Node test
that cannot run fails instead of skipping.

Needs ``node``, ``npm`` and clients/js/node_modules (``npm ci`` there, which ``make
test`` runs). Without them the test skips, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import NoReturn

import pytest

from tests.helpers import ServerProcess

pytestmark = pytest.mark.driver_blind

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clients" / "js"
#: Every Node test of clients/js/test runs (none skipped on Node.js 20 but the global
#: WebSocket one); fewer passing means tests went missing.
MIN_PASSED = 11
NODE_TIMEOUT = 240.0


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the JavaScript client tests cannot run under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture
def npm() -> str:
    """The ``npm`` command, once node, npm and the package's dev dependencies are there."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are not installed (apt-get install nodejs npm)")
    for dependency in ("typescript", "ws"):
        if not (PACKAGE / "node_modules" / dependency).is_dir():
            _unavailable(f"clients/js/node_modules/{dependency} is missing: run "
                         "`npm ci` in clients/js (make test does)")
    return npm




async def test_node_client_against_a_real_server(npm: str, server: ServerProcess) -> None:
    # The Node tests' second server: the same command and database, another port.
    serve = [sys.executable, "-m", "realtime", "serve", "--log-level", "warning"]
    env = {**server.env, "REALTIME_URL": server.url, "REALTIME_TEST_SERVE": json.dumps(serve),
           "REALTIME_TEST_STRICT": "1", "NO_COLOR": "1"}
    env.pop("REALTIME_PORT")
    proc = await asyncio.create_subprocess_exec(
        npm, "test", "--silent", cwd=PACKAGE, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), NODE_TIMEOUT)
    except TimeoutError:
        # npm, node and the server the Node tests started: the session npm leads.
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        pytest.fail(f"npm test did not finish in {NODE_TIMEOUT} s")
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text
    # The spec reporter's summary lines: "<info sign> pass N", "<info sign> fail N".
    passed = re.search(r"^\S* ?pass (\d+)$", text, re.MULTILINE)
    failed = re.search(r"^\S* ?fail (\d+)$", text, re.MULTILINE)
    assert passed is not None, text
    assert failed is not None, text
    assert int(failed.group(1)) == 0, text
    assert int(passed.group(1)) >= MIN_PASSED, text


def test_the_package_copies_the_one_source() -> None:
    """The package's realtime.js is a copy made by scripts/sync.mjs, never committed.

    No install script (``prepare``): installing the package from npm runs nothing.
    """
    ignored = (PACKAGE / ".gitignore").read_text().splitlines()
    assert "/realtime.js" in ignored
    package = json.loads((PACKAGE / "package.json").read_text())
    assert package["files"] == ["realtime.js", "realtime.d.ts"]
    for hook in ("prepack", "pretest"):
        assert package["scripts"][hook].startswith("node scripts/sync.mjs"), hook
    assert package["exports"]["."] == {"types": "./realtime.d.ts", "default": "./realtime.js"}
    assert not package.get("dependencies"), "the client has no runtime dependencies"
    assert not {"prepare", "preinstall", "install", "postinstall"} & set(package["scripts"])
    copy = PACKAGE / "realtime.js"
    if copy.exists():  # made by npm test or npm run sync; stale only until the next
        source = ROOT / "realtime" / "static" / "realtime.js"
        assert copy.read_bytes() == source.read_bytes(), "run `npm run sync` in clients/js"
