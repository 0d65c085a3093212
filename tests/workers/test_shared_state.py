"""What the workers of one proxy share besides bindings (issue 12): bans,
rate and auth-failure counts, digest nonce-counts.  The parent's hub and
two or three workers' lines over iosim's in-memory transports, all on one
Clock."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.test.iosim import connectedServerAndClient

from sosimple_proxy.location.bindings import BindingTable
from sosimple_proxy.security.digest import DigestAuthenticator, Outcome, answer_challenge
from sosimple_proxy.security.limits import ALLOW, BANNED, LIMITED, Limits, LimitsConfig
from sosimple_proxy.security.nonces import CountVerdict, NonceIssuer
from sosimple_proxy.security.users import UserEntry, UserTable
from sosimple_proxy.workers.hub import Hub, WorkerLink
from sosimple_proxy.workers.protocol import Hello
from sosimple_proxy.workers.shared_limits import FLUSH_INTERVAL, SharedLimitsHub, WorkerLimits
from sosimple_proxy.sip.address import Peer
from sosimple_proxy.workers.shared_nonces import WorkerNonceCounts, owner
from tests.proxy.test_auth import auth_harness, only_final, register_request, responses

SOURCE = "192.0.2.9"
CONFIG = LimitsConfig(requests_per_second=10, burst=20, ban_seconds=60, auth_failures=4)


class Proxy:
    """A parent (hub, limiter) and its workers, connected in memory."""

    def __init__(self, workers: int = 2, config: LimitsConfig = CONFIG) -> None:
        self.clock = Clock()
        self.config = config
        self.events: list[dict] = []
        self.limits = Limits(self.clock, config, log=Logger(observer=self.events.append))
        self.hub = Hub(BindingTable(self.clock), {})
        self.hub.limits = SharedLimitsHub(self.clock, self.limits, self.hub.lines)
        self.workers: list[WorkerLimits] = []
        self.links: list[WorkerLink] = []
        self.pumps: list[Any] = []
        for index in range(workers):
            self.connect(index)

    def connect(self, index: int) -> WorkerLimits:
        box: list[WorkerLink] = []
        limits = WorkerLimits(self.clock, self.config, lambda: box[0] if box else None)
        link, _, pump = connectedServerAndClient(lambda: self.hub.buildProtocol(None),
                                                 lambda: WorkerLink(BindingTable(self.clock), lambda: None),
                                                 clock=self.clock)
        box.append(link)
        link.limits = limits
        answers: list[Any] = []
        link.callRemote(Hello, index=index).addCallback(answers.append)
        self.pumps.append(pump)
        self.flush()
        assert answers, "no answer to Hello"
        if index < len(self.workers):
            self.workers[index], self.links[index] = limits, link
        else:
            self.workers.append(limits)
            self.links.append(link)
        return limits

    def flush(self) -> None:
        for _ in range(3):  # worker -> parent -> the other workers -> answers
            for pump in self.pumps:
                pump.flush()

    def tick(self) -> None:
        """One flush interval: the workers' tallies reach the parent."""
        self.clock.advance(FLUSH_INTERVAL)
        self.flush()

    def logged(self, word: str) -> int:
        return sum(word in (e.get("log_format") or "") for e in self.events)


def test_a_source_spread_over_the_workers_is_counted_once_and_banned_in_all():
    proxy = Proxy()
    a, b = proxy.workers
    # 15 + 15: each worker alone stays under the burst of 20, the sum does not
    assert [a.check(SOURCE) for _ in range(15)] == [ALLOW] * 15
    assert [b.check(SOURCE) for _ in range(15)] == [ALLOW] * 15
    assert not proxy.limits.is_banned(SOURCE)
    proxy.tick()
    assert proxy.limits.is_banned(SOURCE) and a.is_banned(SOURCE) and b.is_banned(SOURCE)
    assert a.check(SOURCE) is BANNED and b.check(SOURCE) is BANNED
    assert [ban["address"] for ban in proxy.limits.report()["banned"]] == [SOURCE]  # type: ignore[index]
    assert proxy.logged("banned") == 1


def test_a_sum_at_the_rate_passes_and_a_sum_over_it_is_banned():
    proxy = Proxy()
    a, b = proxy.workers
    for tick in range(30):  # 5/s at each worker: 10/s in sum, the rate
        assert (a if tick % 2 else b).check(SOURCE) is ALLOW
        proxy.tick()
    assert not proxy.limits.is_banned(SOURCE)
    for tick in range(40):  # 10/s at each worker, which alone is within the rate; 20/s in sum
        assert a.check(SOURCE) is ALLOW and b.check(SOURCE) is ALLOW
        proxy.tick()
        if proxy.limits.is_banned(SOURCE):
            break
    assert tick > 15  # the burst of 20 drained at 1 token a tick
    assert a.is_banned(SOURCE) and b.is_banned(SOURCE)


def test_a_ban_one_worker_decides_reaches_the_others_at_once():
    proxy = Proxy(workers=3)
    a, b, c = proxy.workers
    verdicts = [a.check(SOURCE) for _ in range(21)]
    assert verdicts[-1] is LIMITED  # the 503 comes from the worker itself
    proxy.flush()  # no flush interval: a ban is not batched
    assert proxy.limits.is_banned(SOURCE) and b.is_banned(SOURCE) and c.is_banned(SOURCE)
    proxy.tick()  # the banning worker's tally comes later: no second ban, no second line
    assert proxy.logged("banned") == 1


def test_the_parent_lifts_a_ban_in_every_worker():
    proxy = Proxy()
    a, b = proxy.workers
    for _ in range(21):
        a.check(SOURCE)
    proxy.flush()
    assert b.is_banned(SOURCE)
    assert proxy.limits.unban(SOURCE)  # DELETE /limits/banned/192.0.2.9
    proxy.flush()
    assert not a.is_banned(SOURCE) and not b.is_banned(SOURCE)
    assert a.check(SOURCE) is ALLOW and b.check(SOURCE) is ALLOW
    assert proxy.logged("unbanned") == 1


def test_a_ban_ends_in_every_worker_when_it_expires():
    proxy = Proxy()
    a, b = proxy.workers
    proxy.limits.ban(SOURCE, "a test")
    proxy.flush()
    assert a.is_banned(SOURCE) and b.is_banned(SOURCE)
    proxy.clock.advance(CONFIG.ban_seconds)
    proxy.flush()
    assert not a.is_banned(SOURCE) and not b.is_banned(SOURCE) and not proxy.limits.is_banned(SOURCE)
    assert not a.live_bans() and not b.live_bans()
    assert proxy.logged("unbanned") == 1


def test_wrong_passwords_spread_over_the_workers_add_up():
    proxy = Proxy()
    a, b = proxy.workers
    assert a.auth_failed(SOURCE) is ALLOW and a.auth_failed(SOURCE) is ALLOW
    assert b.auth_failed(SOURCE) is ALLOW and b.auth_failed(SOURCE) is ALLOW  # 2 + 2 of 4
    proxy.tick()
    assert proxy.limits.is_banned(SOURCE) and a.is_banned(SOURCE) and b.is_banned(SOURCE)


def test_a_worker_that_connects_gets_the_bans_in_force_before_it_serves():
    proxy = Proxy()
    proxy.limits.ban(SOURCE, "a test")
    proxy.flush()
    new = proxy.connect(1)  # worker 1 restarted
    assert new.is_banned(SOURCE)
    assert 59 < new.live_bans()[0].until - proxy.clock.seconds() <= 60


def test_allowed_sources_are_never_banned_however_spread():
    config = LimitsConfig(requests_per_second=10, burst=20, ban_seconds=60, allow=(ipaddress.ip_network("192.0.2.0/24"),))
    proxy = Proxy(config=config)
    for _ in range(30):
        for worker in proxy.workers:
            assert worker.check(SOURCE) is ALLOW
    proxy.tick()
    assert not proxy.limits.is_banned(SOURCE)


def test_charge_takes_many_requests_at_once():
    limits = Limits(Clock(), CONFIG)
    assert not limits.charge(SOURCE, 20)  # exactly the burst
    assert limits.charge(SOURCE, 1)
    assert limits.is_banned(SOURCE)


# --- digest nonce-counts


REALM = "example.com"
USERS = UserTable({("alice", REALM): UserEntry.from_password("alice", REALM, "secret")})
SECRET = b"k" * 32


class NonceWorkers:
    """Three workers' digest verifiers, their counts shared through the hub."""

    def __init__(self, count: int = 3) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.hub = Hub(BindingTable(self.clock), {})
        self.digests: list[DigestAuthenticator] = []
        self.counts: list[WorkerNonceCounts] = []
        self.pumps: list[Any] = []
        for index in range(count):
            box: list[WorkerLink] = []
            counts = WorkerNonceCounts(self.clock, 300, index, count, lambda box=box: box[0] if box else None)
            link, _, pump = connectedServerAndClient(lambda: self.hub.buildProtocol(None),
                                                     lambda: WorkerLink(BindingTable(self.clock), lambda: None),
                                                     clock=self.clock)
            box.append(link)
            link.nonces = counts
            link.callRemote(Hello, index=index)
            self.pumps.append(pump)
            digest = DigestAuthenticator(self.clock, USERS, SECRET, REALM)
            digest.share_nonce_state(counts, counts.random)
            self.digests.append(digest)
            self.counts.append(counts)
        self.flush()

    def flush(self) -> None:
        for _ in range(3):
            for pump in self.pumps:
                pump.flush()

    def verify(self, index: int, credentials: str) -> Outcome:
        answer = self.digests[index].verify(credentials, "REGISTER")
        if isinstance(answer, defer.Deferred):
            got: list[Any] = []
            answer.addBoth(got.append)
            self.flush()
            assert got, "no answer from the nonce's owner"
            answer = got[0]
        return answer.outcome


def credentials(digest: DigestAuthenticator, nc: int = 1, password: str = "secret") -> str:
    return answer_challenge(digest.challenge()[0], "alice", password, "REGISTER", "sip:example.com", nc=nc)


def test_each_worker_owns_the_nonces_it_issues():
    workers = NonceWorkers()
    for index, digest in enumerate(workers.digests):
        for _ in range(20):
            nonce = digest.challenge()[0].split('nonce="')[1].split('"')[0]
            assert owner(nonce, 3) == index
            assert NonceIssuer(workers.clock, SECRET, REALM).check(nonce).state.value == "fresh"  # any process's format


def test_a_nonce_count_used_at_one_worker_is_a_replay_at_every_other():
    workers = NonceWorkers()
    creds = credentials(workers.digests[0])
    assert workers.verify(0, creds) is Outcome.OK  # at its owner: no message at all
    assert workers.counts[0].asked == 0
    assert workers.verify(1, creds) is Outcome.REPLAY  # asked of worker 0 through the parent
    assert workers.verify(2, creds) is Outcome.REPLAY
    assert workers.counts[1].asked == 1 and workers.counts[2].asked == 1


def test_a_phone_that_moves_to_another_worker_goes_on_with_its_nonce():
    workers = NonceWorkers()
    challenge = workers.digests[1].challenge()[0]
    first = answer_challenge(challenge, "alice", "secret", "REGISTER", "sip:example.com", nc=1)
    second = answer_challenge(challenge, "alice", "secret", "REGISTER", "sip:example.com", nc=2)
    assert workers.verify(2, first) is Outcome.OK  # counted at worker 1, the owner
    assert workers.verify(1, first) is Outcome.REPLAY
    assert workers.verify(0, second) is Outcome.OK
    assert workers.verify(2, second) is Outcome.REPLAY


def test_a_wrong_password_asks_nobody():
    workers = NonceWorkers()
    assert workers.verify(1, credentials(workers.digests[0], password="guess")) is Outcome.WRONG
    assert workers.counts[1].asked == 0


def test_an_owner_that_is_gone_makes_the_nonce_stale_never_accepted():
    workers = NonceWorkers()
    creds = credentials(workers.digests[0])
    del workers.hub.lines[0]  # worker 0 died
    assert workers.verify(1, creds) is Outcome.STALE


def test_an_owner_that_does_not_answer_makes_the_nonce_stale():
    workers = NonceWorkers()
    creds = credentials(workers.digests[0])
    answer = workers.digests[1].verify(creds, "REGISTER")  # nothing pumped: no answer comes
    assert isinstance(answer, defer.Deferred)
    got: list[Any] = []
    answer.addCallback(got.append)
    workers.clock.advance(3)
    assert got and got[0].outcome is Outcome.STALE


def test_a_restarted_worker_takes_none_of_its_predecessors_nonces_as_new():
    clock = Clock()
    clock.advance(1_000_000)
    old = WorkerNonceCounts(clock, 300, 0, 2, lambda: None)
    nonce_maker = NonceIssuer(clock, SECRET, REALM, random=old.random)
    nonce = nonce_maker.make()
    assert old.accept(nonce, clock.seconds(), 1) is CountVerdict.ACCEPTED
    clock.advance(2)
    new = WorkerNonceCounts(clock, 300, 0, 2, lambda: None)
    assert new.accept(nonce, 1_000_000, 2) is CountVerdict.FORGOTTEN
    fresh = nonce_maker.make()
    assert new.accept(fresh, clock.seconds(), 1) is CountVerdict.ACCEPTED


@pytest.mark.parametrize("count", [1, 2, 3, 7, 256, 1000])
def test_owned_random_bytes_name_their_worker_for_any_count(count):
    clock = Clock()
    for index in {0, count // 2, count - 1}:
        counts = WorkerNonceCounts(clock, 300, index, count, lambda: None, source=lambda n: b"\xff" * n)
        issuer = NonceIssuer(clock, SECRET, REALM, random=counts.random)
        assert owner(issuer.make(), count) == index


# --- the proxy core waits for a count kept elsewhere


class CountsElsewhere:
    """Stands in for the nonce's owner worker (the AMP path is tested above
    and end to end): each count's verdict comes when the test says."""

    def __init__(self) -> None:
        self.pending: list[defer.Deferred] = []

    def accept(self, nonce: str, issued: float, nc: int) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.pending.append(d)
        return d


@pytest.mark.parametrize("verdict, status", [(CountVerdict.ACCEPTED, 200), (CountVerdict.REPLAY, 401),
                                             (CountVerdict.FORGOTTEN, 401)])
def test_the_proxy_answers_a_register_once_the_owner_has_judged_its_count(tmp_path, verdict, status):
    h = auth_harness(tmp_path)
    elsewhere = CountsElsewhere()
    h.proxy.digest.share_nonce_state(elsewhere, os.urandom)  # type: ignore[union-attr]
    phone = Peer("udp", "192.0.2.10", 5070)
    h.receive(register_request(), phone)
    challenge = only_final(h).headers.get("www-authenticate")
    value = answer_challenge(challenge, "alice", "secret", "REGISTER", "sip:example.com")
    request = register_request(cseq=2, auth=f"Authorization: {value}\n")
    h.receive(request, phone)
    h.receive(request, phone)  # a retransmission while the owner thinks: absorbed
    assert [r.status for r in responses(h) if r.status >= 200] == [] and len(elsewhere.pending) == 1
    elsewhere.pending[0].callback(verdict)
    final = only_final(h)
    assert final.status == status
    stale = "stale=true" in (final.headers.get("www-authenticate") or "")
    assert stale == (verdict is CountVerdict.FORGOTTEN)
