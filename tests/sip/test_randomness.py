"""random_hex: pooled secrets for tags and branches (issue 12)."""

from __future__ import annotations

import os

from sosimple_proxy.sip import randomness
from sosimple_proxy.sip.message import new_tag
from sosimple_proxy.sip.via import MAGIC_COOKIE, new_branch


def test_digits_are_hex_of_the_asked_length_and_never_repeat():
    seen = set()
    for n in (1, 8, 10, 16, 33):
        for _ in range(2000):  # across several pool refills
            h = randomness.random_hex(n)
            assert len(h) == n and all(c in "0123456789abcdef" for c in h)
            if n >= 16:
                assert h not in seen
                seen.add(h)


def test_tags_and_branches_use_it():
    assert len(new_tag()) == 10 and new_tag() != new_tag()
    b = new_branch()
    assert b.startswith(MAGIC_COOKIE) and len(b) == len(MAGIC_COOKIE) + 16


def test_a_forked_child_draws_its_own_digits():
    randomness.random_hex(4)  # the pool is filled
    left = randomness._pool
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        os.write(w, randomness.random_hex(32).encode())
        os._exit(0)
    os.close(w)
    got = os.read(r, 64).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert len(got) == 32 and not left.startswith(got)
