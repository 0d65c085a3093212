"""The lab's scenarios: each takes a running :class:`Lab` and a
:class:`World` of users, does its damage, measures, prints its figures and
returns them (the tests assert on them; ``make soak`` prints them).

Figures common to several scenarios:

- *registrations lost*: users whose REGISTER got a 200 and has not
  expired, for whom no live node's admin API finds a binding in the ring;
- *lookup success*: MESSAGEs between random users through a random live
  proxy that reach the callee's phone (200), counted only for callees whose
  registering proxy is alive (a binding's path goes through that proxy);
- *repair time*: from the damage until the live nodes form one ring and
  every sampled registration is found again.
"""

from __future__ import annotations

import json
import random
import socket
import ssl
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from tests.lab.netlab import RING_PORT, Lab, wait_for
from tests.lab.phones import DOMAIN, Phones


class World:
    """``count`` users spread over the lab's user namespaces; user ``i``'s
    home proxy is ``i % nodes``."""

    def __init__(self, lab: Lab, count: int, seed: int = 1, workers: int = 24, port: int = 5070,
                 settle_timeout: float = 60.0) -> None:
        self.lab = lab
        self.settle_timeout = settle_timeout
        proxies = [lab.node_address(i) for i in range(lab.n)]
        self.phones = [Phones(lab.user_address(k), lab.user_pools[k].run, proxies, port) for k in range(lab.n_users)]
        self.users = [f"u{i}" for i in range(count)]
        self.rng = random.Random(seed)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="world")
        self.registered: dict[str, float] = {}  # user -> when its binding expires (monotonic)
        self.expires = 600

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for p in self.phones:
            p.close()

    def phone(self, user: str) -> Phones:
        return self.phones[int(user[1:]) % len(self.phones)]

    def home(self, user: str) -> int:
        return self.phone(user).home.get(user, int(user[1:]) % self.lab.n)

    def alive(self, i: int) -> bool:
        return self.lab.nodes[i].running

    def live_nodes(self) -> list[int]:
        return [i for i in range(self.lab.n) if self.alive(i)]

    # -- operations

    def register(self, user: str) -> bool:
        sent = time.monotonic()
        p = self.phone(user).register(user, int(user[1:]) % self.lab.n, self.expires, alive=self.alive)
        if p is not None:
            self.registered[user] = sent + self.expires
        return p is not None

    def register_all(self, users: list[str] | None = None, per_second: float | None = None) -> tuple[int, int]:
        """REGISTER ``users`` (all by default), at most ``per_second`` a second
        (phones register spread out, not all in the same instant)."""
        users = self.users if users is None else users
        if per_second is None:
            ok = sum(self.pool.map(self.register, users))
            return ok, len(users) - ok
        ok, batch = 0, max(1, int(per_second / 4))
        for i in range(0, len(users), batch):
            t = time.monotonic()
            ok += sum(self.pool.map(self.register, users[i : i + batch]))
            time.sleep(max(0.0, 0.25 - (time.monotonic() - t)))
        return ok, len(users) - ok

    def _pair(self, rng: random.Random, among: list[int] | None = None) -> tuple[str, str, int] | None:
        live = among if among is not None else self.live_nodes()
        for _ in range(50):
            caller, callee = rng.choice(self.users), rng.choice(self.users)
            if callee in self.registered and self.home(callee) in live and caller != callee:
                return caller, callee, rng.choice(live)
        return None

    def lookups(self, count: int, rng: random.Random | None = None, among: list[int] | None = None) -> dict:
        """``count`` MESSAGEs between random users; success rate and statuses."""
        rng = rng or self.rng
        pairs = [p for p in (self._pair(rng, among) for _ in range(count)) if p is not None]
        statuses = list(self.pool.map(lambda p: self.phone(p[0]).message(*p), pairs))
        ok = statuses.count(200)
        return {"sent": len(pairs), "ok": ok, "rate": round(ok / len(pairs), 4) if pairs else None,
                "statuses": dict(Counter(str(s) for s in statuses))}

    def failure_reasons(self, top: int = 4, since: Counter[str] | None = None) -> list[tuple[str, int]]:
        """The commonest status lines of failed MESSAGEs so far (or since
        ``since``, an earlier :meth:`failures`)."""
        total = self.failures()
        if since is not None:
            total.subtract(since)
        return [(k, v) for k, v in total.most_common(top) if v > 0]

    def failures(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for p in self.phones:
            total.update(p.failures)
        return total

    def calls(self, count: int, rng: random.Random | None = None) -> dict:
        rng = rng or self.rng
        pairs = [p for p in (self._pair(rng) for _ in range(count)) if p is not None]
        outcomes = list(self.pool.map(lambda p: self.phone(p[0]).call(*p), pairs))
        ok = outcomes.count("ok")
        return {"placed": len(pairs), "ok": ok, "rate": round(ok / len(pairs), 4) if pairs else None,
                "outcomes": dict(Counter(outcomes))}

    def found(self, user: str) -> bool | None:
        """Whether the ring holds a binding for ``user``: asked of up to three
        live nodes; None when none of them gave a definite answer."""
        live = self.live_nodes()
        definite = False
        for i in self.rng.sample(live, min(3, len(live))):
            status, view = self.lab.nodes[i].admin_status(f"/registrations/{user}@{DOMAIN}")
            if status == 200 and view and view.get("bindings"):
                return True
            definite = definite or status == 404
        return False if definite else None

    def lost(self, sample: int | None = None, recheck: float = 5.0) -> list[str]:
        """Registered (and unexpired) users the ring has no binding for, on two
        looks ``recheck`` seconds apart (a read in flux is not a loss)."""
        now = time.monotonic()
        users = [u for u, until in self.registered.items() if until > now + 5 + recheck]
        if sample is not None and len(users) > sample:
            users = self.rng.sample(users, sample)
        missing = [u for u, f in zip(users, self.pool.map(self._found_unexpired, users)) if f is not True]
        if missing and recheck:
            time.sleep(recheck)
            missing = [u for u, f in zip(missing, self.pool.map(self._found_unexpired, missing)) if f is False]
        return missing

    def _found_unexpired(self, user: str) -> bool | None:
        """:meth:`found`, or True for a binding that expired before its turn
        came (checking 10,000 users takes minutes; an expired binding is
        gone by design, not lost)."""
        if self.registered.get(user, 0.0) <= time.monotonic() + 2:
            return True
        return self.found(user)

    def settled(self, sample: int = 200, timeout: float | None = None) -> tuple[bool, float]:
        """Wait until one ring and no sampled registration missing."""
        timeout = self.settle_timeout if timeout is None else min(timeout, self.settle_timeout)
        return wait_for(lambda: self.lab.one_ring() and not self.lost(sample, recheck=0), timeout, 1.0)


def _print(name: str, figures: dict) -> dict:
    print(f"[lab] {name}: " + json.dumps(figures, default=str))
    return figures


def _holders(world: World, users: list[str]) -> dict[str, set[str]]:
    """Which nodes hold each user's record (the admin API's /locate)."""
    lab = world.lab
    live = world.live_nodes()

    def locate(u: str) -> set[str]:
        view = lab.nodes[world.rng.choice(live)].admin(f"/locate/{u}@{DOMAIN}")
        if not view:
            return set()
        return {p["address"] for p in [view["responsible"], *view["replicas"]] if p}

    return dict(zip(users, world.pool.map(locate, users)))


def _log_sizes(lab: Lab) -> dict[int, int]:
    return {n.index: n.log_path.stat().st_size for n in lab.nodes if n.log_path.exists()}


def _logged(lab: Lab, since: dict[int, int], marker: str, top: int = 4) -> list[tuple[str, int]]:
    """The commonest texts after ``marker`` in the nodes' logs since ``since``
    (why a ring lookup failed, what the relay rule refused)."""
    seen: Counter[str] = Counter()
    for n in lab.nodes:
        try:
            with open(n.log_path, "rb") as f:
                f.seek(since.get(n.index, 0))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        for line in text.splitlines():
            if marker in line:
                seen[line.split(marker, 1)[1].strip()[:100]] += 1
    return seen.most_common(top)


def _restart_dead(lab: Lab) -> None:
    dead = [n for n in lab.nodes if not n.running]
    with ThreadPoolExecutor(max(1, len(dead))) as pool:
        list(pool.map(lambda n: n.restart(), dead))


# -- kills


def kill_nodes(world: World, count: int, name: str, rng: random.Random, repair_timeout: float = 90.0) -> dict:
    """Kill ``count`` nodes at once (SIGKILL); registrations whose every copy
    was on them may go, none other may."""
    lab = world.lab
    ok, took = world.settled(timeout=60)
    victims = rng.sample(range(1, lab.n), count)  # node 0 bootstraps restarts
    addresses = {f"{lab.node_address(i)}:{RING_PORT}" for i in victims}
    users = [u for u in world.registered]
    holders = _holders(world, users)
    doomed = {u for u, h in holders.items() if h and h <= addresses}
    failed_before = world.failures()
    logs = _log_sizes(lab)
    for i in victims:
        lab.nodes[i].kill()
    during = world.lookups(100, rng)
    failed_during = world.failures()
    repaired, repair = wait_for(lambda: lab.one_ring() and not world.lost(200, recheck=0), repair_timeout, 1.0)
    lost = world.lost()
    # callees registered at a live proxy (their Path leads through it), from any live proxy
    after = world.lookups(200, rng)
    figures = {
        "killed": sorted(victims), "registered": len(users), "every_copy_on_killed": len(doomed),
        "lost": len(lost), "lost_with_a_surviving_copy": len(set(lost) - doomed),
        "lookup_rate_right_after": during["rate"], "statuses_right_after": during["statuses"],
        "failure_reasons_right_after": world.failure_reasons(since=failed_before),
        "lookups_after_repair": after["sent"], "lookup_rate_after_repair": after["rate"],
        "statuses_after_repair": after["statuses"], "failure_reasons": world.failure_reasons(since=failed_during),
        "repaired": repaired, "repair_seconds": round(repair, 1), "settled_before": ok, "settle_seconds_before": round(took, 1),
        "ring_lookup_failures_logged": _logged(lab, logs, "lookup failed:"),
        "relaying_denied_logged": _logged(lab, logs, "relaying denied:"),
    }
    _print(name, figures)
    _restart_dead(lab)
    world.settled(timeout=60)
    return figures


# -- partition


def partition(world: World, seconds: float, rng: random.Random, heal_timeout: float = 60.0) -> dict:
    """Two halves for ``seconds``; each half serves its own users; then heal."""
    lab = world.lab
    world.settled(timeout=60)
    a, b = list(range(lab.n // 2)), list(range(lab.n // 2, lab.n))
    lab.partition(a, b)
    t0 = time.monotonic()
    time.sleep(min(seconds, 5.0))
    inside_a = world.lookups(100, rng, among=a)
    inside_b = world.lookups(100, rng, among=b)
    left = seconds - (time.monotonic() - t0)
    if left > 0:
        time.sleep(left)
    rings_during = [len(r) for r in lab.rings()]
    lab.heal()
    healed, heal = wait_for(lab.one_ring, heal_timeout, 1.0)
    rings_after = [len(r) for r in lab.rings()]
    lost = world.lost()
    after = world.lookups(200, rng)
    return _print("partition", {
        "halves": [a, b], "seconds": seconds, "rings_during": rings_during,
        "lookup_rate_inside_half_a": inside_a["rate"], "lookup_rate_inside_half_b": inside_b["rate"],
        "one_ring_after_heal": healed, "heal_seconds": round(heal, 1), "rings_after": rings_after,
        "lost": len(lost), "lookup_rate_after": after["rate"],
    })


# -- rolling restart


class Load:
    """Background traffic: registrations refreshed and MESSAGEs sent in a loop until stopped."""

    def __init__(self, world: World, rng: random.Random, per_round: int = 10, pause: float = 0.5) -> None:
        self.pause = pause
        self.world, self.rng, self.per_round = world, rng, per_round
        self.stats: Counter[str] = Counter()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        w = self.world
        while not self._stop.is_set():
            users = self.rng.sample(w.users, min(self.per_round, len(w.users)))
            ok, failed = w.register_all(users)
            self.stats["register_ok"] += ok
            self.stats["register_failed"] += failed
            m = w.lookups(self.per_round, self.rng)
            self.stats["message_ok"] += m["ok"]
            self.stats["message_failed"] += m["sent"] - m["ok"]
            self._stop.wait(self.pause)

    def stop(self) -> dict:
        self._stop.set()
        self.thread.join(60)
        return dict(self.stats)


def rolling_restart(world: World, rng: random.Random, count: int | None = None) -> dict:
    """Restart ``count`` nodes (all by default) one after the other under load."""
    lab = world.lab
    settled_before, settle_before = world.settled(timeout=60)
    load = Load(world, rng)
    t0 = time.monotonic()
    for node in lab.nodes[: count or lab.n]:
        node.restart()
        wait_for(lab.one_ring, 30, 0.5)
    took = time.monotonic() - t0
    stats = load.stop()
    settled, settle = world.settled(timeout=60)
    lost = world.lost()
    total_msg = stats.get("message_ok", 0) + stats.get("message_failed", 0)
    total_reg = stats.get("register_ok", 0) + stats.get("register_failed", 0)
    return _print("rolling restart", {
        "nodes_restarted": count or lab.n, "seconds": round(took, 1), **stats,
        "message_success": round(stats.get("message_ok", 0) / total_msg, 4) if total_msg else None,
        "register_success": round(stats.get("register_ok", 0) / total_reg, 4) if total_reg else None,
        "settled_before": settled_before, "settle_before_seconds": round(settle_before, 1),
        "rings_after": [len(r) for r in lab.rings()],
        "settled_after": settled, "settle_seconds": round(settle, 1), "lost": len(lost),
        "failure_reasons": world.failure_reasons(),
    })


# -- a full disk


def disk_full(world: World, index: int, rng: random.Random, users: list[str]) -> dict:
    """Node ``index`` runs on a small tmpfs (``Lab.small_disk`` before it
    started); fill it, then register ``users``: all must succeed and be
    found, and its log must say it refuses writes."""
    lab = world.lab
    node = lab.nodes[index]
    state = lab.dir / f"n{index}" / "overlay"
    filled = lab.fill(state)
    ok, failed = world.register_all(users)
    def missing_now() -> list[str]:
        return [u for u, f in zip(users, world.pool.map(world.found, users)) if f is not True]

    found_wait, took = wait_for(lambda: not missing_now(), 30, 1.0)
    missing = missing_now()
    log = node.log_path.read_text(errors="replace")
    refusals = log.count("refusing writes")
    lookups = world.lookups(100, rng)
    for f in ("filler", "filler2"):
        (state / f).unlink(missing_ok=True)
    return _print("disk full", {
        "node": index, "filled_bytes": filled, "registered_ok": ok, "registered_failed": failed,
        "missing_from_ring": len(missing), "refusal_log_lines": refusals, "node_running": node.running,
        "lookup_rate": lookups["rate"], "seconds_to_find_all": round(took, 1),
    })


# -- floods


def _flood_udp(lab: Lab, target: int, seconds: float) -> int:
    def run() -> int:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((lab.FLOOD_ADDRESS, 0))
        s.setblocking(False)
        port = s.getsockname()[1]
        sent, n, end = 0, 0, time.monotonic() + seconds
        while time.monotonic() < end:
            n += 1
            data = (f"OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {lab.FLOOD_ADDRESS}:{port};branch=z9hG4bKf{n}\r\n"
                    f"Max-Forwards: 70\r\nFrom: <sip:f@{DOMAIN}>;tag=f\r\nTo: <sip:{DOMAIN}>\r\nCall-ID: fl{n}\r\n"
                    f"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
            try:
                s.sendto(data, (lab.node_address(target), 5060))
                sent += 1
            except (BlockingIOError, OSError):
                time.sleep(0.0005)
        s.close()
        return sent

    return lab.flood_pool.run(run)  # type: ignore[union-attr]


def _flood_tcp(lab: Lab, target: int, seconds: float, tls: bool) -> int:
    """Connections opened as fast as possible, each sending one OPTIONS
    (TCP) or only a handshake (TLS), then dropped."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def worker() -> int:
        opened, n, end = 0, 0, time.monotonic() + seconds
        while time.monotonic() < end:
            n += 1
            try:
                s = socket.create_connection((lab.node_address(target), 5061 if tls else 5060), timeout=1)
                if tls:
                    s = ctx.wrap_socket(s, server_hostname="localhost")
                else:
                    s.sendall(b"".join(
                        (f"OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TCP {lab.FLOOD_ADDRESS}:1;branch=z9hG4bKt{n}-{k}\r\n"
                         f"Max-Forwards: 70\r\nFrom: <sip:f@{DOMAIN}>;tag=f\r\nTo: <sip:{DOMAIN}>\r\n"
                         f"Call-ID: tf{n}-{k}-{threading.get_ident()}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
                        for k in range(20)))
                opened += 1
                s.close()
            except (OSError, ssl.SSLError):
                time.sleep(0.01)
        return opened

    futures = [lab.flood_pool.submit(worker) for _ in range(8)]  # type: ignore[union-attr]
    return sum(f.result() for f in futures)


def floods(world: World, rng: random.Random, seconds: float, target: int = 0) -> dict:
    """Each flood at node ``target`` from the flooder's namespace while the
    users in the other namespaces register, send MESSAGEs and place calls
    through it.  Figures per flood: the users' failures, how soon the ban
    was seen (``/limits`` asked every 0.1 s during the flood, from the
    flood's start: an upper bound, the flooded node answers late), and what was
    dropped unread: by the kernel (``[limits] kernel_bans``, its nft
    counter) and by the process (its drop count)."""
    lab = world.lab
    # What an earlier scenario left (a node still down after the soak's
    # churn, a ring still repairing) is not the flood's doing: start whole.
    _restart_dead(lab)
    settled_before, _ = world.settled(sample=100)
    node = lab.nodes[target]
    results: dict[str, Any] = {}

    def limits_now() -> dict:
        return node.admin("/limits") or {}

    for kind in ("tls handshake", "tcp connection", "udp request"):
        node.admin_delete(f"/limits/banned/{lab.FLOOD_ADDRESS}")
        stats: Counter[str] = Counter()
        stop = threading.Event()
        before = limits_now()
        banned_after: list[float] = []
        register_failures_before = sum((p.register_failures for p in world.phones), Counter())
        call_failures: Counter[str] = Counter()

        def users_meanwhile() -> None:
            while not stop.is_set():
                batch = rng.sample(world.users, 20)
                for u in batch:
                    world.phone(u).home[u] = target
                for u, ok in zip(batch, world.pool.map(lambda u: world.phone(u).register(u, target, world.expires) is not None, batch)):
                    stats["register_ok" if ok else "register_failed"] += 1
                m = world.lookups(20, rng, among=[target])
                stats["message_ok"] += m["ok"]
                stats["message_failed"] += m["sent"] - m["ok"]
                pairs = [p for p in (world._pair(rng, [target]) for _ in range(4)) if p is not None]
                for outcome in world.pool.map(lambda p: world.phone(p[0]).call(*p), pairs):
                    stats["call_ok" if outcome == "ok" else "call_failed"] += 1
                    if outcome != "ok":
                        call_failures[outcome] += 1

        def watch_ban(started: float) -> None:
            while not stop.is_set() and not banned_after:
                if any(b.get("address") == lab.FLOOD_ADDRESS for b in limits_now().get("banned", [])):
                    banned_after.append(round(time.monotonic() - started, 2))
                    return
                time.sleep(0.1)

        meanwhile = threading.Thread(target=users_meanwhile, daemon=True)
        meanwhile.start()
        watcher = threading.Thread(target=watch_ban, args=(time.monotonic(),), daemon=True)
        watcher.start()
        if kind == "udp request":
            sent = _flood_udp(lab, target, seconds)
        else:
            sent = _flood_tcp(lab, target, seconds, tls=kind.startswith("tls"))
        stop.set()
        meanwhile.join(60)
        watcher.join(10)
        limits = limits_now()
        time.sleep(0.5)  # a GET /limits asks nft for its counter; the next one shows it
        after = limits_now()
        banned = [b for b in limits.get("banned", []) if b.get("address") == lab.FLOOD_ADDRESS]
        total = sum(stats.values())
        failed = stats["register_failed"] + stats["message_failed"] + stats["call_failed"]
        kernel = after.get("kernel") or {}
        register_failures = sum((p.register_failures for p in world.phones), Counter()) - register_failures_before
        results[kind] = {
            "flood_sent": sent, "flood_unit": "datagrams" if kind == "udp request" else "connections", **stats,
            "user_failure_rate": round(failed / total, 4) if total else None,
            "register_failure_reasons": dict(register_failures.most_common(3)),
            "message_failure_reasons": [r for r in world.failure_reasons(3)] if stats["message_failed"] else [],
            "call_failure_reasons": dict(call_failures.most_common(3)),
            "flooder_banned": bool(banned), "ban_reason": banned[0].get("reason") if banned else None,
            "ban_seen_after_seconds": banned_after[0] if banned_after else None,
            "kernel_bans": kernel.get("state"),
            "dropped_by_kernel": kernel.get("dropped_packets", 0) - (before.get("kernel") or {}).get("dropped_packets", 0),
            "dropped_by_process": after.get("dropped", 0) - before.get("dropped", 0),
            "refused_by_process": after.get("refused_connections", 0) - before.get("refused_connections", 0),
            "target_running": node.running, "settled_before": settled_before,
        }
    node.admin_delete(f"/limits/banned/{lab.FLOOD_ADDRESS}")
    return _print("floods", results)


# -- soak


def soak(world: World, seconds: float, rng: random.Random, churn_mean: float, sample_every: float = 10.0,
         register_rate: float = 200.0, check_sample: int | None = None) -> dict:
    """Registrations refreshed, MESSAGEs and calls between random users, and
    Poisson churn: a random node killed (and restarted a little later) at
    exponential intervals of mean ``churn_mean`` seconds."""
    lab = world.lab
    # refreshes happen well before expiry, and no binding expires while
    # the final check (minutes, for 10,000 users) is still going
    world.expires = max(300, int(seconds))
    t0 = time.monotonic()
    ok, failed = world.register_all(per_second=register_rate)
    reg_seconds = time.monotonic() - t0
    world.settled(timeout=120)
    stats: Counter[str] = Counter()
    memory: list[tuple[float, dict[int, float]]] = []
    repairs: list[float] = []
    end = time.monotonic() + seconds
    next_churn = time.monotonic() + rng.expovariate(1 / churn_mean)
    next_sample = time.monotonic()
    refresh_at = {u: time.monotonic() + rng.uniform(0, world.expires / 2) for u in world.users}
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_sample:
            memory.append((round(now - t0, 1), lab.rss()))
            next_sample = now + sample_every
        due = [u for u, t in refresh_at.items() if t <= now][: int(register_rate)]
        if due:
            r_ok, r_failed = world.register_all(due)
            stats["refresh_ok"] += r_ok
            stats["refresh_failed"] += r_failed
            for u in due:
                refresh_at[u] = now + world.expires / 2
        m = world.lookups(30, rng)
        stats["lookup_ok"] += m["ok"]
        stats["lookup_failed"] += m["sent"] - m["ok"]
        c = world.calls(5, rng)
        stats["call_ok"] += c["ok"]
        stats["call_failed"] += c["placed"] - c["ok"]
        if now >= next_churn and now < end - 20:
            victim = lab.nodes[rng.randrange(1, lab.n)]
            victim.kill()
            stats["churn_kills"] += 1
            k0 = time.monotonic()
            repaired, took = wait_for(lambda: lab.one_ring() and not world.lost(50, recheck=0), 60, 1.0)
            repairs.append(took if repaired else float("inf"))
            victim.restart()
            next_churn = time.monotonic() + rng.expovariate(1 / churn_mean)
    memory.append((round(time.monotonic() - t0, 1), lab.rss()))
    loop_end = time.monotonic()
    settled, settle = world.settled(timeout=60)
    lost = world.lost(check_sample)
    checks = time.monotonic() - loop_end
    looked = stats["lookup_ok"] + stats["lookup_failed"]
    called = stats["call_ok"] + stats["call_failed"]
    per_node = {i: [m.get(i) for _, m in memory] for i in range(lab.n)}
    figures = {
        "seconds": seconds, "users": len(world.users), "initial_register_ok": ok, "initial_register_failed": failed,
        "initial_register_seconds": round(reg_seconds, 1), **stats,
        "lookup_success": round(stats["lookup_ok"] / looked, 4) if looked else None,
        "call_success": round(stats["call_ok"] / called, 4) if called else None,
        "registrations_lost": len(lost), "registrations_checked": check_sample or len(world.registered), "longest_repair_seconds": round(max(repairs), 1) if repairs else None,
        "settled_at_end": settled, "rings_at_end": [len(r) for r in lab.rings()], "settle_seconds": round(settle, 1), "final_check_seconds": round(checks, 1),
        "wall_seconds": round(time.monotonic() - t0, 1), "failure_reasons": world.failure_reasons(),
        "memory_mb_first_last_max": {i: [v[0], v[-1], max(x for x in v if x is not None)] for i, v in per_node.items()
                                     if v and v[0] is not None and v[-1] is not None},
        "memory_samples": memory,
    }
    shown = {k: v for k, v in figures.items() if k != "memory_samples"}
    _print("soak", shown)
    print("[lab] soak memory (MiB) per node over time:")
    for at, sample in memory:
        print(f"    t={at:>7}s  " + " ".join(f"n{i}:{v:>6}" for i, v in sorted(sample.items())))
    return figures


def memory_levelled(samples: list[tuple[float, dict[int, float]]], slack_mb: float = 48.0) -> list[int]:
    """Nodes whose RSS in the second half of the run rose more than
    ``slack_mb`` above its peak in the first half (not levelling off)."""
    half = len(samples) // 2
    bad = []
    if half < 1:
        return bad
    for i in samples[0][1]:
        first = [s[1][i] for s in samples[:half] if i in s[1] and s[1][i]]
        second = [s[1][i] for s in samples[half:] if i in s[1] and s[1][i]]
        if first and second and max(second) > max(first) + slack_mb:
            bad.append(i)
    return bad


_ = (statistics, Callable)
