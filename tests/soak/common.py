"""What both protocols' workers share: the run's context, value sizes
around every buffer the request path has, behaviour plans, and how a
failure is described."""

import collections
import os
import random
import socket
import hashlib
import threading
import time
import traceback

import wire

KIB = 1024
SETTLE = 2.0  # seconds a retired key rests before it is read back


class Failure(Exception):
    """A check that failed: the message says what was sent, what was
    expected and what came back. `since` is when the trouble began (for a
    proxy that stopped answering, when the last byte moved), so that of
    several workers' failures the first cause is reported first."""

    def __init__(self, message, since=None):
        super().__init__(message)
        self.since = since if since is not None else time.monotonic()


def show_bytes(data, limit=48):
    """A value as a failure report shows it: short ones whole, long ones by
    length, digest and head."""
    if data is None:
        return "nil"
    if len(data) <= limit:
        return repr(data)
    return f"<{len(data)} bytes sha1:{hashlib.sha1(data).hexdigest()[:12]} {data[:limit]!r}...>"


def show_value(v, limit=48):
    if isinstance(v, (bytes, bytearray)):
        return show_bytes(bytes(v), limit)
    if isinstance(v, (list, tuple)):
        inner = ", ".join(show_value(x, 24) for x in list(v)[:6])
        more = f", ... ({len(v)} items)" if len(v) > 6 else ""
        return f"{type(v).__name__}[{inner}{more}]"
    if isinstance(v, dict):
        items = list(v.items())[:4]
        inner = ", ".join(f"{show_value(k, 20)}: {show_value(x, 20)}" for k, x in items)
        more = f", ... ({len(v)} fields)" if len(v) > 4 else ""
        return "{" + inner + more + "}"
    if isinstance(v, (set, frozenset)):
        return "set" + show_value(sorted(v), limit)
    text = repr(v)
    return text if len(text) <= 200 else text[:200] + "..."


def show_args(args, limit=8):
    parts = [show_bytes(a, 40) for a in args[:limit]]
    if len(args) > limit:
        parts.append(f"... ({len(args)} arguments)")
    return " ".join(parts)


class Context:
    """One soak run as the workers see it."""

    def __init__(self, args, seed, redis_table, mc_table, redis_ports, mc_ports):
        self.args = args
        self.seed = seed
        self.host = args.proxy_host
        self.redis_table = redis_table
        self.mc_table = mc_table
        self.redis_ports = redis_ports
        self.mc_ports = mc_ports
        self.stop = threading.Event()
        self.deadline = time.monotonic() + args.duration
        self.lock = threading.Lock()
        self.failures = []
        mtu = args.mtu
        # TCP payload of one full segment at this MTU, with and without
        # the timestamp option; the other common MTU's too.
        segs = {mtu - 40, mtu - 52, 1460, 1448, 3398, 3386}
        self.edges = sorted(segs | {4 * KIB, 8 * KIB, 16 * KIB, 32 * KIB, 64 * KIB})

    def fail(self, who, message, since=None):
        with self.lock:
            self.failures.append((since if since is not None else time.monotonic(), who, message))
        self.stop.set()

    def ordered_failures(self):
        """(who, message), the earliest trouble first."""
        with self.lock:
            return [(who, msg) for _, who, msg in sorted(self.failures, key=lambda f: f[0])]

    def running(self):
        return not self.stop.is_set() and time.monotonic() < self.deadline


class Stats(collections.Counter):
    """Per-worker counters, added up at the end."""


def edge_size(rng, edges, largest, overhead=0):
    """A size at, or 1 to 3 bytes around, a buffer size or a multiple of it;
    with `overhead`, sometimes such that the whole request frame lands
    there instead of the value."""
    while True:
        base = rng.choice(edges) * rng.choice((1, 1, 1, 2, 3))
        size = base + rng.randint(-3, 3)
        if overhead and rng.random() < 0.4:
            size -= overhead
        if 0 <= size <= largest:
            return size


def draw(rng, shares):
    """Draws r in [0, 1) and returns the value of the first (share, value)
    entry with r < share (shares ascending, the last 1): a random number in
    a (low, high) range, or what a function returns."""
    r = rng.random()
    for share, value in shares:
        if r < share:
            return rng.randint(*value) if isinstance(value, tuple) else value()
    raise ValueError(f"no share above {r}")


def value_bytes(rng, n, pattern):
    """`n` random bytes, or now and then `pattern` after the length, which
    is easier to follow in a dump."""
    if rng.random() < 0.2:
        return (b"%d-" % n + pattern * (n // 10 + 1))[:n]
    return rng.randbytes(n)


def cut_points(rng, total, starts):
    """Where to cut the writes of a pipeline of `total` bytes whose
    requests start at `starts`: mid-request, on and around request
    boundaries, and around the receive buffer sizes."""
    cuts = set()
    for _ in range(rng.randint(1, 8)):
        r = rng.random()
        if r < 0.3 and len(starts) > 1:
            cuts.add(rng.choice(starts[1:]) + rng.randint(-2, 2))
        elif r < 0.6:
            cuts.add(rng.choice((8, 16, 32, 64)) * KIB + rng.randint(-3, 3))
        else:
            cuts.add(rng.randrange(1, max(2, total)))
    return sorted(c for c in cuts if 0 < c < total)


def make_plan(rng, total, starts, sizes, n, stats, allow_vanish=True):
    """How one pipeline is written and read; `starts` and `sizes` are the
    requests' offsets and lengths in the payload, `n` the replies due."""
    plan = wire.Plan()
    if rng.random() < 0.35:
        plan.cuts = cut_points(rng, total, starts)
        plan.behaviours.append("cut writes")
    r = rng.random()
    if r < 0.42:
        plan.behaviours.append("normal")
    elif r < 0.54:
        plan.slow_bytes = rng.choice((300, 3000, 20000, 70000))
        plan.slow_chunk = rng.randint(1, 97)
        plan.slow_pause = rng.choice((0.0, 0.0005, 0.002))
        if plan.slow_bytes > 20000 and plan.slow_chunk < 16:
            plan.slow_pause = 0.0
        plan.behaviours.append("slow reader")
    elif r < 0.66:
        plan.stall_after = rng.randrange(0, max(1, n))
        plan.stall_secs = rng.uniform(0.5, 2.0)
        plan.behaviours.append("stall")
    elif r < 0.78 and allow_vanish:
        plan.vanish_rst = rng.random() < 0.5
        if rng.random() < 0.3 and total > 1:
            plan.vanish_send = rng.randrange(1, total)
            plan.behaviours.append("vanish mid-send " + ("RST" if plan.vanish_rst else "FIN"))
        else:
            plan.vanish_after = rng.randrange(0, max(1, n))
            plan.behaviours.append("vanish " + ("RST" if plan.vanish_rst else "FIN"))
    elif r < 0.9:
        j = rng.randrange(len(starts))
        plan.dribble = (starts[j], starts[j] + min(sizes[j], 1500))
        plan.dribble_pause = rng.choice((0.0, 0.0, 0.0003))
        plan.behaviours.append("byte-by-byte sender")
    elif r < 0.95:
        plan.stall_after = rng.randrange(0, max(1, n))
        plan.stall_secs = rng.uniform(0.5, 1.0)
        plan.slow_bytes = rng.choice((300, 3000))
        plan.slow_chunk = rng.randint(1, 31)
        plan.behaviours.append("slow reader + stall")
    elif allow_vanish:
        plan.half_close = True
        plan.behaviours.append("half-close")
    else:
        plan.behaviours.append("normal")
    for b in plan.behaviours:
        stats["behaviour: " + b] += 1
    return plan


def vanished(plan):
    return plan.vanish_after is not None or plan.vanish_send is not None


def dump(ctx, who, label, request, conn):
    """With --dump-dir: the failing pipeline's request bytes and what came
    back on its connection, to replay or read at leisure. Returns a note
    for the report."""
    d = ctx.args.dump_dir
    if not d or request is None:
        return ""
    os.makedirs(d, exist_ok=True)
    base = os.path.join(d, f"seed{ctx.seed}-{who}-{label.split(' (')[0].replace(' ', '')}")
    with open(base + ".request", "wb") as f:
        f.write(request)
    if conn is not None and conn.received is not None:
        with open(base + ".reply", "wb") as f:
            f.write(bytes(conn.received))
    return f"\n    (request and reply bytes in {base}.request/.reply)"


def send_garbage(host, port, data):
    """Sends `data` on a fresh connection and reads for up to 3 s; whether
    the proxy closed the connection (the expected answer to garbage, after
    an error reply)."""
    try:
        s = socket.create_connection((host, port), timeout=5)
    except OSError as e:
        raise Failure(f"cannot connect for the garbage scenario: {e}") from None
    closed = False
    try:
        s.settimeout(5)
        try:
            s.sendall(data)
        except OSError:
            closed = True
        deadline = time.monotonic() + 3
        while not closed and time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
    finally:
        s.close()
    return closed


def connect(host, port, what, ctx_dumps=False):
    """A client connection; a refused or timed-out connect is a failure of
    the proxy, not of the soak."""
    try:
        conn = wire.Conn(host, port)
        if ctx_dumps:
            conn.received = bytearray()
        return conn
    except wire.Unreachable as e:
        raise Failure(f"{e} (for {what}): the proxy does not accept connections", e.since) from None


def harness_error(who, ctx, exc):
    ctx.fail(who, "harness error (a bug in the soak itself, not necessarily in ferrox):\n"
             + "".join(traceback.format_exception(exc)))


def offsets(encoded):
    """Where each of the `encoded` requests starts in their concatenation,
    and its length."""
    starts, at = [], 0
    for e in encoded:
        starts.append(at)
        at += len(e)
    return starts, at


class Worker:
    """What a Redis and a memcached worker share: the run loop, the
    connection, an exchange and its failure reports, protocol garbage, and
    keys retired after a vanish and read back later. A subclass has a
    model whose `data` holds the keys' states, and `key`, `connect`,
    `connect_for_read_back`, `scenario`, `probe_after_garbage` and
    `settle_retired`."""

    def __init__(self, ctx, wid, protocol, model, slots, port, client, stopped):
        self.ctx = ctx
        self.wid = wid
        self.port = port
        self.client = client  # what a connection is, for reports
        self.stopped = stopped  # what a wedged proxy is, for reports
        self.who = f"{protocol}-{wid}"
        self.rng = random.Random(f"{ctx.seed}:{protocol}:{wid}")
        self.model = model
        self.gen = [0] * slots
        self.retired = {}  # key -> (candidate states, retired at, iteration)
        self.stats = Stats()
        self.conn = None
        self.iteration = 0
        self.pipeline_no = 0
        self.last = ("", None, None)  # label, request bytes, connection of the last exchange

    def run(self):
        ctx = self.ctx
        try:
            while ctx.running():
                self.iteration += 1
                self.settle_retired(force=False)
                self.scenario(self.rng.random())
        except Failure as e:
            note = dump(ctx, self.who, self.last[0], self.last[1], self.last[2])
            ctx.fail(self.who, f"{e}\n    (seed {ctx.seed}, worker {self.who}, "
                               f"iteration {self.iteration}){note}", e.since)
        except Exception as e:  # noqa: BLE001 - any surprise is reported
            harness_error(self.who, ctx, e)
        finally:
            self.close()

    def connect_plain(self):
        """A fresh connection, nothing sent on it yet."""
        self.close()
        self.conn = connect(self.ctx.host, self.port, self.client, bool(self.ctx.args.dump_dir))

    def finish(self):
        """After the run: reads back every key still uncertain."""
        if self.retired:
            self.connect_for_read_back()
            self.settle_retired(force=True)
            self.close()

    def close(self, rst=False):
        if self.conn is not None:
            self.retire_unconfirmed()
            self.conn.close(rst)
            self.conn = None

    def retire_unconfirmed(self):
        """Before the worker leaves its connection or writes through
        another one: keys whose last commands on it are not known to
        have run yet (none, unless a subclass has commands without a
        reply) are retired, since nothing orders them against another
        connection's commands."""

    def exchange(self, conn, payload, parse, n, plan, label, waiting_for, closing_ok=False):
        """Writes `payload` and reads `n` replies as `plan` says; a stuck or
        closed connection or a bad reply is a failure that names what was
        awaited (`waiting_for(i)` describes request `i`). With `closing_ok`,
        a close returns the replies read so far."""
        if conn.leftover():
            raise Failure(f"{conn.leftover()} bytes arrived that no request asked for, before {label}: "
                          + show_bytes(bytes(conn.buf[conn.pos:])))
        self.last = (label, payload, conn)
        behaviours = ", ".join(plan.behaviours) or "normal"
        try:
            return wire.exchange(conn, payload, parse, n, plan, self.ctx.args.stuck_timeout, self.stats)
        except wire.Stuck as e:
            raise Failure(f"the proxy stopped answering: {e} in {label} (behaviours: {behaviours}, "
                          f"client port {conn.local_port}); "
                          f"waiting for the reply to {waiting_for(len(e.replies))}", e.since) from None
        except wire.Closed as e:
            if closing_ok:
                return e.replies
            raise Failure(f"{e} in {label} (behaviours: {behaviours}); "
                          f"waiting for the reply to {waiting_for(len(e.replies))}") from None
        except wire.ProtocolError as e:
            raise Failure(f"unparsable reply in {label}: {e}") from None

    def garbage(self, head):
        """64 KiB of random bytes on a separate short-lived connection, now
        and then after `head`, a request that goes wrong midway: an error or
        a close is fine, a wedge is not."""
        rng = self.rng
        data = rng.randbytes(64 * KIB)
        if rng.random() < 0.3:
            data = head + data
        closed = send_garbage(self.ctx.host, self.port, data)
        self.stats["scenario: protocol garbage" + (" (closed)" if closed else " (left open)")] += 1
        # The proxy must still answer.
        c = connect(self.ctx.host, self.port, self.client, bool(self.ctx.args.dump_dir))
        try:
            self.probe_after_garbage(c)
        except (wire.Stuck, wire.Closed) as e:
            raise Failure(f"{self.stopped} after protocol garbage: {e}") from None
        finally:
            c.close()

    def start_pipeline(self, lengths, budgets):
        """Now and then a fresh connection (always, without one); then how
        many commands, drawn from `lengths` (see `draw`), and the budget of
        value bytes, one of `budgets`, as a one-item list to spend from."""
        if self.conn is None or self.rng.random() < 0.03:
            self.connect()
        n = draw(self.rng, lengths)
        return n, [self.rng.choice(budgets)]

    def retire(self, history, ran):
        """Keys written by commands not known to have run (`ran(i)` says
        whether command `i` did). Per key, commands run in order: its state
        is the one after the last command known to have run, or after a
        later one. `history` holds per key its state before the pipeline,
        then the state each command that wrote it left, with the command's
        index. The key's slot moves on to a fresh key name."""
        now = time.monotonic()
        current = {self.key(slot): slot for slot in range(len(self.gen))}
        for k, entries in history.items():
            unknown = [i for i, _ in entries[1:] if not ran(i)]
            if not unknown:
                continue
            first_unknown = unknown[0]
            known = [st for i, st in entries if i < first_unknown]
            cands = [known[-1]] + [st for i, st in entries if i >= first_unknown]
            self.make_uncertain(k, cands, now, current)

    def make_uncertain(self, k, cands, now=None, current=None):
        """Key `k` is in one of the states `cands` (or, if it was retired
        already, in one of those before): the model forgets it, its slot
        moves on to a fresh key name, and it is read back later."""
        if now is None:
            now = time.monotonic()
        if current is None:
            current = {self.key(slot): slot for slot in range(len(self.gen))}
        uniq = list(self.retired.pop(k, ((), None, None))[0])
        for c in cands:
            if c not in uniq:
                uniq.append(c)
        self.retired[k] = (uniq, now, self.iteration)
        self.forget(k)
        if k in current:
            self.gen[current[k]] += 1
        self.stats["keys made uncertain"] += 1

    def forget(self, k):
        """The model no longer knows key `k`."""
        self.model.data.pop(k, None)

    def due_retired(self, force):
        """The retired keys that have rested SETTLE seconds (all of them
        when `force`), sorted, once they have, with a connection to read
        them back on."""
        due = sorted(k for k, (_, _, it) in self.retired.items() if force or it + 3 <= self.iteration)
        if not due:
            return due
        wait = max(self.retired[k][1] for k in due) + SETTLE - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if self.conn is None:
            self.connect()
        return due
