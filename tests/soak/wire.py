"""Raw-socket client side of the soak: exact bytes, exact timing.

`exchange` sends one pipeline and reads its replies on a non-blocking
socket, writing and reading at the same time (a client that wrote a whole
pipeline before reading could deadlock against any proxy that bounds its
buffers, which would be the client's fault). A `Plan` says how: how the
bytes are cut into writes, one request dribbled a byte at a time, a slow
reader, a stall mid-pipeline, a vanish (FIN or RST) after a given reply or
mid-send. The parsers read RESP2/RESP3 and memcached text replies
incrementally; "not enough bytes yet" is `Incomplete`, with the buffer
length worth waiting for.
"""

import select
import socket
import struct
import time


class Incomplete(Exception):
    """Not enough bytes yet; `need` is the buffer length worth waiting for."""

    def __init__(self, need):
        super().__init__(need)
        self.need = need


class ProtocolError(Exception):
    """Bytes that are no valid reply."""


class Stuck(Exception):
    """No byte moved either way for the stuck timeout while replies were due;
    `since` is when the last byte moved."""

    def __init__(self, message, replies, since=None):
        super().__init__(message)
        self.replies = replies
        self.since = since


class Unreachable(OSError):
    """A connection the peer did not accept; `since` is when it was tried."""

    def __init__(self, message, since):
        super().__init__(message)
        self.since = since


class Closed(Exception):
    """The peer closed (or reset) the connection before every reply came."""

    def __init__(self, message, replies):
        super().__init__(message)
        self.replies = replies


# ---------------------------------------------------------------- RESP


class Status(str):
    """A simple string reply (+OK)."""


class Error(str):
    """An error reply (-ERR ..., or RESP3 !blob)."""

    def kind(self):
        return self.split(" ", 1)[0]


class Map(list):
    """A RESP3 map, as a list of (key, value) pairs."""


class Set(list):
    """A RESP3 set."""


class Push(list):
    """A RESP3 push message."""


def _line(buf, pos):
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete(len(buf) + 1)
    return bytes(buf[pos:end]), end + 2


def _int(text):
    try:
        return int(text)
    except ValueError:
        raise ProtocolError(f"not an integer: {text[:40]!r}") from None


def parse_resp(buf, pos):
    """One RESP2/RESP3 value at `pos`: (value, next position)."""
    if pos >= len(buf):
        raise Incomplete(pos + 1)
    kind = buf[pos]
    line, after = _line(buf, pos + 1)
    if kind == 0x2B:  # +
        return Status(line.decode("latin-1")), after
    if kind == 0x2D:  # -
        return Error(line.decode("latin-1")), after
    if kind == 0x3A:  # :
        return _int(line), after
    if kind in (0x24, 0x3D, 0x21):  # $ = !
        n = _int(line)
        if n < 0:
            return None, after
        end = after + n
        if len(buf) < end + 2:
            raise Incomplete(end + 2)
        if buf[end:end + 2] != b"\r\n":
            raise ProtocolError(f"bulk of {n} bytes not ended by CRLF")
        data = bytes(buf[after:end])
        if kind == 0x21:
            return Error(data.decode("latin-1")), end + 2
        if kind == 0x3D:
            data = data[4:]  # "txt:" format prefix
        return data, end + 2
    if kind in (0x2A, 0x7E, 0x3E):  # * ~ >
        n = _int(line)
        if n < 0:
            return None, after
        items = []
        for _ in range(n):
            item, after = parse_resp(buf, after)
            items.append(item)
        if kind == 0x7E:
            return Set(items), after
        if kind == 0x3E:
            return Push(items), after
        return items, after
    if kind == 0x25:  # %
        n = _int(line)
        pairs = Map()
        for _ in range(n):
            k, after = parse_resp(buf, after)
            v, after = parse_resp(buf, after)
            pairs.append((k, v))
        return pairs, after
    if kind == 0x7C:  # | attribute: skip it, the value follows
        n = _int(line)
        for _ in range(2 * n):
            _, after = parse_resp(buf, after)
        return parse_resp(buf, after)
    if kind == 0x5F:  # _
        return None, after
    if kind == 0x23:  # #
        return line == b"t", after
    if kind == 0x2C:  # ,
        return float(line), after
    if kind == 0x28:  # (
        return _int(line), after
    raise ProtocolError(f"unknown RESP type byte {kind:#04x} in {bytes(buf[pos:pos + 40])!r}")


def encode_command(args):
    """A RESP request: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n" % len(a))
        out.append(a)
        out.append(b"\r\n")
    return b"".join(out)


# ----------------------------------------------------------- memcached

# How a memcached reply is framed: one line, VALUE blocks up to END, a
# meta reply (a line, and a data block after "VA <len>"), or nothing.
LINE, RETRIEVAL, META, NONE, BINARY = "line", "retrieval", "meta", "none", "binary"

# memcached's binary protocol: the 24-byte header of every packet.
BINARY_HEADER = struct.Struct(">BBHBBHIIQ")


def binary_packet(opcode, key=b"", extras=b"", value=b"", opaque=0, cas=0):
    """A binary request packet."""
    body = len(extras) + len(key) + len(value)
    return BINARY_HEADER.pack(0x80, opcode, len(key), len(extras), 0, 0, body, opaque, cas) + extras + key + value


def parse_binary(buf, pos):
    """One binary response packet at `pos`: (opcode, status, opaque, cas,
    extras, key, value)."""
    if len(buf) < pos + BINARY_HEADER.size:
        raise Incomplete(pos + BINARY_HEADER.size)
    magic, opcode, keylen, extlen, _, status, body, opaque, cas = BINARY_HEADER.unpack_from(buf, pos)
    if magic != 0x81:
        raise ProtocolError(f"binary response magic {magic:#x}")
    if extlen + keylen > body:
        raise ProtocolError(f"binary response with extras {extlen} and key {keylen} over its body {body}")
    at = pos + BINARY_HEADER.size
    end = at + body
    if len(buf) < end:
        raise Incomplete(end)
    extras = bytes(buf[at:at + extlen])
    key = bytes(buf[at + extlen:at + extlen + keylen])
    return (opcode, status, opaque, cas, extras, key, bytes(buf[at + extlen + keylen:end])), end


def parse_mc(buf, pos, kind):
    """One memcached reply of `kind` at `pos`. A line reply is the line's
    text (str); a retrieval reply is a list of (key, flags, data, cas or
    None), or the error line (str) that came instead; a binary reply is
    `parse_binary`'s."""
    if kind == BINARY:
        return parse_binary(buf, pos)
    if kind == LINE:
        line, after = _line(buf, pos)
        return line.decode("latin-1"), after
    if kind == META:
        line, after = _line(buf, pos)
        if not line.startswith(b"VA "):
            return (line.decode("latin-1"), None), after
        n = _int(line.split(b" ")[1])
        end = after + n
        if len(buf) < end + 2:
            raise Incomplete(end + 2)
        if buf[end:end + 2] != b"\r\n":
            raise ProtocolError(f"VA block of {n} bytes not ended by CRLF")
        return (line.decode("latin-1"), bytes(buf[after:end])), end + 2
    values = []
    at = pos
    while True:
        line, after = _line(buf, at)
        if line == b"END":
            return values, after
        if not line.startswith(b"VALUE "):
            if not values:
                return line.decode("latin-1"), after
            raise ProtocolError(f"{line[:80]!r} inside a retrieval reply")
        parts = line.split(b" ")
        if len(parts) not in (4, 5):
            raise ProtocolError(f"bad VALUE line {line[:80]!r}")
        n = _int(parts[3])
        end = after + n
        if len(buf) < end + 2:
            raise Incomplete(end + 2)
        if buf[end:end + 2] != b"\r\n":
            raise ProtocolError(f"VALUE of {n} bytes not ended by CRLF")
        cas = _int(parts[4]) if len(parts) == 5 else None
        values.append((bytes(parts[1]), _int(parts[2]), bytes(buf[after:end]), cas))
        at = end + 2


# ----------------------------------------------------------- transport


class Conn:
    """One client connection: a non-blocking socket and what it has read
    beyond the replies consumed so far."""

    def __init__(self, host, port, connect_timeout=5.0):
        started = time.monotonic()
        try:
            self.sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as e:
            raise Unreachable(f"cannot connect to {host}:{port}: {e}", started) from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.local_port = self.sock.getsockname()[1]
        self.buf = bytearray()
        self.pos = 0
        self.need = 0
        self.resp3 = False
        self.closed = False
        self.received = None  # a bytearray: every byte of the last exchange, kept for a dump

    def close(self, rst=False):
        if self.closed:
            return
        self.closed = True
        try:
            if rst:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.sock.close()

    def leftover(self):
        return len(self.buf) - self.pos


class Plan:
    """How one pipeline is written and read."""

    def __init__(self):
        self.cuts = []            # byte offsets at which writes are cut
        self.dribble = None       # (start, end): sent one byte per write
        self.dribble_pause = 0.0  # seconds between dribbled bytes
        self.slow_bytes = 0       # this many reply bytes read in small pieces
        self.slow_chunk = 64      # most bytes per slow read
        self.slow_pause = 0.002   # seconds between slow reads
        self.stall_after = None   # after this many replies, stop reading ...
        self.stall_secs = 0.0     # ... for this long
        self.vanish_after = None  # close after this many replies ...
        self.vanish_send = None   # ... or after sending this many bytes
        self.vanish_rst = False   # RST (SO_LINGER 0) rather than FIN
        self.half_close = False   # shutdown(SHUT_WR) once everything is sent
        self.behaviours = []      # names, for the statistics


def exchange(conn, payload, parse, n, plan, stuck_timeout, stats=None):
    """Sends `payload` and reads `n` replies with `parse(buf, pos) ->
    (reply, next)`. Returns the replies read: all `n`, or fewer when the
    plan vanished. Raises Stuck, Closed or ProtocolError."""
    sock = conn.sock
    view = memoryview(payload)
    total = len(payload)
    sent = 0
    replies = []
    cuts = sorted(c for c in plan.cuts if 0 < c < total)
    cut_at = 0
    read_count = 0  # reply bytes received in this exchange
    stall_until = None
    stalled_done = False
    last_progress = time.monotonic()
    shut = False
    if conn.received is not None:
        conn.received.clear()

    def parse_some():
        while len(replies) < n and conn.leftover() > 0 and len(conn.buf) >= conn.need:
            try:
                reply, after = parse(conn.buf, conn.pos)
            except Incomplete as e:
                conn.need = e.need
                return
            conn.need = 0
            conn.pos = after
            replies.append(reply)
        if conn.pos > (1 << 20) and conn.pos == len(conn.buf):
            del conn.buf[:conn.pos]
            conn.pos = 0
            conn.need = 0

    parse_some()
    while True:
        if plan.vanish_after is not None and len(replies) >= plan.vanish_after:
            conn.close(rst=plan.vanish_rst)
            return replies
        if plan.vanish_send is not None and sent >= plan.vanish_send:
            conn.close(rst=plan.vanish_rst)
            return replies
        if len(replies) >= n and sent >= total:
            break
        now = time.monotonic()
        if plan.half_close and sent >= total and not shut:
            sock.shutdown(socket.SHUT_WR)
            shut = True
        if (plan.stall_after is not None and not stalled_done
                and len(replies) >= plan.stall_after and stall_until is None):
            stall_until = now + plan.stall_secs
        reading = len(replies) < n
        if stall_until is not None:
            if now < stall_until:
                reading = False
            else:
                stall_until = None
                stalled_done = True
                last_progress = now
        writing = sent < total
        if not reading and not writing:
            time.sleep(min(0.05, max(0.0, stall_until - now)))
            continue
        try:
            r, w, _ = select.select([sock] if reading else [], [sock] if writing else [], [], 0.05)
        except (OSError, ValueError) as e:
            raise Closed(f"select failed: {e}", replies) from None
        moved = False
        if w:
            if plan.dribble and plan.dribble[0] <= sent < plan.dribble[1]:
                end = sent + 1
            else:
                end = total
                if plan.dribble and sent < plan.dribble[0]:
                    end = plan.dribble[0]
                while cut_at < len(cuts) and cuts[cut_at] <= sent:
                    cut_at += 1
                if cut_at < len(cuts):
                    end = min(end, cuts[cut_at])
                if plan.vanish_send is not None:
                    end = min(end, max(plan.vanish_send, sent + 1))
            try:
                k = sock.send(view[sent:end])
            except BlockingIOError:
                k = 0
            except OSError as e:
                raise Closed(f"send failed after {sent} of {total} bytes: {e}", replies) from None
            if k:
                sent += k
                moved = True
                if stats is not None:
                    stats["bytes_sent"] += k
                if plan.dribble and plan.dribble[0] <= sent <= plan.dribble[1] and plan.dribble_pause:
                    time.sleep(plan.dribble_pause)
        if r:
            slow = read_count < plan.slow_bytes
            size = plan.slow_chunk if slow else 1 << 18
            try:
                data = sock.recv(size)
            except BlockingIOError:
                data = None
            except OSError as e:
                raise Closed(f"receive failed after {len(replies)} of {n} replies: {e}",
                             replies) from None
            if data == b"":
                parse_some()
                if len(replies) >= n and sent >= total:
                    break
                raise Closed(f"connection closed by the proxy after {len(replies)} of {n} replies "
                             f"({sent} of {total} request bytes sent)", replies)
            if data:
                conn.buf += data
                if conn.received is not None:
                    conn.received += data
                read_count += len(data)
                moved = True
                if stats is not None:
                    stats["bytes_received"] += len(data)
                parse_some()
                if slow and plan.slow_pause:
                    time.sleep(plan.slow_pause)
        now = time.monotonic()
        if moved:
            last_progress = now
        elif stall_until is None and now - last_progress > stuck_timeout:
            raise Stuck(f"no progress for {stuck_timeout:.0f}s: {len(replies)} of {n} replies read, "
                        f"{sent} of {total} request bytes sent", replies, last_progress)
    if shut:
        # After a half-close, the proxy should close once it has answered.
        pass
    return replies


def drain_closed(conn, timeout):
    """After a half-close: reads until the proxy closes. Returns the bytes
    beyond the consumed replies, or None if it did not close in time."""
    deadline = time.monotonic() + timeout
    extra = bytearray(conn.buf[conn.pos:])
    while time.monotonic() < deadline:
        r, _, _ = select.select([conn.sock], [], [], 0.1)
        if r:
            try:
                data = conn.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                return bytes(extra)
            if not data:
                return bytes(extra)
            extra += data
    return None
