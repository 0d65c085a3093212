"""Environment skips become failures where the environment was promised.

A test that needs a real peer (sipp, baresip, kamailio) or root for a
network namespace skips where those cannot be had.  ``make test`` run as
root installs the peers and has root, so there such a skip would only hide a
broken install: with ``SOSIMPLE_REQUIRE_PEERS=1`` (which it sets) it fails.
"""

from __future__ import annotations

import os

import pytest

# Words of the skip reasons that name a missing peer or privilege.
_ENVIRONMENT = ("not installed", "needed", "needs root")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or os.environ.get("SOSIMPLE_REQUIRE_PEERS") != "1":
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if any(word in reason for word in _ENVIRONMENT):
        report.outcome = "failed"
        report.longrepr = f"required by SOSIMPLE_REQUIRE_PEERS=1 but skipped: {reason}"
