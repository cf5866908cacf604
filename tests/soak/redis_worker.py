"""A Redis client worker of the soak and the model it checks replies with.

The model holds, per key, its exact state: absent (None), a string
('s', bytes), a hash ('h', dict), a list ('l', tuple) or a set
('z', frozenset). States are never changed in place, so keeping one costs
a reference: each command's expected reply is computed when the pipeline
is built, by applying the commands to the model in order, and the states
each command left are kept for when a client vanishes mid-pipeline.

After a vanish, what the unacknowledged commands did is unknown; but each
key lives on one server, reached over one backend connection in order, so
the key's state is its state after some prefix of those commands. The key
is retired with that candidate list (the worker moves on to a fresh key
name for the slot, so the command stream never depends on timing), read
back once the proxy has had time to settle, checked against the
candidates, then overwritten or kept as known.
"""

import time

import common
import wire
from common import Failure, show_args, show_value

OK = ("ok",)
PONG = ("pong",)
WRONGTYPE = ("err", "WRONGTYPE")
ERR = ("err", "ERR")

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def string2ll(v):
    """Redis's strict integer parse of a string value, or None."""
    if not v or len(v) > 20:
        return None
    if v == b"0":
        return 0
    s = v[1:] if v[:1] == b"-" else v
    if not s or not (0x31 <= s[0] <= 0x39) or not s.isdigit():
        return None
    n = int(v)
    return n if INT64_MIN <= n <= INT64_MAX else None


def lrange(items, start, stop):
    n = len(items)
    if start < 0:
        start = max(n + start, 0)
    if stop < 0:
        stop = n + stop
    if start > stop or start >= n:
        return []
    return list(items[start:min(stop, n - 1) + 1])


def state_size(st):
    if st is None:
        return 0
    kind, v = st
    if kind == "s":
        return len(v)
    if kind == "h":
        return sum(len(f) + len(x) for f, x in v.items())
    return sum(len(x) for x in v)


class Model:
    """The exact state of one worker's keys."""

    def __init__(self):
        self.data = {}

    def get(self, k):
        return self.data.get(k)

    def put(self, k, st):
        if st is None or (st[0] != "s" and not st[1]):
            self.data.pop(k, None)
        else:
            self.data[k] = st

    # Each command: returns its expected reply and applies it.

    def GET(self, k):
        st = self.get(k)
        if st is None:
            return ("bulk", None)
        return ("bulk", st[1]) if st[0] == "s" else WRONGTYPE

    def SET(self, k, v):
        self.put(k, ("s", v))
        return OK

    def APPEND(self, k, v):
        st = self.get(k)
        if st is not None and st[0] != "s":
            return WRONGTYPE
        new = (st[1] if st else b"") + v
        self.put(k, ("s", new))
        return ("int", len(new))

    def GETSET(self, k, v):
        st = self.get(k)
        if st is not None and st[0] != "s":
            return WRONGTYPE
        self.put(k, ("s", v))
        return ("bulk", st[1] if st else None)

    def INCRBY(self, k, n):
        st = self.get(k)
        if st is not None and st[0] != "s":
            return WRONGTYPE
        n = int(n)
        cur = string2ll(st[1]) if st else 0
        if cur is None:
            return ERR
        new = cur + n
        if not INT64_MIN <= new <= INT64_MAX:
            return ERR
        self.put(k, ("s", str(new).encode()))
        return ("int", new)

    def STRLEN(self, k):
        st = self.get(k)
        if st is None:
            return ("int", 0)
        return ("int", len(st[1])) if st[0] == "s" else WRONGTYPE

    def DEL(self, *keys):
        n = 0
        for k in keys:
            if k in self.data:
                del self.data[k]
                n += 1
        return ("int", n)

    def EXISTS(self, *keys):
        return ("int", sum(1 for k in keys if k in self.data))

    def MSET(self, *kv):
        for i in range(0, len(kv), 2):
            self.put(kv[i], ("s", kv[i + 1]))
        return OK

    def MGET(self, *keys):
        out = []
        for k in keys:
            st = self.get(k)
            out.append(st[1] if st is not None and st[0] == "s" else None)
        return ("arr", out)

    def _typed(self, k, kind, empty):
        st = self.get(k)
        if st is None:
            return empty, None
        if st[0] != kind:
            return None, WRONGTYPE
        return st[1], None

    def _change_hash(self, k, change):
        """Applies `change` to a copy of hash `k` (states are never changed
        in place); the reply is the count `change` returns."""
        h, err = self._typed(k, "h", {})
        if err:
            return err
        h = dict(h)
        n = change(h)
        self.put(k, ("h", h))
        return ("int", n)

    def HSET(self, k, *fv):
        def set_fields(h):
            added = 0
            for i in range(0, len(fv), 2):
                added += fv[i] not in h
                h[fv[i]] = fv[i + 1]
            return added
        return self._change_hash(k, set_fields)

    def HGET(self, k, f):
        h, err = self._typed(k, "h", {})
        return err or ("bulk", h.get(f))

    def HDEL(self, k, *fields):
        def delete_fields(h):
            deleted = 0
            for f in fields:
                if f in h:
                    del h[f]
                    deleted += 1
            return deleted
        return self._change_hash(k, delete_fields)

    def HGETALL(self, k):
        h, err = self._typed(k, "h", {})
        return err or ("hash", dict(h))

    def RPUSH(self, k, *items):
        lst, err = self._typed(k, "l", ())
        if err:
            return err
        lst = tuple(lst) + items
        self.put(k, ("l", lst))
        return ("int", len(lst))

    def LPOP(self, k, count=None):
        lst, err = self._typed(k, "l", ())
        if err:
            return err
        if count is None:
            if not lst:
                return ("bulk", None)
            self.put(k, ("l", lst[1:]))
            return ("bulk", lst[0])
        if not lst:
            return ("arr", None)
        c = int(count)
        self.put(k, ("l", lst[c:]))
        return ("arr", list(lst[:c]))

    def LRANGE(self, k, start, stop):
        lst, err = self._typed(k, "l", ())
        return err or ("arr", lrange(lst, int(start), int(stop)))

    def LLEN(self, k):
        lst, err = self._typed(k, "l", ())
        return err or ("int", len(lst))

    def SADD(self, k, *members):
        s, err = self._typed(k, "z", frozenset())
        if err:
            return err
        new = s | frozenset(members)
        self.put(k, ("z", new))
        return ("int", len(new) - len(s))

    def SREM(self, k, *members):
        s, err = self._typed(k, "z", frozenset())
        if err:
            return err
        new = s - frozenset(members)
        self.put(k, ("z", new))
        return ("int", len(s) - len(new))

    def SCARD(self, k):
        s, err = self._typed(k, "z", frozenset())
        return err or ("int", len(s))

    def SISMEMBER(self, k, m):
        s, err = self._typed(k, "z", frozenset())
        return err or ("int", int(m in s))

    def SMEMBERS(self, k):
        s, err = self._typed(k, "z", frozenset())
        return err or ("smembers", frozenset(s))


MUTATING = {"SET", "APPEND", "GETSET", "INCRBY", "DEL", "MSET", "HSET", "HDEL",
            "RPUSH", "LPOP", "SADD", "SREM"}


def check(expected, got, resp3):
    """None if `got` is the reply `expected` describes, else why not."""
    kind = expected[0]
    if kind == "any":
        return None
    if kind == "err":
        if isinstance(got, wire.Error) and got.kind() == expected[1]:
            return None
        return f"expected an error {expected[1]}"
    if isinstance(got, wire.Error):
        return "unexpected error"
    if kind == "ok":
        return None if got == "OK" and isinstance(got, wire.Status) else "expected +OK"
    if kind == "pong":
        return None if got == "PONG" and isinstance(got, wire.Status) else "expected +PONG"
    if kind == "queued":
        return None if got == "QUEUED" and isinstance(got, wire.Status) else "expected +QUEUED"
    if kind == "int":
        return None if type(got) is int and got == expected[1] else f"expected integer {expected[1]}"
    if kind == "bulk":
        want = expected[1]
        if want is None:
            return None if got is None else "expected nil"
        return None if isinstance(got, bytes) and got == want else "expected " + show_value(want)
    if kind == "arr":
        want = expected[1]
        if want is None:
            return None if got is None else "expected a nil array"
        if not isinstance(got, list) or isinstance(got, (wire.Map, wire.Set)):
            return "expected an array"
        if len(got) != len(want):
            return f"expected {len(want)} elements, got {len(got)}"
        for i, (w, g) in enumerate(zip(want, got)):
            if w != g:
                return f"element {i}: expected {show_value(w)}, got {show_value(g)}"
        return None
    if kind == "hash":
        want = expected[1]
        if resp3:
            if not isinstance(got, wire.Map):
                return "expected a RESP3 map"
            pairs = list(got)
        else:
            if not isinstance(got, list) or isinstance(got, (wire.Map, wire.Set)) or len(got) % 2:
                return "expected a flat array of field-value pairs"
            pairs = [(got[i], got[i + 1]) for i in range(0, len(got), 2)]
        seen = dict(pairs)
        if len(seen) != len(pairs):
            return "a field appears twice"
        return None if seen == want else "expected hash " + show_value(want)
    if kind == "smembers":
        want = expected[1]
        if resp3 and not isinstance(got, wire.Set):
            return "expected a RESP3 set"
        if not isinstance(got, list):
            return "expected an array"
        return None if len(got) == len(want) and frozenset(got) == want else "expected " + show_value(want)
    if kind == "echo":
        return None if got == expected[1] else "expected the echo " + show_value(expected[1])
    if kind == "hello":
        if isinstance(got, wire.Map):
            fields = dict(got)
            return None if fields.get(b"proto") == 3 else "HELLO 3 reply without proto 3"
        return "expected a RESP3 map for HELLO 3"
    if kind == "any":
        return None
    return f"unknown expectation {kind}"


def inline_safe(args):
    """Whether a command can be written inline (one line, split on
    spaces) and mean the same: no empty argument, nothing a quote,
    backslash or blank could change, and a short line."""
    if sum(len(a) + 1 for a in args) > 4096:
        return False
    for a in args:
        if not a or any(b <= 0x20 or b >= 0x7F or b in b"\"'\\" for b in a):
            return False
    return True


PROBE_TYPES = {"none": None, "string": "s", "hash": "h", "list": "l", "set": "z"}


def probe_commands(k):
    return [[b"TYPE", k], [b"GET", k], [b"HGETALL", k], [b"LRANGE", k, b"0", b"-1"], [b"SMEMBERS", k]]


def probe_state(replies, resp3=False):
    """A key's state from the replies to `probe_commands`."""
    t, get, hgetall, lr, members = replies
    if not isinstance(t, wire.Status) or str(t) not in PROBE_TYPES:
        raise Failure(f"TYPE answered {show_value(t)}")
    kind = PROBE_TYPES[str(t)]
    if kind is None:
        return None
    if kind == "s":
        return ("s", get)
    if kind == "h":
        if isinstance(hgetall, wire.Map):
            return ("h", dict(hgetall))
        return ("h", {hgetall[i]: hgetall[i + 1] for i in range(0, len(hgetall), 2)})
    if kind == "l":
        return ("l", tuple(lr))
    return ("z", frozenset(members))


def show_state(st):
    if st is None:
        return "absent"
    return f"{ {'s': 'string', 'h': 'hash', 'l': 'list', 'z': 'set'}[st[0]] } {show_value(st[1])}"


# Each slot's home type: strings (one of them a counter), hashes, a list, a set.
HOME = ("s", "s", "c", "h", "h", "l", "z", "s")
SLOTS = 48
# Three string slots read far more than the rest (hot keys).
HOT_SLOTS = [s for s in range(SLOTS) if HOME[s % len(HOME)] == "s"][:3]


class Op:
    __slots__ = ("args", "expected", "name", "keys", "pre")

    def __init__(self, args, expected, name, keys, pre):
        self.args = args
        self.expected = expected
        self.name = name
        self.keys = keys  # keys it may write
        self.pre = pre  # their states before it


class RedisWorker(common.Worker):
    def __init__(self, ctx, wid):
        super().__init__(ctx, wid, "redis", Model(), SLOTS, port=6379, client="a Redis client",
                         stopped="the proxy stopped answering")
        self.fans = 0  # fan-out connections so far (each has a key of its own)
        self.history = []  # (key, at) of retirements, for the report

    # ------------------------------------------------------------ keys

    def key(self, slot):
        w, g = self.wid, self.gen[slot]
        if slot % 5 == 1:
            return b"r%d:{r%dg%d}:%d.%d" % (w, w, slot % 3, slot, g)
        if slot % 11 == 7:
            return b"r%d:%d.%d:" % (w, slot, g) + b"L" * (300 if slot < 24 else 2000)
        if slot % 13 == 9:
            return b"r%d:\xe9\xff %d.%d" % (w, slot, g)
        return b"r%d:%d.%d" % (w, slot, g)

    def slot_of(self, home):
        rng = self.rng
        while True:
            s = rng.randrange(SLOTS)
            if HOME[s % len(HOME)] == home or (home == "s" and HOME[s % len(HOME)] == "c"):
                return s

    def value(self, budget, overhead=0):
        rng = self.rng
        if budget[0] <= 0:
            return rng.randbytes(rng.randint(0, 32))
        if budget[0] >= 1 << 20 and rng.random() < 0.006:
            n = rng.randint(100 * 1024, 1 << 20)  # now and then, far past every buffer
            budget[0] -= n
            return rng.randbytes(n)
        n = common.draw(rng, [(0.3, (0, 16)), (0.5, (17, 512)), (0.6, (513, 4096)),
                              (0.87, lambda: common.edge_size(rng, self.ctx.edges, 64 * 1024 + 3, overhead)),
                              (0.97, (4097, 64 * 1024)),
                              (1, lambda: rng.choice((0, 64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1)))])
        budget[0] -= n
        return common.value_bytes(rng, n, b"abcdefghij")

    def small(self):
        rng = self.rng
        return rng.choice((b"a", b"b", b"c", b"dd", b"ee", b"f" * 20, b"g" * 70, b"\x00\xff",
                           b"m%d" % rng.randrange(40)))

    # ----------------------------------------------------- generation

    def op(self, budget, reply_budget):
        """One command, applied to the model."""
        rng = self.rng
        m = self.model
        r = rng.random()
        if r < 0.03:
            # A command of another type family on any slot: WRONGTYPE, or
            # the key changes type.
            home = rng.choice("shlz")
            slot = rng.randrange(SLOTS)
        elif r < 0.13:
            # A few keys much read: hot keys a proxy may cache. Mostly
            # GETs, written now and then in the same pipelines.
            home = "s"
            slot = rng.choice(HOT_SLOTS)
            if rng.random() < 0.85:
                k = self.key(slot)
                reply_budget[0] -= state_size(m.get(k))
                return self.apply("GET", [k], (k,))
        else:
            home = rng.choice("sssshhllzz")
            slot = self.slot_of(home)
        k = self.key(slot)
        st = m.get(k)
        size = state_size(st)
        if rng.random() < 0.04:
            c = rng.random()
            if c < 0.5:
                return Op([b"PING"], PONG, "PING", (), {})
            payload = self.value(budget)
            return Op([b"ECHO", payload], ("echo", payload), "ECHO", (), {})
        if home == "s":
            counter = HOME[slot % len(HOME)] == "c"
            c = rng.random()
            if counter and c < 0.5:
                n = rng.randint(-1000, 1000)
                return self.apply("INCRBY", [k, b"%d" % n], (k,))
            if c < 0.22:
                v = self.value(budget, overhead=len(k) + 30)
                return self.apply("SET", [k, v], (k,))
            if c < 0.42:
                reply_budget[0] -= size
                return self.apply("GET", [k], (k,))
            if c < 0.5:
                v = self.value(budget) if size < 256 * 1024 else b"x"
                return self.apply("APPEND", [k, v], (k,))
            if c < 0.55:
                reply_budget[0] -= size
                return self.apply("GETSET", [k, self.value(budget)], (k,))
            if c < 0.6:
                return self.apply("STRLEN", [k], (k,))
            if c < 0.68:
                keys = self.some_keys(rng.randint(1, 6))
                return self.apply("DEL", keys, tuple(keys))
            if c < 0.76:
                keys = self.some_keys(rng.randint(1, 12))
                return self.apply("EXISTS", keys, ())
            if c < 0.86:
                keys = self.some_keys(rng.randint(1, 8), home="s")
                args = []
                for key in keys:
                    args += [key, self.value(budget)]
                return self.apply("MSET", args, tuple(keys))
            keys = self.some_keys(rng.randint(1, 24))
            reply_budget[0] -= sum(state_size(m.get(x)) for x in keys)
            return self.apply("MGET", keys, ())
        if home == "h":
            c = rng.random()
            if c < 0.4 and (st is None or len(st[1]) < 64):
                args = [k]
                for _ in range(rng.randint(1, 4)):
                    args += [self.small(), self.value(budget) if size < 512 * 1024 else b"v"]
                return self.apply("HSET", args, (k,))
            if c < 0.7:
                return self.apply("HGET", [k, self.small()], (k,))
            if c < 0.88:
                return self.apply("HDEL", [k] + [self.small() for _ in range(rng.randint(1, 3))], (k,))
            reply_budget[0] -= size
            return self.apply("HGETALL", [k], (k,))
        if home == "l":
            c = rng.random()
            if c < 0.35 and (st is None or len(st[1]) < 300):
                v = [self.value(budget) if size < 512 * 1024 else b"e" for _ in range(rng.randint(1, 5))]
                return self.apply("RPUSH", [k] + v, (k,))
            if c < 0.55:
                if rng.random() < 0.5:
                    return self.apply("LPOP", [k], (k,))
                return self.apply("LPOP", [k, b"%d" % rng.randint(1, 5)], (k,))
            if c < 0.8:
                reply_budget[0] -= size
                a, b = rng.randint(-20, 20), rng.choice((-1, -2, 0, 3, 10, 50, 1000))
                return self.apply("LRANGE", [k, b"%d" % a, b"%d" % b], (k,))
            return self.apply("LLEN", [k], (k,))
        c = rng.random()
        if c < 0.35:
            members = [self.small() if rng.random() < 0.8 else self.value(budget)
                       for _ in range(rng.randint(1, 5))]
            return self.apply("SADD", [k] + members, (k,))
        if c < 0.5:
            return self.apply("SREM", [k] + [self.small() for _ in range(rng.randint(1, 3))], (k,))
        if c < 0.62:
            return self.apply("SCARD", [k], (k,))
        if c < 0.9:
            return self.apply("SISMEMBER", [k, self.small()], (k,))
        reply_budget[0] -= size
        return self.apply("SMEMBERS", [k], (k,))

    def some_keys(self, n, home=None):
        rng = self.rng
        keys = []
        for _ in range(n):
            if rng.random() < 0.15 and keys:
                keys.append(rng.choice(keys))  # a duplicate
            else:
                keys.append(self.key(self.slot_of(home) if home else rng.randrange(SLOTS)))
        return keys

    def apply(self, name, args, keys):
        keys = keys if name in MUTATING else ()
        pre = {k: self.model.get(k) for k in keys}
        if name in ("APPEND", "STRLEN") and self.ctx.args.features:
            # A pool that compresses refuses them (they would see stored
            # bytes); nothing changes.
            return Op([name.encode()] + args, ERR, name, (), {})
        expected = getattr(self.model, name)(*args)
        return Op([name.encode()] + args, expected, name, keys, pre)

    # ------------------------------------------------------ connection

    def connect(self):
        self.connect_plain()
        self.stats["connections"] += 1
        if self.rng.random() < 0.15:
            # RESP3 from the first command on.
            self.roundtrip([[b"HELLO", b"3"]], [("hello",)], wire.Plan(), "HELLO 3")
            self.conn.resp3 = True
            self.stats["resp3 connections"] += 1

    def roundtrip(self, commands, expected, plan, label):
        payload = b"".join(wire.encode_command(c) for c in commands)
        replies = self.send(payload, len(commands), plan, label, commands)
        for i, (exp, got) in enumerate(zip(expected, replies)):
            why = check(exp, got, self.conn.resp3 if self.conn else False)
            if why:
                self.mismatch(label, i, len(commands), commands[i], exp, got, why)
        return replies

    def send(self, payload, n, plan, label, commands, closing_ok=False, conn=None):
        def waiting_for(i):
            return f"command #{i}: {show_args(commands[i]) if i < len(commands) else '?'}"

        return self.exchange(conn or self.conn, payload, lambda b, p: wire.parse_resp(b, p), n, plan,
                             label, waiting_for, closing_ok)

    def mismatch(self, label, i, n, args, expected, got, why):
        raise Failure(
            f"mismatch in {label}, command #{i} of {n}: {show_args(args)}\n"
            f"    {why}\n    expected: {show_value(expected)}\n    got:      {show_value(got)}")

    # ------------------------------------------------------ scenarios

    def scenario(self, r):
        if r < 0.015:
            self.ping_flood()
        elif r < 0.027:
            self.garbage(b"*3\r\n$3\r\nSET\r\n")
        elif r < 0.045:
            self.redis_py_batch()
        elif r < 0.06:
            self.pipeline(deep=True)
        elif r < 0.072:
            self.fan_out()
        elif r < 0.08:
            self.scan_keys()
        elif r < 0.095:
            self.transaction()
        elif r < 0.105:
            self.pubsub()
        else:
            self.pipeline()

    def pipeline(self, deep=False):
        """One pipeline: 1 to 256 commands; or, `deep`, 1,500 to 3,000
        small ones, past the proxy's max_pipeline (1,024 in flight)."""
        rng = self.rng
        n, budget = self.start_pipeline([(0.4, (1, 8)), (0.7, (9, 64)), (1, (65, 256))],
                                        (256 * 1024, 256 * 1024, 1 << 20, 3 << 20))
        if deep:
            n = rng.randint(1500, 3000)
            budget = [0]  # values of 0 to 32 bytes
            self.stats["scenario: deep pipeline"] += 1
        reply_budget = [4 << 20]
        ops = []
        # Per key written: its state before the pipeline, then the state
        # each command that wrote it left, with the command's index.
        history = {}
        for i in range(n):
            if reply_budget[0] <= 0:
                break
            op = self.op(budget, reply_budget)
            ops.append(op)
            for k, st in op.pre.items():
                history.setdefault(k, [(-1, st)])
            for k in op.keys:
                history[k].append((i, self.model.get(k)))
        self.pipeline_no += 1
        self.stats["redis pipelines"] += 1
        inline = rng.random() < 0.15
        encoded = []
        for op in ops:
            if inline and rng.random() < 0.3 and inline_safe(op.args):
                encoded.append(b" ".join(op.args) + b"\r\n")  # as telnet sends
                self.stats["inline commands"] += 1
            else:
                encoded.append(wire.encode_command(op.args))
        starts, _ = common.offsets(encoded)
        payload = b"".join(encoded)
        plan = common.make_plan(rng, len(payload), starts, [len(e) for e in encoded], len(ops),
                                self.stats)
        label = (f"pipeline {self.pipeline_no} ({len(ops)} commands, {len(payload)} bytes"
                 + (", RESP3)" if self.conn.resp3 else ")"))
        resp3 = self.conn.resp3
        replies = self.send(payload, len(ops), plan, label, [op.args for op in ops],
                            closing_ok=plan.half_close)
        for i, got in enumerate(replies):
            why = check(ops[i].expected, got, resp3)
            if why:
                self.mismatch(label, i, len(ops), ops[i].args, ops[i].expected, got, why)
            self.stats["redis ops checked"] += 1
        if not (common.vanished(plan) or plan.half_close):
            return
        if plan.vanish_after is not None:
            acked = plan.vanish_after
        else:
            acked = 0  # mid-send or half-close: conservatively, none is known to have run
        self.retire(history, lambda i: i < acked)
        if plan.half_close:
            complete = len(replies) == len(ops)
            self.stats["half-close: replies " + ("complete" if complete else "cut short")] += 1
            if complete and self.conn is not None and not self.conn.closed:
                extra = wire.drain_closed(self.conn, 3.0)
                if extra is None:
                    self.stats["half-close: proxy kept the connection open"] += 1
                elif extra:
                    raise Failure(f"after a half-close, {len(extra)} bytes beyond the replies: "
                                  + common.show_bytes(extra))
        self.close(rst=plan.vanish_rst)
        self.stats["vanishes"] += 1

    def settle_retired(self, force):
        """Reads back retired keys that have rested SETTLE seconds (all of
        them when `force`): each must be in one of its candidate states."""
        due = self.due_retired(force)
        if not due:
            return
        commands = []
        for k in due:
            commands += probe_commands(k)
        replies = self.roundtrip(commands, [("any",)] * len(commands), wire.Plan(),
                                 f"read-back of {len(due)} uncertain keys")
        for j, k in enumerate(due):
            st = probe_state(replies[5 * j:5 * j + 5], self.conn.resp3)
            cands = self.retired.pop(k)[0]
            if st not in cands:
                raise Failure(
                    f"uncertain key {show_value(k)} read back after a vanish is in none of the states "
                    f"its commands allow\n    got: {show_state(st)}\n    allowed: "
                    + "; ".join(show_state(c) for c in cands))
            self.stats["uncertain keys resolved"] += 1
            if st is not None:
                self.model.data[k] = st
            # Overwrite half of them, so they are trusted again either way.
            if not force and self.rng.random() < 0.5:
                self.roundtrip([[b"DEL", k]], [("int", int(st is not None))], wire.Plan(),
                               "overwrite of a resolved key")
                self.model.data.pop(k, None)

    # ------------------------------------------------ special scenarios

    def pubsub(self):
        """A subscriber connection: 1 to 3 channels and a pattern of this
        worker's own (on whichever servers they hash to), their
        confirmations with the counts one Redis connection gives; 1 to 40
        PUBLISHes from the worker's connection, each counted one receiver
        and delivered once, in order per channel; then the subscriber
        unsubscribes from everything, or vanishes."""
        rng = self.rng
        self.stats["scenario: pub/sub"] += 1
        n = self.stats["scenario: pub/sub"]
        channels = [b"r%d:c%d.%d" % (self.wid, n, i) for i in range(rng.randint(1, 3))]
        pattern = b"r%d:p%d:*" % (self.wid, n)
        parse = lambda b, p: wire.parse_resp(b, p)  # noqa: E731

        def waiting(what):
            return lambda i: f"{what} #{i}"

        sub = common.connect(self.ctx.host, 6379, "a subscriber")
        try:
            request = wire.encode_command([b"SUBSCRIBE"] + channels) + wire.encode_command([b"PSUBSCRIBE", pattern])
            got = self.exchange(sub, request, parse, len(channels) + 1, wire.Plan(), "SUBSCRIBE",
                                waiting("confirmation"))
            want = [[b"subscribe", c, i + 1] for i, c in enumerate(channels)]
            want.append([b"psubscribe", pattern, len(channels) + 1])
            if got != want:
                raise Failure(f"SUBSCRIBE confirmations {show_value(got)}, expected {show_value(want)}")
            if self.conn is None:
                self.connect()
            sent = []
            for _ in range(rng.randint(1, 40)):
                if rng.random() < 0.7:
                    channel = rng.choice(channels)
                else:
                    channel = pattern[:-1] + b"%d" % rng.randrange(5)
                sent.append((channel, rng.randbytes(rng.randint(0, 3000))))
            self.roundtrip([[b"PUBLISH", c, m] for c, m in sent], [("int", 1)] * len(sent), wire.Plan(),
                           f"{len(sent)} PUBLISHes to a subscriber")
            got = self.exchange(sub, b"", parse, len(sent), wire.Plan(), "the published messages",
                                waiting("message"))
            received = []
            for frame in got:
                if frame[:1] == [b"message"] and len(frame) == 3:
                    received.append((frame[1], frame[2]))
                elif frame[:2] == [b"pmessage", pattern] and len(frame) == 4:
                    received.append((frame[2], frame[3]))
                else:
                    raise Failure(f"a subscriber got {show_value(frame)}")
            # Each channel's messages in the order they were published.
            for channel in {c for c, _ in sent}:
                if [m for c, m in received if c == channel] != [m for c, m in sent if c == channel]:
                    raise Failure(f"messages on {show_value(channel)} lost, repeated or out of order")
            self.stats["pub/sub messages checked"] += len(sent)
            if rng.random() < 0.3:
                sub.close(rst=rng.random() < 0.5)
                self.stats["pub/sub: subscriber vanished"] += 1
                return
            request = wire.encode_command([b"UNSUBSCRIBE"]) + wire.encode_command([b"PUNSUBSCRIBE"])
            got = self.exchange(sub, request, parse, len(channels) + 1, wire.Plan(), "UNSUBSCRIBE",
                                waiting("confirmation"))
            want = [[b"unsubscribe", c, len(channels) - i] for i, c in enumerate(sorted(channels))]
            want.append([b"punsubscribe", pattern, 0])
            if got != want:
                raise Failure(f"UNSUBSCRIBE confirmations {show_value(got)}, expected {show_value(want)}")
        finally:
            sub.close()

    def transaction(self):
        """MULTI (now and then after a WATCH), 2 to 12 commands on keys a
        hashtag keeps on one server, EXEC, in one write: ferrox answers +QUEUED and sends the whole
        transaction at EXEC; every reply, each element of EXEC's array
        included, is checked against the model."""
        rng = self.rng
        if self.conn is None:
            self.connect()
        group = rng.randrange(3)
        slots = [s for s in range(SLOTS) if s % 5 == 1 and s % 3 == group]
        ops = []
        for _ in range(rng.randint(2, 12)):
            k = self.key(rng.choice(slots))
            c = rng.random()
            if self.ctx.args.features and 0.35 <= c < 0.85:
                # APPEND and GET are refused inside MULTI on a pool that
                # compresses.
                c = 0.0 if c < 0.6 else 0.9
            if c < 0.35:
                ops.append(self.apply("SET", [k, self.value([64 * 1024])], (k,)))
            elif c < 0.55:
                ops.append(self.apply("APPEND", [k, self.small()], (k,)))
            elif c < 0.85:
                ops.append(self.apply("GET", [k], (k,)))
            else:
                ops.append(self.apply("DEL", [k], (k,)))
        # Now and then WATCHing one of the group's keys first (no one
        # else writes the worker's keys: EXEC runs), on the connection
        # the proxy then runs the transaction on.
        watch = [[b"WATCH", self.key(rng.choice(slots))]] if rng.random() < 0.3 else []
        commands = watch + [[b"MULTI"]] + [op.args for op in ops] + [[b"EXEC"]]
        expected = [OK] * len(watch) + [OK] + [("queued",)] * len(ops) + [("any",)]
        label = f"transaction of {len(ops)} commands" + (" after a WATCH" if watch else "")
        self.stats["transactions after a WATCH"] += len(watch)
        replies = self.roundtrip(commands, expected, wire.Plan(), label)
        results = replies[-1]
        if not isinstance(results, list) or len(results) != len(ops):
            raise Failure(f"EXEC of a {label} answered {show_value(results)}")
        for i, (op, got) in enumerate(zip(ops, results)):
            why = check(op.expected, got, self.conn.resp3)
            if why:
                self.mismatch(f"EXEC of a {label}", i, len(ops), op.args, op.expected, got, why)
            self.stats["redis ops checked"] += 1
        self.stats["scenario: transaction"] += 1

    def scan_keys(self):
        """SCAN MATCH r<worker>:* through the proxy, cursor after cursor
        (the proxy walks its servers in turn), a few to hundreds of keys a
        call: every key the model knows to exist must be listed, and
        nothing else but keys whose state is uncertain (SCAN may repeat a
        key; it may not miss or invent one)."""
        rng = self.rng
        if self.conn is None:
            self.connect()
        pattern = b"r%d:*" % self.wid
        listed, cursor, calls = set(), b"0", 0
        while True:
            calls += 1
            if calls > 100_000:
                raise Failure(f"SCAN {pattern!r} did not end after {calls} calls")
            count = rng.choice((b"3", b"40", b"400"))
            command = [b"SCAN", cursor, b"MATCH", pattern, b"COUNT", count]
            (reply,) = self.roundtrip([command], [("any",)], wire.Plan(), f"SCAN call {calls}")
            if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], list)):
                raise Failure(f"SCAN {show_args(command)} answered {show_value(reply)}")
            cursor = reply[0]
            listed.update(reply[1])
            if cursor == b"0":
                break
        known = {k for k, st in self.model.data.items() if st is not None}
        missing = known - listed
        invented = listed - known - set(self.retired)
        if missing or invented:
            raise Failure(f"SCAN {pattern!r} over {calls} calls listed {len(listed)} keys: "
                          f"{len(missing)} existing keys missing (e.g. {show_value(sorted(missing)[:3])}), "
                          f"{len(invented)} keys that should not exist (e.g. {show_value(sorted(invented)[:3])})")
        self.stats["scenario: SCAN walks"] += 1
        self.stats["SCAN calls"] += calls

    def fan_out(self):
        """20 to 150 connections at once, each with a key of its own and a
        small pipeline on it; some reset right after sending. Every
        request is written before any reply is read."""
        rng = self.rng
        count = rng.randint(20, 150)
        self.stats["scenario: fan-out connections"] += 1
        conns = []
        try:
            for c in range(count):
                self.fans += 1
                k = b"r%d:fan%d" % (self.wid, self.fans)
                ops = []
                history = {k: [(-1, None)]}  # a key no one used before
                for i in range(rng.randint(1, 6)):
                    c2 = rng.random()
                    if c2 < 0.35:
                        ops.append(self.apply("SET", [k, self.value([64 * 1024])], (k,)))
                    elif c2 < 0.55:
                        ops.append(self.apply("APPEND", [k, self.small()], (k,)))
                    elif c2 < 0.85:
                        ops.append(self.apply("GET", [k], (k,)))
                    else:
                        ops.append(self.apply("DEL", [k], (k,)))
                    if k in ops[-1].pre:
                        history[k].append((i, self.model.get(k)))
                conn = common.connect(self.ctx.host, 6379, "a fan-out client")
                vanish = rng.random() < 0.15
                conns.append((conn, ops, vanish, history))
                payload = b"".join(wire.encode_command(op.args) for op in ops)
                try:
                    sent = conn.sock.send(payload)
                except BlockingIOError:
                    sent = 0
                except OSError as e:
                    raise Failure(f"fan-out connection {c + 1} of {count}: send failed: {e}") from None
                conn.pending = payload[sent:]  # written while reading, below
                if vanish:
                    conn.close(rst=True)
            for conn, ops, vanish, history in conns:
                if vanish:
                    self.retire(history, lambda i: False)
                    continue
                plan = wire.Plan()
                replies = self.send(conn.pending, len(ops), plan, f"fan-out connection ({count} open)",
                                    [op.args for op in ops], conn=conn)
                for i, got in enumerate(replies):
                    why = check(ops[i].expected, got, False)
                    if why:
                        self.mismatch("fan-out connection", i, len(ops), ops[i].args, ops[i].expected, got, why)
                    self.stats["redis ops checked"] += 1
        finally:
            for conn, _, _, _ in conns:
                conn.close(rst=True)

    def ping_flood(self):
        """4,681 pipelined PINGs (65,534 bytes) in one write, on a fresh
        connection."""
        self.connect()
        payload = wire.encode_command([b"PING"]) * 4681
        plan = wire.Plan()
        plan.behaviours.append("ping flood")
        replies = self.send(payload, 4681, plan, "4,681 pipelined PINGs in one write", [[b"PING"]] * 4681)
        for i, got in enumerate(replies):
            if got != "PONG":
                self.mismatch("PING flood", i, 4681, [b"PING"], PONG, got, "expected +PONG")
        self.stats["redis ops checked"] += 4681
        self.stats["scenario: 4,681-PING pipeline"] += 1

    def probe_after_garbage(self, c):
        replies = wire.exchange(c, wire.encode_command([b"PING"]), wire.parse_resp, 1, wire.Plan(),
                                self.ctx.args.stuck_timeout)
        if replies != ["PONG"]:
            raise Failure(f"PING after protocol garbage answered {show_value(replies)}")

    def redis_py_batch(self):
        """redis-py's pipeline(transaction=False), as applications use it:
        about 40 SETs of 5-19 KB values mixed with GETs."""
        try:
            import redis
        except ImportError:
            self.stats["redis-py batches skipped (no redis-py)"] += 1
            return
        rng = self.rng
        ops = []
        for _ in range(rng.randint(30, 48)):
            slot = self.slot_of("s")
            k = self.key(slot)
            if rng.random() < 0.6:
                ops.append(self.apply("SET", [k, rng.randbytes(rng.randint(5000, 19000))], (k,)))
            else:
                ops.append(self.apply("GET", [k], (k,)))
        client = redis.Redis(host=self.ctx.host, port=6379, socket_timeout=self.ctx.args.stuck_timeout,
                             socket_connect_timeout=5)
        try:
            pipe = client.pipeline(transaction=False)
            for op in ops:
                pipe.execute_command(*op.args)
            try:
                results = pipe.execute(raise_on_error=False)
            except redis.exceptions.TimeoutError as e:
                raise Failure(f"the proxy stopped answering a redis-py pipeline of {len(ops)} commands "
                              f"(SET 5-19 KB / GET): {e}",
                              time.monotonic() - self.ctx.args.stuck_timeout) from None
            except redis.exceptions.ConnectionError as e:
                raise Failure(f"redis-py pipeline of {len(ops)} commands: connection error {e}") from None
        finally:
            client.close()
            client.connection_pool.disconnect()
        for i, (op, got) in enumerate(zip(ops, results)):
            exp = op.expected
            if exp[0] == "err":
                ok = isinstance(got, redis.exceptions.ResponseError) and str(got).startswith(exp[1])
            elif exp[0] == "ok":
                ok = got is True or got == b"OK"
            else:
                ok = got == exp[1]
            if not ok:
                self.mismatch("redis-py pipeline", i, len(ops), op.args, exp, got, "redis-py result differs")
        self.stats["redis ops checked"] += len(ops)
        self.stats["scenario: redis-py pipeline"] += 1

    def connect_for_read_back(self):
        # Plain RESP2, whatever the run chose for its connections.
        self.connect_plain()
