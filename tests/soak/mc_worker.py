"""A memcached client worker of the soak and the model it checks replies
with.

The model holds, per key, absent (None) or (flags, values): `values` is
the set of byte strings the value may be, almost always one. It is more
than one only after incr/decr: memcached rewrites a shorter number in
place, padded with spaces to the old length, unless another reference to
the item is held at that moment (a get just before it on the same
connection may still hold one), so both forms are possible.

CAS: every change memcached makes to a key gives it a new cas unique, so
the model keeps, per key, a version bumped on each change; a cas id read
with gets at version v is expected to succeed exactly while the version is
still v. touch is not known to keep or change the unique, so it forgets it.

Vanishes are handled as for Redis (see redis_worker): keys written by
commands that were not acknowledged are retired with their candidate
states, read back later and checked. A noreply command is known to have
run when a later command on the same server was answered.
"""

import socket
import struct
import time

import common
import wire
from common import Failure, show_bytes, show_value

SLOTS = 40
# Binary opcodes of the stores, and what to add for the quiet variant.
BINARY_STORES = {"set": 0x01, "add": 0x02, "replace": 0x03, "append": 0x0e, "prepend": 0x0f}
quiet_offset = {0x01: 0x10, 0x02: 0x10, 0x03: 0x10, 0x0e: 0x0b, 0x0f: 0x0b, 0x00: 0x09, 0x0c: 0x01,
                0x04: 0x10, 0x05: 0x10, 0x06: 0x10}
U64 = 1 << 64
WHITESPACE = b" \t\n\v\f\r"


def strtoull(value):
    """memcached's safe_strtoull over an item's data (which ends in CRLF),
    or None where it refuses. The digits may end in whitespace or in a NUL
    byte (strtoull stops there, and safe_strtoull takes it)."""
    data = value + b"\r\n"
    i = 0
    while i < len(data) and data[i] in WHITESPACE:
        i += 1
    neg = False
    if i < len(data) and data[i] in b"+-":
        neg = data[i] == 0x2D
        i += 1
    j = i
    while j < len(data) and 0x30 <= data[j] <= 0x39:
        j += 1
    if j == i:
        return None
    n = int(data[i:j])
    if n >= U64:
        return None  # ERANGE
    if neg:
        n = (U64 - n) % U64
    if data[j] not in WHITESPACE and data[j] != 0:
        return None
    if n >= (1 << 63) and b"-" in data[:j]:
        return None
    return n


class Model:
    def __init__(self):
        self.data = {}     # key -> (flags, frozenset of values)
        self.version = {}  # key -> changes so far
        self.cas = {}      # key -> (cas unique, version it was read at)

    def changed(self, k):
        self.version[k] = self.version.get(k, 0) + 1

    def store(self, cmd, k, flags, value, cas=None):
        st = self.data.get(k)
        if cmd == "set":
            ok = True
        elif cmd == "add":
            ok = st is None
        elif cmd in ("replace", "append", "prepend"):
            ok = st is not None
        else:  # cas
            if st is None:
                return "NOT_FOUND"
            known = self.cas.get(k)
            ok = known is not None and known[0] == cas and known[1] == self.version.get(k, 0)
            if not ok:
                return "EXISTS"
        if not ok:
            return "NOT_STORED"
        if cmd == "append":
            self.data[k] = (st[0], frozenset(v + value for v in st[1]))
        elif cmd == "prepend":
            self.data[k] = (st[0], frozenset(value + v for v in st[1]))
        else:
            self.data[k] = (flags, frozenset((value,)))
        self.changed(k)
        return "STORED"

    def delete(self, k):
        if k not in self.data:
            return "NOT_FOUND"
        del self.data[k]
        self.changed(k)
        return "DELETED"

    def touch(self, k):
        if k not in self.data:
            return "NOT_FOUND"
        self.cas.pop(k, None)
        return "TOUCHED"

    def arith(self, incr, k, delta):
        st = self.data.get(k)
        if st is None:
            return "NOT_FOUND"
        flags, values = st
        numbers = {strtoull(v) for v in values}
        if None in numbers:
            if len(numbers) > 1:
                raise Failure("model: candidates disagree on being numeric")
            return "CLIENT_ERROR"
        (n,) = numbers
        new = (n + delta) % U64 if incr else max(n - delta, 0)
        text = b"%d" % new
        out = set()
        for v in values:
            out.add(text)
            if len(text) <= len(v):
                out.add(text.ljust(len(v), b" "))
        self.data[k] = (flags, frozenset(out))
        self.changed(k)
        return text.decode()

    def size(self, k):
        st = self.data.get(k)
        return max(len(v) for v in st[1]) if st else 0


class Op:
    __slots__ = ("line", "data", "kind", "expected", "keys", "pre", "server", "noreply", "name", "packet")

    def __init__(self, name, line, data, kind, expected, keys=(), pre=None, noreply=False):
        self.packet = None  # a binary request's bytes (`line` then describes it)
        self.name = name
        self.line = line
        self.data = data
        self.kind = kind
        self.expected = expected
        self.keys = keys
        self.pre = pre or {}
        self.noreply = noreply
        self.server = None

    def wire(self):
        if self.packet is not None:
            return self.packet
        if self.data is None:
            return self.line + b"\r\n"
        return self.line + b"\r\n" + self.data + b"\r\n"

    def show(self):
        text = show_bytes(self.line, 160)
        if self.data is not None:
            text += " + data " + show_bytes(self.data, 32)
        return text


def check(op, got):
    """None if `got` is what `op` expects, else why not. A multi-get's
    VALUE blocks come in the order of its keys, also when the proxy split
    it over servers, as one memcached answers."""
    exp = op.expected
    if op.kind == wire.BINARY:
        return check_binary(exp, got)
    if op.kind == wire.LINE:
        if exp == "CLIENT_ERROR":
            return None if got.startswith("CLIENT_ERROR ") else "expected CLIENT_ERROR"
        if isinstance(exp, tuple):  # ("one of", ...)
            return None if got in exp[1:] else f"expected one of {exp[1:]}"
        return None if got == exp else f"expected {exp}"
    if op.kind == wire.META:
        line, data = got
        if exp[0] != "VA":
            return None if line == exp[0] and data is None else f"expected {exp[0]}"
        _, flags, values = exp
        if data is None:
            return "expected VA and the value"
        if line.split(" ") != ["VA", str(len(data)), f"f{flags}"]:
            return f"expected VA {len(data)} f{flags}"
        return None if data in values else "expected the value " + " or ".join(show_bytes(v) for v in values)
    if isinstance(got, str):
        return f"expected VALUE lines, got the line {got!r}"
    want, with_cas = exp
    if len(got) != len(want):
        return (f"expected {len(want)} values, got {len(got)} (keys expected: "
                f"{[show_bytes(w[0], 40) for w in want[:5]]}, got: {[show_bytes(g[0], 40) for g in got[:5]]})")
    for i, ((k, flags, values), (gk, gflags, gdata, gcas)) in enumerate(zip(want, got)):
        if gk != k:
            return f"value #{i}: expected key {show_bytes(k)}, got {show_bytes(gk)}"
        if gflags != flags:
            return f"value #{i} ({show_bytes(k)}): expected flags {flags}, got {gflags}"
        if gdata not in values:
            return (f"value #{i} ({show_bytes(k)}): expected "
                    + " or ".join(show_bytes(v) for v in values) + f", got {show_bytes(gdata)}")
        if with_cas and gcas is None:
            return f"value #{i}: gets without a cas unique"
        if not with_cas and gcas is not None:
            return f"value #{i}: get with a cas unique"
    return None


def check_binary(exp, got):
    """A binary response against ("status", opaque, status), ("hit",
    opaque, flags, values, key) or ("number", opaque, n)."""
    _, status, opaque, _, extras, key, value = got
    if opaque != exp[1]:
        return f"expected the opaque {exp[1]} (replies out of order?)"
    if exp[0] == "status":
        return None if status == exp[2] else f"expected status {exp[2]:#x}"
    if status != 0:
        return "expected success"
    if exp[0] == "number":
        return None if value == exp[2].to_bytes(8, "big") else f"expected the counter {exp[2]}"
    _, _, flags, values, want_key = exp
    if len(extras) != 4 or int.from_bytes(extras, "big") != flags:
        return f"expected flags {flags}"
    if key != want_key:
        return f"expected key {show_bytes(want_key)}"
    return None if value in values else "expected the value " + " or ".join(show_bytes(v) for v in values)


def state_in(observed, cands):
    for c in cands:
        if c is None and observed is None:
            return True
        if c is not None and observed is not None and c[0] == observed[0] and observed[1] in c[1]:
            return True
    return False


def show_state(st):
    if st is None:
        return "absent"
    return f"flags {st[0]} value " + " or ".join(show_bytes(v) for v in st[1])


class McWorker(common.Worker):
    def __init__(self, ctx, wid):
        super().__init__(ctx, wid, "memcached", Model(), SLOTS, port=11211, client="a memcached client",
                         stopped="the memcached port stopped answering")
        # Per server, per key: the candidate states of noreply commands
        # sent on this connection and not yet followed by an answered
        # command on their server (see track_unconfirmed).
        self.unconfirmed = {}
        self.opaque = 0  # of the last binary request

    def key(self, slot):
        base = b"m%d:%d.%d" % (self.wid, slot, self.gen[slot])
        if slot % 9 == 4:
            base += b":" + b"x" * (200 + slot)  # long keys, up to 250 bytes
        return base[:250]

    def miss_key(self, i):
        return b"m%d:miss%d" % (self.wid, i)

    def server(self, k):
        return self.ctx.mc_table.server_for(k)

    def value(self, budget):
        rng = self.rng
        if budget[0] <= 0:
            return rng.randbytes(rng.randint(0, 32))
        edges = self.ctx.edges + [128 * 1024, 256 * 1024, 512 * 1024, 1000 * 1000]
        n = common.draw(rng, [(0.4, (0, 32)), (0.62, (33, 1024)),
                              (0.85, lambda: common.edge_size(rng, edges, 1000 * 1000, overhead=40)),
                              (0.95, (1025, 64 * 1024)), (1, (64 * 1024, 1000 * 1000))])
        if n > 256 * 1024 and self.model_bytes() > 24 << 20:
            n = rng.randint(0, 4096)  # keep the backends far from evicting
        budget[0] -= n
        return common.value_bytes(rng, n, b"0123456789")

    def model_bytes(self):
        return sum(max(len(v) for v in st[1]) for st in self.model.data.values())

    # ------------------------------------------------------ generation

    def op(self, budget, reply_budget):
        rng = self.rng
        m = self.model
        slot = rng.randrange(SLOTS)
        k = self.key(slot)
        if rng.random() < 0.08:
            return self.meta_op(k, budget, reply_budget)
        if rng.random() < 0.08:
            return self.binary_op(k, budget, reply_budget)
        r = rng.random()
        noreply = rng.random() < 0.2
        if r < 0.2:
            flags = rng.choice((0, 0, 1, 42, 65535, 4294967295))
            return self.storage("set", k, flags, self.value(budget), noreply)
        if r < 0.26:
            return self.storage("add", k, rng.randint(0, 9), self.value(budget), noreply)
        if r < 0.31:
            return self.storage("replace", k, rng.randint(0, 9), self.value(budget), noreply)
        if r < 0.36:
            v = self.value(budget) if m.size(k) < 512 * 1024 else b"z"
            return self.storage("append", k, 0, v, noreply)
        if r < 0.4:
            v = self.value(budget) if m.size(k) < 512 * 1024 else b"z"
            return self.storage("prepend", k, 0, v, noreply)
        if r < 0.46:
            known = m.cas.get(k)
            c = rng.random()
            if known is not None and c < 0.7:
                cas = known[0]
            else:
                # Never a unique memcached could have handed out yet.
                cas = rng.choice((12345678901234, (1 << 63) + rng.randrange(1 << 32), (1 << 64) - 1))
            return self.storage("cas", k, rng.randint(0, 9), self.value(budget), False, cas)
        if r < 0.53:
            if m.size(k) > 64:
                return self.get_op("get", [k], reply_budget)
            incr = rng.random() < 0.55
            delta = rng.choice((0, 1, 7, 1000, 10 ** 12, U64 - 1)) if incr else rng.choice((1, 5, 10 ** 6))
            pre = {k: m.data.get(k)}
            exp = m.arith(incr, k, delta)
            # noreply only where no error is due: memcached would hide
            # the error, and the reply stream would not say.
            nr = noreply and exp != "CLIENT_ERROR"
            line = b"%s %s %d" % (b"incr" if incr else b"decr", k, delta) + (b" noreply" if nr else b"")
            return Op("incr" if incr else "decr", line, None, wire.NONE if nr else wire.LINE,
                      exp, (k,), pre, nr)
        if r < 0.6:
            pre = {k: m.data.get(k)}
            exp = m.delete(k)
            line = b"delete " + k + (b" noreply" if noreply else b"")
            return Op("delete", line, None, wire.NONE if noreply else wire.LINE, exp, (k,), pre, noreply)
        if r < 0.63:
            exp = m.touch(k)
            line = b"touch %s %d" % (k, rng.choice((0, 86400))) + (b" noreply" if noreply else b"")
            return Op("touch", line, None, wire.NONE if noreply else wire.LINE, exp, (), None, noreply)
        if r < 0.78:
            return self.get_op(rng.choice(("get", "get", "gets", "gat")), [k], reply_budget)
        if r < 0.97:
            n = rng.randint(2, 20) if rng.random() < 0.8 else rng.randint(21, 400)
            return self.get_op(rng.choice(("get", "gets")), self.multi_keys(n, reply_budget), reply_budget)
        return Op("mn", b"mn", None, wire.LINE, "MN")

    def meta_op(self, k, budget, reply_budget):
        """ms, mg and md, a third of them quiet (q): the proxy strips q and
        leaves out, itself, the replies memcached would have left out
        (HD of ms and md, EN of mg); what is left out is known here, so
        are the replies due."""
        rng = self.rng
        m = self.model
        self.stats["meta commands (ms, mg, md)"] += 1
        quiet = rng.random() < 0.35
        q = b" q" if quiet else b""
        c = rng.random()
        pre = {k: m.data.get(k)}
        if c < 0.4:
            flags = rng.choice((0, 7, 65535, 4294967295))
            v = self.value(budget) if m.size(k) < 512 * 1024 else b"s"
            m.store("set", k, flags, v)
            line = b"ms %s %d F%d T0" % (k, len(v), flags) + q
            return Op("ms", line, v, wire.NONE if quiet else wire.META, ("HD",), (k,), pre, quiet)
        if c < 0.75:
            st = m.data.get(k)
            line = b"mg %s v f" % k + q
            if st is None:
                return Op("mg", line, None, wire.NONE if quiet else wire.META, ("EN",), (), None, quiet)
            reply_budget[0] -= m.size(k)
            return Op("mg", line, None, wire.META, ("VA", st[0], st[1]))
        exp = "HD" if m.delete(k) == "DELETED" else "NF"
        suppressed = quiet and exp == "HD"
        return Op("md", b"md %s" % k + q, None, wire.NONE if suppressed else wire.META, (exp,), (k,), pre,
                  suppressed)

    def binary_op(self, k, budget, reply_budget):
        """A request in the binary protocol, on the same connection as the
        text ones (the proxy tells them apart request by request): stores,
        gets (with the key, quiet), delete, incr/decr; a third quiet, whose
        successes (and, for gets, misses) get no response."""
        rng = self.rng
        m = self.model
        self.stats["binary protocol requests"] += 1
        quiet = rng.random() < 0.35
        self.opaque += 1
        opaque = self.opaque
        pre = {k: m.data.get(k)}
        c = rng.random()

        def op(name, opcode, kind, expected, extras=b"", value=b"", keys=(k,), silent=False):
            o = Op("bin-" + name, b"bin-%s %s" % (name.encode(), k), None, kind, expected, keys,
                   pre if keys else None, silent)
            o.packet = wire.binary_packet(opcode + (quiet_offset[opcode] if quiet else 0), k, extras, value,
                                          opaque)
            return o

        if c < 0.45:
            cmd = rng.choice(("set", "set", "add", "replace", "append", "prepend"))
            flags = rng.choice((0, 3, 4294967295)) if cmd in ("set", "add", "replace") else 0
            v = self.value(budget) if m.size(k) < 512 * 1024 else b"b"
            got = m.store(cmd, k, flags, v)
            status = 0 if got == "STORED" else {"add": 2, "replace": 1}.get(cmd, 5)
            extras = struct.pack(">II", flags, 0) if cmd in ("set", "add", "replace") else b""
            silent = quiet and status == 0
            return op(cmd, BINARY_STORES[cmd], wire.NONE if silent else wire.BINARY, ("status", opaque, status),
                      extras, v, silent=silent)
        if c < 0.8:
            st = m.data.get(k)
            with_key = rng.random() < 0.5
            opcode = 0x0c if with_key else 0x00
            if st is None:
                kind = wire.NONE if quiet else wire.BINARY
                if with_key and not quiet:
                    # A getk miss carries the key, and no message.
                    return op("get", opcode, kind, ("status", opaque, 1), keys=())
                return op("get", opcode, kind, ("status", opaque, 1), keys=(), silent=quiet)
            reply_budget[0] -= m.size(k)
            return op("get", opcode, wire.BINARY, ("hit", opaque, st[0], st[1], k if with_key else b""), keys=())
        if c < 0.9:
            got = m.delete(k)
            status = 0 if got == "DELETED" else 1
            silent = quiet and status == 0
            return op("delete", 0x04, wire.NONE if silent else wire.BINARY, ("status", opaque, status),
                      silent=silent)
        if m.size(k) > 64:
            return op("get", 0x00, wire.BINARY, ("hit", opaque, *m.data[k], b""), keys=())
        incr = rng.random() < 0.55
        delta = rng.choice((0, 1, 7, 10 ** 12, U64 - 1)) if incr else rng.choice((1, 5, 10 ** 6))
        got = m.arith(incr, k, delta)
        # Never created here (expiration 0xffffffff): the model's incr.
        extras = struct.pack(">QQI", delta, 0, 0xFFFFFFFF)
        if got == "NOT_FOUND":
            expected, silent = ("status", opaque, 1), False
        elif got == "CLIENT_ERROR":
            expected, silent = ("status", opaque, 6), False
        else:
            expected, silent = ("number", opaque, int(got)), quiet
        return op("incr" if incr else "decr", 0x05 if incr else 0x06, wire.NONE if silent else wire.BINARY,
                  expected, extras, silent=silent)

    def multi_keys(self, n, reply_budget):
        """`n` keys, duplicates and never-stored ones among them; a stored
        key's value counts against `reply_budget` (a copy is taken: the
        caller charges the real get)."""
        rng = self.rng
        left = reply_budget[0]
        keys = []
        for _ in range(n):
            r = rng.random()
            if r < 0.05 and keys:
                k = rng.choice(keys)
            elif r < 0.5:
                k = self.key(rng.randrange(SLOTS))
            else:
                k = self.miss_key(rng.randrange(100000))
            size = self.model.size(k)
            if size and size > left:
                k = self.miss_key(rng.randrange(100000))
            else:
                left -= size
            keys.append(k)
        return keys

    def storage(self, cmd, k, flags, value, noreply, cas=None):
        m = self.model
        pre = {k: m.data.get(k)}
        exp = m.store(cmd, k, flags, value, cas)
        line = b"%s %s %d %d %d" % (cmd.encode(), k, flags, self.rng.choice((0, 0, 0, 86400)), len(value))
        if cas is not None:
            line += b" %d" % cas
        if noreply:
            line += b" noreply"
        return Op(cmd, line, value, wire.NONE if noreply else wire.LINE, exp, (k,), pre, noreply)

    def get_op(self, cmd, keys, reply_budget):
        m = self.model
        want = []
        for k in keys:
            st = m.data.get(k)
            if st is not None:
                want.append((k, st[0], st[1]))
                reply_budget[0] -= max(len(v) for v in st[1])
        if cmd == "gat":
            line = b"gat 0 " + b" ".join(keys)
            for k in keys:
                m.cas.pop(k, None)  # like touch
        else:
            line = cmd.encode() + b" " + b" ".join(keys)
        op = Op(cmd, line, None, wire.RETRIEVAL, (want, cmd in ("gets", "gats")))
        op.pre = {}
        op.keys = ()
        if cmd == "gets":
            op.pre = {"versions": [(k, m.version.get(k, 0)) for k in keys]}
        return op

    # ------------------------------------------------------ connection

    def connect(self):
        self.connect_plain()
        self.stats["connections"] += 1

    def send(self, ops, plan, label, closing_ok=False):
        encoded = [op.wire() for op in ops]
        payload = b"".join(encoded)
        replying = [op for op in ops if op.kind != wire.NONE]
        kinds = [op.kind for op in replying]
        state = {"i": 0}

        def parse(buf, pos):
            reply, after = wire.parse_mc(buf, pos, kinds[state["i"]])
            state["i"] += 1
            return reply, after

        if plan is None:
            plan = wire.Plan()

        def waiting_for(i):
            return replying[i].show() if i < len(replying) else "?"

        replies = self.exchange(self.conn, payload, parse, len(replying), plan, label, waiting_for,
                                closing_ok)
        return replying, replies, payload

    def check_replies(self, label, replying, replies):
        for i, got in enumerate(replies):
            op = replying[i]
            why = check(op, got)
            if why:
                raise Failure(f"mismatch in {label}, reply #{i} of {len(replying)}: {op.show()}\n"
                              f"    {why}\n    expected: {show_value(op.expected)}\n"
                              f"    got:      {show_value(got)}")
            if op.name == "gets" and op.pre:
                versions = dict(op.pre["versions"])
                for gk, _, _, gcas in got:
                    # Known only while nothing after this gets changed the key.
                    if self.model.version.get(gk, 0) == versions[gk]:
                        self.model.cas[gk] = (gcas, versions[gk])
            self.stats["memcached ops checked"] += 1

    # ------------------------------------------------------- scenarios

    def scenario(self, r):
        if r < 0.012:
            self.garbage(b"set " + self.miss_key(1) + b" 0 0 10\r\n")
        elif r < 0.03:
            self.pymemcache_batch()
        elif r < 0.03 + self.ctx.args.mc_long_share:
            self.long_multiget()
        else:
            self.pipeline()

    def pipeline(self):
        rng = self.rng
        n, budget = self.start_pipeline([(0.45, (1, 6)), (0.8, (7, 40)), (1, (41, 160))],
                                        (256 * 1024, 512 * 1024, 2 << 20, 4 << 20))
        reply_budget = [4 << 20]
        ops = []
        history = {}
        for i in range(n):
            if reply_budget[0] <= 0 or budget[0] <= -(1 << 20):
                break
            op = self.op(budget, reply_budget)
            ops.append(op)
            for k, st in op.pre.items():
                if k != "versions":
                    history.setdefault(k, [(-1, st)])
            for k in op.keys:
                history[k].append((i, self.model.data.get(k)))
        for op in ops:
            op.server = self.server(op.line.split(b" ")[1]) if op.keys else None
        self.pipeline_no += 1
        self.stats["memcached pipelines"] += 1
        encoded = [op.wire() for op in ops]
        starts, at = common.offsets(encoded)
        replying_count = sum(1 for op in ops if op.kind != wire.NONE)
        plan = common.make_plan(rng, at, starts, [len(e) for e in encoded], replying_count, self.stats)
        if replying_count == 0 and plan.vanish_after is not None:
            plan.vanish_after = None
            plan.vanish_send = max(1, at // 2)
        label = f"pipeline {self.pipeline_no} ({len(ops)} commands, {at} bytes)"
        replying, replies, _ = self.send(ops, plan, label, closing_ok=plan.half_close)
        self.check_replies(label, replying, replies)
        answered = self.acked_ops(ops, len(replies))
        self.confirm_unconfirmed(ops, answered)
        if not (common.vanished(plan) or plan.half_close):
            self.track_unconfirmed(ops, history, answered)
            return
        if plan.vanish_after is not None:
            acked = self.acked_ops(ops, plan.vanish_after)
        else:
            acked = set()
        self.retire(history, lambda i: i in acked)
        if plan.half_close:
            self.stats["half-close: replies " + ("complete" if len(replies) == len(replying)
                                                 else "cut short")] += 1
        self.close(rst=plan.vanish_rst)
        self.stats["vanishes"] += 1

    def acked_ops(self, ops, replies_read):
        """Indices of the ops known to have run when the first
        `replies_read` replies were read: those answered, and noreply ops
        followed by an answered op on the same server."""
        acked = set()
        seen = 0
        last_answered = {}  # server -> index of the last answered op
        for i, op in enumerate(ops):
            if op.kind == wire.NONE:
                continue
            if seen >= replies_read:
                break
            seen += 1
            acked.add(i)
            if op.server is not None:
                last_answered[op.server] = i
            elif op.kind == wire.RETRIEVAL or op.name == "mn":
                pass
        for i, op in enumerate(ops):
            if op.kind == wire.NONE and op.server is not None and last_answered.get(op.server, -1) > i:
                acked.add(i)
        return acked

    def confirm_unconfirmed(self, ops, answered):
        """An answer from a server (also one read before a vanish) tells
        that every earlier command on this connection to that server ran."""
        for i, op in enumerate(ops):
            if i in answered and op.kind != wire.NONE and op.server is not None:
                self.unconfirmed.pop(op.server, None)

    def track_unconfirmed(self, ops, history, acked):
        """After a pipeline answered in full: noreply commands with no
        answered command after them on their server may still be on their
        way (in the proxy, or in a retransmission across a hot upgrade).
        Later commands on this connection run after them, so the model
        may count them as run; a command on another connection may not,
        so their keys are retired before the worker goes elsewhere."""
        for k, entries in history.items():
            pending = [i for i, _ in entries[1:] if i not in acked]
            if not pending:
                continue
            first = pending[0]
            known = [st for i, st in entries if i < first]
            cands = [st for i, st in entries if i >= first]
            per_key = self.unconfirmed.setdefault(ops[first].server, {})
            per_key[k] = per_key.get(k, [known[-1]]) + cands

    def retire_unconfirmed(self):
        unconfirmed, self.unconfirmed = self.unconfirmed, {}
        for per_key in unconfirmed.values():
            for k, cands in per_key.items():
                self.make_uncertain(k, cands)
                self.stats["keys retired: noreply, then a switch"] += 1

    def forget(self, k):
        super().forget(k)
        self.model.cas.pop(k, None)

    def settle_retired(self, force):
        due = self.due_retired(force)
        if not due:
            return
        ops = [Op("get", b"get " + k, None, wire.RETRIEVAL, None) for k in due]
        replying, replies, _ = self.send(ops, None, f"read-back of {len(due)} uncertain keys")
        for k, got in zip(due, replies):
            if isinstance(got, str):
                raise Failure(f"read-back of uncertain key {show_bytes(k)}: {got!r}")
            observed = (got[0][1], got[0][2]) if got else None
            cands = self.retired.pop(k)[0]
            if not state_in(observed, cands):
                raise Failure(
                    f"uncertain key {show_bytes(k)} read back after a vanish is in none of the states "
                    f"its commands allow\n    got: "
                    + ("absent" if observed is None else f"flags {observed[0]} value {show_bytes(observed[1])}")
                    + "\n    allowed: " + "; ".join(show_state(c) for c in cands))
            self.stats["uncertain keys resolved"] += 1
            if observed is not None:
                self.model.data[k] = (observed[0], frozenset((observed[1],)))
                self.model.changed(k)
            if not force and self.rng.random() < 0.7:
                op = Op("delete", b"delete " + k, None, wire.LINE, "DELETED" if observed else "NOT_FOUND")
                replying, replies, _ = self.send([op], None, "delete of a resolved key")
                self.check_replies("delete of a resolved key", replying, replies)
                self.model.data.pop(k, None)

    def long_multiget(self):
        """A get of more keys, or a longer line, than the proxy's limits
        (1,024 keys, 64 KiB lines) have allowed, alone on a fresh
        connection: the full answer, or (unless --strict-long-lines) the
        known refusal, which is counted."""
        rng = self.rng
        # It reads through its own connection.
        self.retire_unconfirmed()
        n = rng.randint(1025, self.ctx.args.mc_max_keys) if rng.random() < 0.7 else rng.randint(600, 1024)
        keys = self.multi_keys(n, [256 * 1024])
        if n <= 1024:
            # Long keys make the line pass 64 KiB with fewer keys.
            keys = [k if rng.random() < 0.5 else self.miss_key(rng.randrange(100000)) + b":" + b"p" * 90
                    for k in keys]
        op = self.get_op(rng.choice(("get", "gets")), keys, [1 << 30])
        line_len = len(op.line)
        conn, self.conn = self.conn, None
        self.connect()
        label = f"long multi-get ({len(keys)} keys, {line_len} byte line)"
        try:
            replying, replies, _ = self.send([op], None, label, closing_ok=True)
            if not replies:
                raise Failure(f"{label}: the proxy closed the connection without a reply")
            got = replies[0]
            if isinstance(got, str) and got.startswith("CLIENT_ERROR") and (
                    "line too long" in got or "too many keys" in got) and not self.ctx.args.strict_long_lines:
                self.stats[f"long multi-get refused ({got.split(' ', 1)[1]})"] += 1
                return
            self.check_replies(label, replying, replies)
            self.stats["long multi-get answered in full"] += 1
        finally:
            self.close()
            self.conn = conn
            if self.conn is not None and self.conn.closed:
                self.conn = None

    def probe_after_garbage(self, c):
        replies = wire.exchange(c, b"version\r\n", lambda b, p: wire.parse_mc(b, p, wire.LINE), 1,
                                wire.Plan(), self.ctx.args.stuck_timeout)
        if not replies[0].startswith("VERSION"):
            raise Failure(f"version after protocol garbage answered {replies[0]!r}")

    def pymemcache_batch(self):
        """pymemcache as applications use it: set_many, get_many, gets/cas,
        incr, delete."""
        try:
            from pymemcache.client.base import Client
            from pymemcache.exceptions import MemcacheError
        except ImportError:
            self.stats["pymemcache batches skipped (no pymemcache)"] += 1
            return
        rng = self.rng
        m = self.model
        # It writes through its own connection.
        self.retire_unconfirmed()
        client = Client((self.ctx.host, 11211), timeout=self.ctx.args.stuck_timeout, connect_timeout=5,
                        default_noreply=False)
        checked = 0

        def expect(what, got, want):
            if got != want:
                raise Failure(f"pymemcache {what}: expected {show_value(want)}, got {show_value(got)}")

        try:
            keys = [self.key(rng.randrange(SLOTS)) for _ in range(rng.randint(2, 30))]
            keys = list(dict.fromkeys(k for k in keys if len(k) < 200))
            values = {k: rng.randbytes(rng.randint(0, 20000)) for k in keys}
            failed = client.set_many({k.decode(): v for k, v in values.items()}, noreply=False)
            expect("set_many", failed, [])
            for k, v in values.items():
                m.store("set", k, 0, v)
            got = client.get_many([k.decode() for k in keys] + [self.miss_key(7).decode()])
            expect("get_many", {k.encode(): v for k, v in got.items()}, values)
            checked += 2
            k = keys[0]
            value, cas = client.gets(k.decode())
            expect("gets", value, values[k])
            ok = client.cas(k.decode(), b"swapped", cas, noreply=False)
            expect("cas with a fresh unique", ok, True)
            m.data[k] = (0, frozenset((b"swapped",)))
            m.changed(k)
            ok = client.cas(k.decode(), b"stale", cas, noreply=False)
            expect("cas with a stale unique", ok, False)
            counter = keys[-1]
            client.set(counter.decode(), b"41", noreply=False)
            m.store("set", counter, 0, b"41")
            expect("incr", client.incr(counter.decode(), 1, noreply=False), 42)
            m.arith(True, counter, 1)
            expect("delete", client.delete(counter.decode(), noreply=False), True)
            m.delete(counter)
            expect("get after delete", client.get(counter.decode()), None)
            checked += 6
        except MemcacheError as e:
            raise Failure(f"pymemcache: {type(e).__name__}: {e}") from None
        except socket.timeout:
            raise Failure("the proxy stopped answering pymemcache (set_many/get_many/gets/cas/incr/delete)",
                          time.monotonic() - self.ctx.args.stuck_timeout) from None
        except OSError as e:
            raise Failure(f"pymemcache: {e}") from None
        finally:
            client.close()
        self.stats["memcached ops checked"] += checked
        self.stats["scenario: pymemcache batch"] += 1

    def connect_for_read_back(self):
        self.connect()
