"""``parser_impl``: run a parser test module once with the pure-Python
code and once with the compiled fast paths (sosimple_proxy/sip/accel.py).

A module opts in with ``pytestmark = pytest.mark.usefixtures("parser_impl")``.
Module scope: hypothesis' tests in a module take no function-scoped fixture.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from sosimple_proxy.sip import accel


@pytest.fixture(scope="module", params=["pure", "compiled"])
def parser_impl(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "compiled" and not accel.available():
        # "not installed": a failure, not a skip, under SOSIMPLE_REQUIRE_PEERS=1 (make test as root)
        pytest.skip("the compiled parser sosimple_proxy.sip._cparse is not installed (no C compiler?)")
    before = accel.active() is not None
    accel.use(request.param == "compiled")
    try:
        yield request.param
    finally:
        accel.use(before)
