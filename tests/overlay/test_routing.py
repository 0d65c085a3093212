"""The routing table on its own: a pure object, no clock, no network."""

from __future__ import annotations

from zope.interface import implementer
from zope.interface.verify import verifyObject

from sosimple_proxy.overlay import ids
from sosimple_proxy.overlay.interfaces import IRoutingListener
from sosimple_proxy.overlay.messages import Peer
from sosimple_proxy.overlay.routing import RoutingTable, Suspects

M = 8  # a ring of 256 ids keeps the arithmetic readable


class Now:
    """A settable time for :class:`Suspects`."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@implementer(IRoutingListener)
class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def replica_set_changed(self) -> None:
        self.events.append(("replicas",))

    def predecessor_changed(self, peer) -> None:
        self.events.append(("predecessor", peer))


def peer(i: int) -> Peer:
    return Peer(i, f"n{i}")


ME = peer(100)


def table(size=3, replicas=2, listener=None, now=None):
    return RoutingTable(ME, M, size, replicas, Suspects(now or Now(), 10.0), listener)


def test_suspects_expire_after_their_hold():
    now = Now()
    s = Suspects(now, 10.0)
    s.add("a")
    assert "a" in s and "b" not in s
    now.t = 9.9
    assert "a" in s
    now.t = 10.0
    assert "a" not in s
    s.add("b")
    s.discard("b")
    assert "b" not in s


def test_successor_list_skips_us_repeats_and_suspects_and_is_capped():
    t = table(size=3)
    t.suspects.add("n130")
    t.set_successors([peer(110), ME, peer(110), peer(130), Peer(100, "elsewhere"), peer(150), peer(200), peer(20)])
    assert [p.id for p in t.successors] == [110, 150, 200]


def test_the_listener_hears_of_replica_set_and_predecessor_changes_only():
    rec = Recorder()
    verifyObject(IRoutingListener, rec)
    t = table(size=4, replicas=2, listener=rec)
    t.set_successors([peer(110), peer(150), peer(200)])
    t.set_successors([peer(110), peer(150), peer(220)])  # beyond the replicas: no news
    assert rec.events == [("replicas",)]
    t.set_predecessor(peer(90))
    assert rec.events[-1] == ("predecessor", peer(90))


def test_closest_preceding_takes_peers_before_the_key_closest_first():
    t = table(size=2)
    t.set_successors([peer(110), peer(120)])
    t.set_predecessor(peer(90))
    for i, p in {3: peer(140), 5: peer(200), 7: peer(250)}.items():
        t.set_finger(i, p)
    assert t.closest_preceding(210, 2) == [peer(200), peer(140)]
    assert t.closest_preceding(10, 3) == [peer(250), peer(200), peer(140)]
    # the predecessor is the farthest from us, so it precedes keys just behind us
    assert t.closest_preceding(95, 1) == [peer(90)]
    assert t.closest_preceding(105, 3) == []  # nothing between us and the key
    t.suspects.add("n200")
    assert t.closest_preceding(210, 2) == [peer(140), peer(120)]


def test_find_answers_from_the_successor_list_or_points_closer():
    t = table(size=2)
    alone = t.find(5, 3)
    assert alone.done and alone.peers == (ME,)
    t.set_successors([peer(110), peer(120)])
    t.set_predecessor(peer(90))
    t.set_finger(6, peer(180))
    mine = t.find(95, 3)
    assert mine.done and mine.peers == (ME, peer(110), peer(120)) and mine.predecessor == peer(90)
    assert t.find(115, 3).peers == (peer(120),)
    farther = t.find(200, 3)
    assert not farther.done and farther.peers == (peer(180), peer(120), peer(110))


def test_responsibility():
    t = table()
    assert t.responsible_for(7)  # alone: the whole ring
    t.set_successors([peer(110)])
    assert not t.responsible_for(95)  # no predecessor yet: cannot tell
    t.set_predecessor(peer(90))
    assert t.responsible_for(95) and t.responsible_for(100) and not t.responsible_for(101)


def test_a_failed_peer_leaves_every_table_and_stays_out():
    rec = Recorder()
    t = table(size=3, listener=rec)
    t.set_successors([peer(110), peer(120), peer(130)])
    t.set_predecessor(peer(90))
    t.set_finger(5, peer(120))
    t.set_finger(6, peer(200))
    rec.events.clear()
    t.failed("n120")
    assert t.successors == [peer(110), peer(130)]
    assert t.fingers == {6: peer(200)}
    assert rec.events == [("replicas",)]
    t.set_successors([peer(110), peer(120), peer(130)])
    assert peer(120) not in t.successors
    t.failed("n90")
    assert t.predecessor is None
    assert rec.events[-1] != ("predecessor", None)  # dropping a dead one is no range change
    t.failed(ME.address)  # never suspect ourselves
    assert ME.address not in t.suspects


def test_a_leaving_successor_is_replaced_by_its_own_list():
    t = table(size=3)
    t.set_successors([peer(110), peer(120)])
    t.set_predecessor(peer(90))
    t.neighbour_left(peer(110), ME, [peer(120), peer(130), peer(140)])
    assert t.successors == [peer(120), peer(130), peer(140)]
    t.neighbour_left(peer(90), peer(80), [ME])
    assert t.predecessor == peer(80)


def test_fingers_below_the_first_point_at_the_successor():
    t = table()
    assert t.first_finger() == M
    t.set_successors([peer(110)])  # distance 10: fingers 0..3 start at or before 110
    assert t.first_finger() == 4
    assert ids.finger_start(ME.id, 3, M) <= 110 < ids.finger_start(ME.id, 4, M)
    t.set_finger(2, peer(110))
    t.set_finger(4, peer(120))
    t.set_finger(5, peer(120))
    t.drop_fingers_below(4)
    assert sorted(t.fingers) == [4, 5]
    assert t.finger_peers() == [peer(120)]
    assert t.known_peers() == [peer(110), peer(120)]
