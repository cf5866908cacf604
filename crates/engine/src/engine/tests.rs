//! The engine driven by an in-memory network of clients and small fake
//! Redis servers (enough of GET/SET/MGET/MSET/DEL/EXISTS/INCR, plus the
//! handshake commands). Fake servers answer in order, but the harness
//! lets them answer in any order relative to each other.

use std::collections::{BTreeMap, HashMap};

use ferrox_proto::resp;

use super::*;

/// Places a key by its first byte, on the next live server from there.
#[derive(Debug)]
struct FirstByte(Vec<bool>);

impl Placement for FirstByte {
    fn server_for(&self, key: &[u8], _random: u32) -> Option<usize> {
        let n = self.0.len();
        let first = key.first().copied().unwrap_or(0) as usize % n;
        (0..n).map(|i| (first + i) % n).find(|&s| self.0[s])
    }

    fn set_live(&mut self, live: &[bool]) {
        self.0 = live.to_vec();
    }
}

fn spec(servers: usize) -> PoolSpec {
    let placement = Box::new(FirstByte(vec![true; servers]));
    PoolSpec {
        timeout: Some(1_000),
        connect_timeout: 5_000,
        blocked: vec![b"FLUSHALL".to_vec(), b"KEYS".to_vec()],
        max_pipeline: 64,
        max_request: 1 << 20,
        ..crate::testing::pool_spec(Protocol::Redis, servers, 7000, placement)
    }
}

/// Two servers, a server ejected after `failure_limit` failures for
/// `retry`.
fn ejecting(failure_limit: u32, retry: Micros) -> PoolSpec {
    PoolSpec {
        ejection: Some(Ejection {
            failure_limit,
            retry,
        }),
        ..spec(2)
    }
}

#[derive(Debug, Default)]
struct FakeServer {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    /// memcached item flags, by key.
    flags: BTreeMap<Vec<u8>, u32>,
    /// The connection being served, connections with `CLIENT TRACKING
    /// on`, the keys each read, and the invalidation pushes owed.
    current: Handle,
    tracking: std::collections::BTreeSet<Handle>,
    tracked: BTreeMap<Vec<u8>, std::collections::BTreeSet<Handle>>,
    pushes: Vec<(Handle, Vec<u8>)>,
    /// Refuse connections.
    down: bool,
    /// Accept requests but never answer.
    mute: bool,
    /// Leave requests unread (answered once this is off).
    hold: bool,
    /// A node of a fake Redis Cluster.
    cluster: Option<FakeCluster>,
    /// A fake Redis Sentinel: each master's primary and replicas, as
    /// fake server numbers.
    sentinel: Option<BTreeMap<String, (usize, Vec<usize>)>>,
    /// Replicas it has, for `WAIT`, and the last `WAIT`'s arguments.
    replicas: i64,
    waited: Option<(i64, i64)>,
    /// `requirepass`: a connection must `AUTH` (as `user`, or as
    /// `default`) before anything else, and those that did are `authed`.
    password: Option<Vec<u8>>,
    user: Option<Vec<u8>>,
    authed: std::collections::BTreeSet<Handle>,
    /// Every command name received, in order.
    log: Vec<String>,
    /// In a MULTI (one connection's at a time): the commands queued, their
    /// replies, and whether a watched key changed (nothing then runs).
    multi: Option<(usize, Vec<u8>, bool)>,
    /// A WATCHed key and its value then (one watcher at a time).
    watched: Option<(Vec<u8>, Option<Vec<u8>>)>,
}

/// What one node of a fake Redis Cluster knows: every slot's owner (an
/// index into the net's servers, at port 7000 + index), a slot it is
/// migrating away, and whether the last command was `ASKING`.
#[derive(Debug, Clone)]
struct FakeCluster {
    me: usize,
    owner: Vec<usize>,
    migrating: Option<(u16, usize)>,
    asking: bool,
    /// Redirections it answered.
    redirects: usize,
}

impl FakeCluster {
    /// `nodes` nodes, slots split evenly in order.
    fn new(me: usize, nodes: usize) -> FakeCluster {
        let owner = (0..ferrox_route::cluster::SLOTS)
            .map(|s| s * nodes / ferrox_route::cluster::SLOTS)
            .collect();
        FakeCluster {
            me,
            owner,
            migrating: None,
            asking: false,
            redirects: 0,
        }
    }

    /// The reply to `args` when this node is not the one to run it: a
    /// redirection, a cross-slot error, or `CLUSTER SLOTS`.
    fn intercept(
        &mut self,
        args: &[&[u8]],
        name: &str,
        has: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        use ferrox_route::cluster::key_slot;
        let asking = std::mem::take(&mut self.asking);
        match name {
            "ASKING" => {
                self.asking = true;
                return Some(b"+OK\r\n".to_vec());
            }
            "CLUSTER" => {
                let mut ranges = Vec::new();
                for (slot, &node) in self.owner.iter().enumerate() {
                    match ranges.last_mut() {
                        Some((_, end, n)) if *n == node => *end = slot,
                        _ => ranges.push((slot, slot, node)),
                    }
                }
                let mut out = format!("*{}\r\n", ranges.len());
                for (start, end, node) in ranges {
                    out += &format!(
                        "*3\r\n:{start}\r\n:{end}\r\n*3\r\n$8\r\n10.0.0.1\r\n:{}\r\n$2\r\nid\r\n",
                        7000 + node
                    );
                }
                return Some(out.into_bytes());
            }
            "GET" | "SET" | "INCR" | "DEL" | "MGET" | "BLPOP" => {}
            _ => return None,
        }
        let keys: Vec<&[u8]> = match name {
            "SET" => vec![args[1]],
            "BLPOP" => args[1..args.len() - 1].to_vec(),
            _ => args[1..].to_vec(),
        };
        let slot = key_slot(keys[0]);
        if keys.iter().any(|k| key_slot(k) != slot) {
            return Some(b"-CROSSSLOT Keys in request don't hash to the same slot\r\n".to_vec());
        }
        let owner = self.owner[slot as usize];
        let importing = asking && self.migrating.is_none_or(|_| owner != self.me);
        if owner != self.me && !importing {
            self.redirects += 1;
            return Some(format!("-MOVED {slot} 10.0.0.1:{}\r\n", 7000 + owner).into_bytes());
        }
        if let Some((migrating, to)) = self.migrating {
            if migrating == slot && owner == self.me && !keys.iter().all(|k| has(k)) {
                self.redirects += 1;
                return Some(format!("-ASK {slot} 10.0.0.1:{}\r\n", 7000 + to).into_bytes());
            }
        }
        None
    }
}

impl FakeServer {
    /// `key` changed: every tracking connection that read it is told.
    fn touched(&mut self, key: &[u8]) {
        for handle in self.tracked.remove(key).unwrap_or_default() {
            let mut push = b">2\r\n$10\r\ninvalidate\r\n*1\r\n".to_vec();
            resp::write_bulk(&mut push, key);
            self.pushes.push((handle, push));
        }
    }

    /// A client that bypasses the proxy sets `key`.
    fn set_directly(&mut self, key: &[u8], value: &[u8]) {
        self.data.insert(key.to_vec(), value.to_vec());
        self.touched(key);
    }

    /// Answers every complete memcached request in `input`.
    fn serve_memcache(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        use ferrox_proto::memcache::{parse_request, Command, Request};
        let mut req = Request::new();
        let mut used = 0;
        while let Ok(Some(len)) = parse_request(&input[used..], &Default::default(), &mut req) {
            let bytes = &input[used..used + len];
            used += len;
            let token = |i: usize| &bytes[req.tokens[i].clone()];
            self.log
                .push(String::from_utf8_lossy(token(0)).into_owned());
            if self.mute {
                continue;
            }
            match req.command {
                Command::Get | Command::Gets => {
                    for k in req.key_ranges() {
                        let key = &bytes[k.clone()];
                        if let Some(v) = self.data.get(key) {
                            let flags = self.flags.get(key).copied().unwrap_or(0);
                            let flags_len = format!(" {flags} {}\r\n", v.len());
                            out.extend([b"VALUE ", key, flags_len.as_bytes(), v, b"\r\n"].concat());
                        }
                    }
                    out.extend(b"END\r\n");
                }
                Command::Set => {
                    let data = req.data.clone().unwrap();
                    let value = bytes[data.start..data.end - 2].to_vec();
                    self.data.insert(token(1).to_vec(), value);
                    let flags = String::from_utf8_lossy(token(2)).parse().unwrap();
                    self.flags.insert(token(1).to_vec(), flags);
                    out.extend(b"STORED\r\n");
                }
                Command::Delete | Command::MetaDelete => {
                    let found = self.data.remove(token(1)).is_some();
                    out.extend(match (req.command, found) {
                        (Command::Delete, true) => &b"DELETED\r\n"[..],
                        (Command::Delete, false) => b"NOT_FOUND\r\n",
                        (_, true) => b"HD\r\n",
                        (_, false) => b"NF\r\n",
                    });
                }
                Command::MetaGet => {
                    let flags: Vec<&[u8]> = (2..req.tokens.len()).map(token).collect();
                    let has = |f: &[u8]| flags.contains(&f);
                    // Client flags 0 and cas 1 when asked for.
                    let extra = [(has(b"f"), " f0"), (has(b"c"), " c1")]
                        .iter()
                        .filter(|(asked, _)| *asked)
                        .map(|(_, text)| *text)
                        .collect::<String>();
                    match self.data.get(token(1)) {
                        Some(v) if has(b"v") => {
                            out.extend(format!("VA {}{extra}\r\n", v.len()).as_bytes());
                            out.extend(v);
                            out.extend(b"\r\n");
                        }
                        Some(_) => out.extend(format!("HD{extra}\r\n").as_bytes()),
                        None => out.extend(b"EN\r\n"),
                    }
                }
                Command::MetaSet => {
                    let data = req.data.clone().unwrap();
                    let value = bytes[data.start..data.end - 2].to_vec();
                    let mode = (3..req.tokens.len())
                        .map(token)
                        .find(|f| f.first() == Some(&b'M'))
                        .map_or(b'S', |f| f[1]);
                    let key = token(1).to_vec();
                    let present = self.data.contains_key(&key);
                    let stored = match mode {
                        b'E' if present => None,
                        b'R' | b'A' | b'P' if !present => None,
                        b'A' => Some([&self.data[&key][..], &value].concat()),
                        b'P' => Some([&value[..], &self.data[&key]].concat()),
                        _ => Some(value),
                    };
                    match stored {
                        Some(v) => {
                            self.data.insert(key, v);
                            out.extend(b"HD c1\r\n");
                        }
                        None => out.extend(b"NS\r\n"),
                    }
                }
                Command::MetaArithmetic => {
                    let flags: Vec<&[u8]> = (2..req.tokens.len()).map(token).collect();
                    let number = |prefix: u8| {
                        flags
                            .iter()
                            .find(|f| f.first() == Some(&prefix))
                            .map(|f| String::from_utf8_lossy(&f[1..]).parse::<u64>().unwrap())
                    };
                    let key = token(1).to_vec();
                    let current = match (self.data.get(&key), number(b'N')) {
                        (Some(v), _) => String::from_utf8_lossy(v).parse::<u64>().ok(),
                        (None, Some(_)) => {
                            let initial = number(b'J').unwrap_or(0);
                            self.data
                                .insert(key.clone(), initial.to_string().into_bytes());
                            out.extend(
                                format!("VA {} c1\r\n{initial}\r\n", initial.to_string().len())
                                    .as_bytes(),
                            );
                            continue;
                        }
                        (None, None) => {
                            out.extend(b"NF\r\n");
                            continue;
                        }
                    };
                    let Some(current) = current else {
                        out.extend(
                            b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
                        );
                        continue;
                    };
                    let delta = number(b'D').unwrap_or(1);
                    let n = if flags.contains(&&b"MD"[..]) {
                        current.saturating_sub(delta)
                    } else {
                        current.wrapping_add(delta)
                    }
                    .to_string();
                    out.extend(format!("VA {} c1\r\n{n}\r\n", n.len()).as_bytes());
                    self.data.insert(key, n.into_bytes());
                }
                _ => out.extend(b"SERVER_ERROR unsupported by the fake\r\n"),
            }
        }
        used
    }

    /// Answers every complete request in `input`; returns bytes used.
    fn serve(&mut self, input: &[u8], sink: &mut Vec<u8>) -> usize {
        let mut args = Vec::new();
        let mut used = 0;
        while let Ok(Some(len)) =
            resp::parse_request(&input[used..], &Default::default(), &mut args)
        {
            let req = &input[used..used + len];
            let a: Vec<&[u8]> = args.iter().map(|r| &req[r.clone()]).collect();
            let name = String::from_utf8_lossy(a[0]).to_ascii_uppercase();
            // A BLPOP of a key that is not there waits, unread, for a
            // later pump to find the key.
            let redirects = name == "BLPOP"
                && self.cluster.as_ref().is_some_and(|c| {
                    c.owner[ferrox_route::cluster::key_slot(a[1]) as usize] != c.me
                });
            if name == "BLPOP" && !self.mute && !self.data.contains_key(a[1]) && !redirects {
                break;
            }
            used += len;
            self.log.push(name.clone());
            if self.mute {
                continue;
            }
            if let Some(password) = &self.password {
                if name == "AUTH" {
                    let (user, given) = match a.len() {
                        3 => (a[1], a[2]),
                        _ => (&b"default"[..], a[1]),
                    };
                    if given == &password[..] && user == self.user.as_deref().unwrap_or(b"default")
                    {
                        self.authed.insert(self.current);
                        sink.extend(b"+OK\r\n");
                    } else {
                        sink.extend(b"-WRONGPASS bad\r\n");
                    }
                    continue;
                }
                if !self.authed.contains(&self.current) {
                    sink.extend(b"-NOAUTH Authentication required.\r\n");
                    continue;
                }
            }
            if let Some(masters) = &self.sentinel {
                let port = |server: usize| (7000 + server).to_string();
                let words: Vec<String> =
                    match (name.as_str(), a.get(1).map(|w| w.to_ascii_uppercase())) {
                        ("SENTINEL", Some(q)) if q == b"GET-MASTER-ADDR-BY-NAME" => {
                            match masters.get(&*String::from_utf8_lossy(a[2])) {
                                Some((primary, _)) => vec!["10.0.0.1".into(), port(*primary)],
                                None => {
                                    sink.extend_from_slice(b"*-1\r\n");
                                    continue;
                                }
                            }
                        }
                        ("SENTINEL", Some(q)) if q == b"REPLICAS" => {
                            let replicas = masters
                                .get(&*String::from_utf8_lossy(a[2]))
                                .map_or(&[][..], |(_, r)| &r[..]);
                            sink.extend_from_slice(format!("*{}\r\n", replicas.len()).as_bytes());
                            for &r in replicas {
                                let fields = [
                                    "ip",
                                    "10.0.0.1",
                                    "port",
                                    &port(r),
                                    "flags",
                                    "slave",
                                    "master-link-status",
                                    "ok",
                                ];
                                resp::write_bulk_array(sink, fields.iter().map(|f| f.as_bytes()));
                            }
                            continue;
                        }
                        ("SUBSCRIBE", _) => vec!["subscribe".into(), "+switch-master".into()],
                        _ => vec!["ERR unknown".into()],
                    };
                resp::write_bulk_array(sink, words.iter().map(|w| w.as_bytes()));
                continue;
            }
            if let Some(cluster) = &mut self.cluster {
                let data = &self.data;
                if let Some(reply) = cluster.intercept(&a, &name, |k| data.contains_key(k)) {
                    sink.extend(reply);
                    continue;
                }
            }
            if name == "MULTI" {
                // The proxy sends MULTI … EXEC at once: a change to a
                // watched key came before this MULTI, or not at all.
                let changed = self
                    .watched
                    .take()
                    .is_some_and(|(key, then)| self.data.get(&key) != then.as_ref());
                self.multi = Some((0, Vec::new(), changed));
                sink.extend(b"+OK\r\n");
                continue;
            }
            if name == "WATCH" {
                self.watched = Some((a[1].to_vec(), self.data.get(a[1]).cloned()));
                sink.extend(b"+OK\r\n");
                continue;
            }
            if name == "EXEC" {
                let (n, replies, changed) = self.multi.take().expect("EXEC after MULTI");
                if changed {
                    sink.extend(b"*-1\r\n");
                } else {
                    resp::write_array_header(sink, n);
                    sink.extend(replies);
                }
                continue;
            }
            if self.multi.as_ref().is_some_and(|m| m.2) {
                sink.extend(b"+QUEUED\r\n");
                continue;
            }
            let mut queued = Vec::new();
            let out: &mut Vec<u8> = if self.multi.is_some() {
                &mut queued
            } else {
                sink
            };
            let written: Vec<Vec<u8>> = match name.as_str() {
                "SET" | "DEL" | "INCR" => a[1..2].iter().map(|k| k.to_vec()).collect(),
                "MSET" => a[1..].chunks(2).map(|kv| kv[0].to_vec()).collect(),
                _ => Vec::new(),
            };
            for key in written {
                self.touched(&key);
            }
            if name == "GET" && self.tracking.contains(&self.current) {
                self.tracked
                    .entry(a[1].to_vec())
                    .or_default()
                    .insert(self.current);
            }
            if name == "FLUSHDB" {
                for &handle in &self.tracking {
                    self.pushes
                        .push((handle, b">2\r\n$10\r\ninvalidate\r\n_\r\n".to_vec()));
                }
                self.tracked.clear();
            }
            match name.as_str() {
                "CLIENT" if a[1].eq_ignore_ascii_case(b"TRACKING") => {
                    self.tracking.insert(self.current);
                    out.extend(b"+OK\r\n");
                }
                "AUTH" if Some(a[1]) == self.password.as_deref() => out.extend(b"+OK\r\n"),
                "AUTH" => out.extend(b"-WRONGPASS bad\r\n"),
                "SELECT" => out.extend(b"+OK\r\n"),
                "HELLO" => out.extend(b"%1\r\n+proto\r\n:3\r\n"),
                "GET" => match self.data.get(a[1]) {
                    Some(v) => resp::write_bulk(out, v),
                    None => out.extend(b"$-1\r\n"),
                },
                "SET" => {
                    self.data.insert(a[1].to_vec(), a[2].to_vec());
                    out.extend(b"+OK\r\n");
                }
                "MSET" => {
                    for kv in a[1..].chunks(2) {
                        self.data.insert(kv[0].to_vec(), kv[1].to_vec());
                    }
                    out.extend(b"+OK\r\n");
                }
                "MGET" => {
                    resp::write_array_header(out, a.len() - 1);
                    for k in &a[1..] {
                        match self.data.get(*k) {
                            Some(v) => resp::write_bulk(out, v),
                            None => out.extend(b"$-1\r\n"),
                        }
                    }
                }
                "DEL" | "EXISTS" => {
                    let n = a[1..]
                        .iter()
                        .filter(|k| self.data.contains_key(**k))
                        .count();
                    if name == "DEL" {
                        for k in &a[1..] {
                            self.data.remove(*k);
                        }
                    }
                    resp::write_integer(out, n as i64);
                }
                "BLPOP" => {
                    let value = self.data.remove(a[1]).expect("waited for above");
                    resp::write_bulk_array(out, [a[1], &value[..]]);
                }
                // Stateless: every confirmation says one subscription.
                "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE"
                | "SUNSUBSCRIBE" => {
                    let kind = name.to_ascii_lowercase();
                    let count = i64::from(!kind.contains("unsub"));
                    resp::write_array_header(out, 3);
                    resp::write_bulk(out, kind.as_bytes());
                    resp::write_bulk(out, a[1]);
                    resp::write_integer(out, count);
                }
                "DBSIZE" => resp::write_integer(out, self.data.len() as i64),
                "WAIT" => {
                    let n = |i: usize| std::str::from_utf8(a[i]).unwrap().parse().unwrap();
                    self.waited = Some((n(1), n(2)));
                    resp::write_integer(out, self.replicas);
                }
                // Every key of the fake expires, in 1,000 ms per key held.
                "INFO" => {
                    let n = self.data.len();
                    let mut text = String::from("# Keyspace\r\n");
                    if n > 0 {
                        text += &format!("db0:keys={n},expires={n},avg_ttl={}\r\n", n * 1000);
                    }
                    resp::write_bulk(out, text.as_bytes());
                }
                "RANDOMKEY" => match self.data.keys().min() {
                    Some(k) => resp::write_bulk(out, k),
                    None => out.extend(b"$-1\r\n"),
                },
                "FLUSHDB" => {
                    self.data.clear();
                    out.extend(b"+OK\r\n");
                }
                "KEYS" => {
                    let mut keys: Vec<_> = self.data.keys().collect();
                    keys.sort();
                    resp::write_bulk_array(out, keys.into_iter().map(|k| &k[..]));
                }
                // Two keys a call, the cursor an index into the sorted keys.
                "SCAN" => {
                    let mut keys: Vec<_> = self.data.keys().collect();
                    keys.sort();
                    let at: usize = std::str::from_utf8(a[1]).unwrap().parse().unwrap();
                    let end = (at + 2).min(keys.len());
                    let next = if end == keys.len() { 0 } else { end };
                    out.extend(b"*2\r\n");
                    resp::write_bulk(out, next.to_string().as_bytes());
                    resp::write_bulk_array(out, keys[at.min(end)..end].iter().map(|k| &k[..]));
                }
                "INCR" => {
                    let v = self.data.entry(a[1].to_vec()).or_insert(b"0".to_vec());
                    let n: i64 = std::str::from_utf8(v).unwrap().parse::<i64>().unwrap() + 1;
                    *v = n.to_string().into_bytes();
                    resp::write_integer(out, n);
                }
                _ => out.extend(b"-ERR unknown\r\n"),
            }
            if let Some((n, replies, _)) = &mut self.multi {
                *n += 1;
                replies.extend(queued);
                sink.extend(b"+QUEUED\r\n");
            }
        }
        used
    }
}

#[derive(Debug)]
enum Conn {
    Client {
        tag: Tag,
        received: Vec<u8>,
    },
    Backend {
        tag: Tag,
        server: usize,
        up: bool,
        inbox: Vec<u8>,
    },
}

/// Clients, servers and the engine on one in-memory network.
#[derive(Debug)]
struct Net {
    engine: Engine,
    now: Micros,
    servers: Vec<FakeServer>,
    conns: HashMap<Handle, Conn>,
    next_handle: Handle,
    /// Answer servers from the last to the first (replies arrive out of
    /// order across servers).
    reverse: bool,
    memcache: bool,
}

impl Net {
    fn new(spec: PoolSpec) -> Net {
        let is_memcache = spec.protocol == Protocol::Memcache;
        let servers = (0..spec.servers.len())
            .map(|_| FakeServer::default())
            .collect();
        Net {
            engine: Engine::new(vec![spec], 7),
            now: 1_000,
            servers,
            conns: HashMap::new(),
            next_handle: 1,
            reverse: true,
            memcache: is_memcache,
        }
    }

    fn client(&mut self) -> Handle {
        let handle = self.next_handle;
        self.next_handle += 1;
        let tag = self.engine.accept(0, handle).expect("room for a session");
        self.conns.insert(
            handle,
            Conn::Client {
                tag,
                received: Vec::new(),
            },
        );
        handle
    }

    /// The engine's tag for `client`.
    fn client_tag(&self, client: Handle) -> Tag {
        let Some(Conn::Client { tag, .. }) = self.conns.get(&client) else {
            panic!("no client {client}");
        };
        *tag
    }

    fn send(&mut self, client: Handle, bytes: &[u8]) {
        let tag = self.client_tag(client);
        let used = self.engine.handle_input(tag, bytes, self.now);
        assert_eq!(used, bytes.len(), "the engine held input back");
        self.pump();
    }

    fn take(&mut self, client: Handle) -> Vec<u8> {
        match self.conns.get_mut(&client) {
            Some(Conn::Client { received, .. }) => std::mem::take(received),
            _ => panic!("no client {client}"),
        }
    }

    /// What `client` has received so far, left in place.
    fn take_peek(&self, client: Handle) -> &[u8] {
        match self.conns.get(&client) {
            Some(Conn::Client { received, .. }) => received,
            _ => panic!("no client {client}"),
        }
    }

    /// Carries actions and bytes until nothing moves.
    fn pump(&mut self) {
        for _ in 0..100 {
            let mut moved = false;
            while let Some(action) = self.engine.poll_action() {
                moved = true;
                self.act(action);
            }
            let mut handles: Vec<Handle> = self
                .conns
                .iter()
                .filter(|(_, c)| matches!(c, Conn::Backend { .. }))
                .map(|(h, _)| *h)
                .collect();
            handles.sort_by_key(|h| {
                let Some(Conn::Backend { server, .. }) = self.conns.get(h) else {
                    unreachable!()
                };
                if self.reverse {
                    usize::MAX - server
                } else {
                    *server
                }
            });
            for handle in handles {
                let Some(Conn::Backend {
                    tag,
                    server,
                    up: true,
                    inbox,
                }) = self.conns.get_mut(&handle)
                else {
                    continue;
                };
                let mut reply = Vec::new();
                let fake = &mut self.servers[*server];
                if fake.hold {
                    continue;
                }
                fake.current = handle;
                let used = if self.memcache {
                    fake.serve_memcache(inbox, &mut reply)
                } else {
                    fake.serve(inbox, &mut reply)
                };
                inbox.drain(..used);
                let server = *server;
                if !reply.is_empty() {
                    moved = true;
                    let tag = *tag;
                    let used = self.engine.handle_input(tag, &reply, self.now);
                    assert_eq!(used, reply.len());
                }
                moved |= self.deliver_pushes(server);
            }
            if !moved {
                return;
            }
        }
        panic!("the network never settled");
    }

    /// Hands server `server`'s invalidation pushes to their connections.
    fn deliver_pushes(&mut self, server: usize) -> bool {
        let pushes = std::mem::take(&mut self.servers[server].pushes);
        let moved = !pushes.is_empty();
        for (handle, push) in pushes {
            if let Some(Conn::Backend { tag, up: true, .. }) = self.conns.get(&handle) {
                let used = self.engine.handle_input(*tag, &push, self.now);
                assert_eq!(used, push.len());
            }
        }
        moved
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Connect { tag, addr } => {
                let handle = self.next_handle;
                self.next_handle += 1;
                self.engine.bind(tag, handle);
                let server = (addr.port() - 7000) as usize;
                if self.servers[server].down {
                    self.engine.handle_gone(tag, handle, self.now);
                    return;
                }
                self.conns.insert(
                    handle,
                    Conn::Backend {
                        tag,
                        server,
                        up: true,
                        inbox: Vec::new(),
                    },
                );
                self.engine.handle_connected(tag, self.now);
            }
            Action::Send(handle) => match self.conns.get_mut(&handle) {
                Some(Conn::Client { tag, received }) => {
                    take_output(&mut self.engine, *tag, received);
                }
                Some(Conn::Backend { tag, inbox, .. }) => {
                    take_output(&mut self.engine, *tag, inbox);
                }
                None => panic!("send on unknown handle {handle}"),
            },
            Action::Close(handle) | Action::Abort(handle) => {
                match self.conns.get_mut(&handle) {
                    Some(Conn::Client { tag, received }) => {
                        take_output(&mut self.engine, *tag, received);
                        received.extend_from_slice(b"<closed>");
                    }
                    Some(Conn::Backend { up, .. }) => *up = false,
                    None => panic!("close of unknown handle {handle}"),
                }
                let tag = match &self.conns[&handle] {
                    Conn::Client { tag, .. } | Conn::Backend { tag, .. } => *tag,
                };
                self.engine.handle_gone(tag, handle, self.now);
            }
        }
    }

    fn advance(&mut self, by: Micros) {
        self.now += by;
        if self.engine.poll_timeout().is_some_and(|at| at <= self.now) {
            self.engine.handle_timeout(self.now);
        }
        self.pump();
    }
}

/// Moves all of `tag`'s output into `into`, as a runtime with room would.
fn take_output(engine: &mut Engine, tag: Tag, into: &mut Vec<u8>) {
    let output = engine.output(tag);
    let n = output.len();
    into.extend_from_slice(output);
    engine.output_acked(tag, n);
}

fn cmd(args: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    resp::write_bulk_array(&mut out, args.iter().map(|a| a.as_bytes()));
    out
}

#[test]
fn single_key_commands_go_to_the_key_server() {
    let (mut net, c) = with_client(spec(2));
    // 'a' = 97 -> server 1, 'b' = 98 -> server 0.
    net.send(c, &cmd(&["SET", "a", "1"]));
    net.send(c, &cmd(&["SET", "b", "2"]));
    net.send(c, &cmd(&["GET", "a"]));
    assert_eq!(net.take(c), b"+OK\r\n+OK\r\n$1\r\n1\r\n");
    assert!(net.servers[1].data.contains_key(&b"a"[..]));
    assert!(net.servers[0].data.contains_key(&b"b"[..]));
}

#[test]
fn pools_count_requests_bytes_latency_and_server_traffic() {
    let (mut net, c) = with_client(spec(2));
    let get = cmd(&["GET", "a"]);
    net.send(c, &get);
    net.advance(300);
    net.send(c, &cmd(&["PING"]));
    net.take(c);
    let pools: Vec<_> = net.engine.pools().collect();
    let pool = &pools[0];
    assert_eq!(pool.name, "test");
    assert_eq!(pool.sessions, 1);
    assert_eq!(pool.counters.requests, 2);
    assert_eq!(
        pool.counters.bytes_in,
        (get.len() + cmd(&["PING"]).len()) as u64
    );
    assert_eq!(pool.counters.bytes_out, b"$-1\r\n+PONG\r\n".len() as u64);
    // Both answered within the same instant of the fake clock.
    assert_eq!(pool.counters.latency[latency_bucket(0)], 2);
    let servers: Vec<ServerView> = pool.servers().collect();
    assert_eq!(servers[1].requests, 1);
    assert_eq!(servers[0].requests, 0);
    assert_eq!(servers[1].request_bytes, get.len() as u64);
    assert_eq!(
        (servers[1].responses, servers[1].response_bytes),
        (1, b"$-1\r\n".len() as u64)
    );
    assert_eq!((servers[1].connections, servers[1].in_flight), (1, 0));
    assert_eq!((servers[0].connections, servers[0].responses), (0, 0));
    assert_eq!(servers[1].ejected_since, None);
}

#[test]
fn the_latency_sum_adds_up_every_request_time() {
    let (mut net, c) = with_client(spec(2));
    // GET a goes to server 1, which holds its answer for 300 µs.
    net.servers[1].hold = true;
    net.send(c, &cmd(&["GET", "a"]));
    net.advance(300);
    net.servers[1].hold = false;
    net.advance(0);
    net.send(c, &cmd(&["PING"]));
    assert_eq!(net.take(c), b"$-1\r\n+PONG\r\n");
    let pools: Vec<_> = net.engine.pools().collect();
    let counters = &pools[0].counters;
    assert_eq!(counters.latency[latency_bucket(300)], 1);
    assert_eq!(counters.latency[latency_bucket(0)], 1);
    assert_eq!(counters.latency_sum_us, 300);
}

#[test]
fn pipelined_replies_keep_request_order_across_servers() {
    let mut net = Net::new(spec(2));
    net.servers[0].data.insert(b"b".to_vec(), b"B".to_vec());
    net.servers[1].data.insert(b"a".to_vec(), b"A".to_vec());
    let c = net.client();
    let mut pipeline = Vec::new();
    for _ in 0..3 {
        pipeline.extend(cmd(&["GET", "a"]));
        pipeline.extend(cmd(&["GET", "b"]));
        pipeline.extend(cmd(&["PING"]));
    }
    // Server 1 ('a') answers before server 0, though 'a' came first: the
    // order holds either way.
    net.send(c, &pipeline);
    assert_eq!(net.take(c), b"$1\r\nA\r\n$1\r\nB\r\n+PONG\r\n".repeat(3));
    net.reverse = false;
    net.send(c, &pipeline);
    assert_eq!(net.take(c), b"$1\r\nA\r\n$1\r\nB\r\n+PONG\r\n".repeat(3));
}

#[test]
fn multi_key_commands_split_and_merge_in_key_order() {
    let (mut net, c) = with_client(spec(2));
    net.send(c, &cmd(&["MSET", "a", "1", "b", "2", "c", "3", "d", "4"]));
    assert_eq!(net.take(c), b"+OK\r\n");
    // a, c on server 1; b, d on server 0.
    assert_eq!(net.servers[1].data.len(), 2);
    assert_eq!(net.servers[0].data.len(), 2);
    net.send(c, &cmd(&["MGET", "a", "b", "x", "c", "d"]));
    assert_eq!(
        net.take(c),
        b"*5\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n$1\r\n3\r\n$1\r\n4\r\n"
    );
    net.send(c, &cmd(&["EXISTS", "a", "b", "zz", "d"]));
    assert_eq!(net.take(c), b":3\r\n");
    net.send(c, &cmd(&["DEL", "a", "b", "c"]));
    assert_eq!(net.take(c), b":3\r\n");
    assert_eq!(net.engine.stats().split_requests, 4);
    // Keys that all live on one server go as one request.
    net.send(c, &cmd(&["MGET", "a", "c"]));
    assert_eq!(net.take(c), b"*2\r\n$-1\r\n$-1\r\n");
    assert_eq!(net.engine.stats().split_requests, 4);
    // Each of the four split into two pieces.
    let pool = net.engine.pools().next().unwrap();
    assert_eq!(pool.counters.fragments, 8);
}

#[test]
fn local_commands_and_refusals() {
    let (mut net, c) = with_client(spec(2));
    net.send(c, b"PING\r\n");
    net.send(c, &cmd(&["ECHO", "hi"]));
    net.send(c, &cmd(&["WAIT", "1", "0"]));
    net.send(c, &cmd(&["nosuch"]));
    net.send(c, &cmd(&["keys", "*"]));
    net.send(c, &cmd(&["SINTER", "a", "b"]));
    net.send(c, &cmd(&["SELECT", "1"]));
    net.send(c, &cmd(&["SELECT", "0"]));
    net.send(c, &cmd(&["GET"]));
    let out = String::from_utf8(net.take(c)).unwrap();
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert_eq!(lines[0], "+PONG");
    assert_eq!(lines[1..3], ["$2", "hi"]);
    // No replicas behind the fake servers.
    assert_eq!(lines[3], ":0");
    assert_eq!(lines[4], "-ERR ferrox: unknown command 'nosuch'");
    assert_eq!(
        lines[5],
        "-ERR ferrox: command 'keys' is blocked by configuration"
    );
    assert!(
        lines[6].contains("'SINTER' are on different servers"),
        "{}",
        lines[6]
    );
    assert!(lines[7].contains("fixed to 0"));
    assert_eq!(lines[8], "+OK");
    assert_eq!(lines[9], "-ERR ferrox: GET: wrong number of arguments");
    // Nothing but the WAIT reached a server.
    assert!(net.servers.iter().all(|s| s.log == ["WAIT"]));
}

#[test]
fn hello_switches_to_resp3_on_separate_backend_connections() {
    let (mut net, c) = with_client(spec(1));
    net.send(c, &cmd(&["HELLO", "4"]));
    assert!(net.take(c).starts_with(b"-NOPROTO"));
    net.send(c, &cmd(&["HELLO", "3"]));
    let hello = net.take(c);
    assert!(hello.starts_with(b"%7\r\n$6\r\nserver\r\n$6\r\nferrox\r\n"));
    net.send(c, &cmd(&["CONFIG", "GET", "save"]));
    assert_eq!(net.take(c), b"%0\r\n");
    net.send(c, &cmd(&["GET", "k"]));
    assert_eq!(net.take(c), b"$-1\r\n");
    assert_eq!(net.servers[0].log, ["HELLO", "GET"]);
    let d = net.client();
    net.send(d, &cmd(&["GET", "k"]));
    assert_eq!(net.take(d), b"$-1\r\n");
    // A RESP2 session uses another connection, without HELLO.
    assert_eq!(net.servers[0].log, ["HELLO", "GET", "GET"]);
    assert_eq!(net.engine.stats().backend_connects, 2);
}

#[test]
fn auth_is_required_and_sent_to_backends() {
    let mut s = spec(1);
    s.auth = Some(b"sesame".to_vec());
    s.db = 3;
    let mut net = Net::new(s);
    net.servers[0].password = Some(b"sesame".to_vec());
    let c = net.client();
    net.send(c, &cmd(&["GET", "k"]));
    assert_eq!(net.take(c), b"-NOAUTH Authentication required.\r\n");
    net.send(c, &cmd(&["AUTH", "wrong"]));
    assert!(net.take(c).starts_with(b"-WRONGPASS"));
    net.send(c, &cmd(&["AUTH", "sesame"]));
    net.send(c, &cmd(&["GET", "k"]));
    assert_eq!(net.take(c), b"+OK\r\n$-1\r\n");
    assert_eq!(net.servers[0].log, ["AUTH", "SELECT", "GET"]);
}

#[test]
fn backends_get_their_own_login_when_the_pool_has_one() {
    // Clients log in with the pool's password, the servers are sent
    // theirs, as their ACL user.
    let mut s = spec(1);
    s.auth = Some(b"sesame".to_vec());
    s.server_login = Some(Credentials {
        user: Some(b"app".to_vec()),
        password: b"backend".to_vec(),
    });
    let mut net = Net::new(s);
    net.servers[0].user = Some(b"app".to_vec());
    net.servers[0].password = Some(b"backend".to_vec());
    let c = net.client();
    net.send(c, &cmd(&["AUTH", "backend"]));
    assert!(net.take(c).starts_with(b"-WRONGPASS"));
    net.send(c, &cmd(&["AUTH", "sesame"]));
    net.send(c, &cmd(&["SET", "k", "1"]));
    assert_eq!(net.take(c), b"+OK\r\n+OK\r\n");
    assert_eq!(net.servers[0].log, ["AUTH", "SET"]);
    assert_eq!(net.servers[0].data[&b"k"[..]], b"1");

    // No client password: clients need none, the servers still get theirs.
    let mut s = spec(1);
    s.server_login = Some(Credentials {
        user: None,
        password: b"backend".to_vec(),
    });
    let mut net = Net::new(s);
    net.servers[0].password = Some(b"backend".to_vec());
    let c = net.client();
    net.send(c, &cmd(&["GET", "k"]));
    assert_eq!(net.take(c), b"$-1\r\n");
    assert_eq!(net.servers[0].log, ["AUTH", "GET"]);
}

#[test]
fn a_backend_refusing_the_handshake_fails_only_its_requests() {
    let mut s = spec(2);
    s.auth = Some(b"sesame".to_vec());
    let mut net = Net::new(s);
    net.servers[0].password = Some(b"sesame".to_vec());
    net.servers[1].password = Some(b"other".to_vec());
    let c = net.client();
    net.send(c, &cmd(&["AUTH", "sesame"]));
    net.send(c, &cmd(&["SET", "a", "1"]));
    net.send(c, &cmd(&["SET", "b", "1"]));
    let out = String::from_utf8(net.take(c)).unwrap();
    assert_eq!(
        out,
        "+OK\r\n-ERR ferrox: server s1 refused the handshake (AUTH, SELECT or HELLO)\r\n+OK\r\n"
    );
}

#[test]
fn a_dead_backend_costs_only_its_requests_then_recovers() {
    let mut net = Net::new(spec(2));
    net.servers[1].down = true;
    let c = net.client();
    net.send(c, &cmd(&["SET", "a", "1"]));
    net.send(c, &cmd(&["SET", "b", "1"]));
    assert_eq!(
        net.take(c),
        b"-ERR ferrox: server s1 refused the connection\r\n+OK\r\n"
    );
    // The next request for the failed server tries it again: one attempt,
    // which fails while the server is down...
    let connects = net.engine.stats().backend_connects;
    net.send(c, &cmd(&["GET", "a"]));
    assert_eq!(
        net.take(c),
        b"-ERR ferrox: server s1 refused the connection\r\n"
    );
    assert_eq!(net.engine.stats().backend_connects, connects + 1);
    // ... and reaches it as soon as it is back, with no backoff to wait.
    net.servers[1].down = false;
    net.send(c, &cmd(&["SET", "a", "2"]));
    assert_eq!(net.take(c), b"+OK\r\n");
    assert_eq!(net.engine.stats().backend_connects, connects + 2);
}

#[test]
fn a_failing_server_is_ejected_and_returns_after_the_retry_time() {
    let mut net = Net::new(ejecting(2, 5_000_000));
    net.servers[1].down = true;
    let c = net.client();
    // 'a' lives on server 1: two failures eject it.
    net.send(c, &cmd(&["SET", "a", "1"]));
    net.advance(RETRY_MIN);
    net.send(c, &cmd(&["SET", "a", "1"]));
    let out = String::from_utf8(net.take(c)).unwrap();
    assert_eq!(out.matches("refused the connection").count(), 2, "{out}");
    assert_eq!(net.engine.stats().ejections, 1);
    assert!(!net.engine.is_live(0, 1));
    {
        let pool = net.engine.pools().next().unwrap();
        assert_eq!(pool.counters.server_ejects, 1);
        assert_eq!(pool.counters.forward_errors, 2);
        let server = pool.servers().nth(1).unwrap();
        assert_eq!((server.failures, server.connections), (2, 0));
        assert_eq!(server.ejected_since, Some(1_000 + RETRY_MIN));
    }
    // Its keys now go to server 0.
    net.send(c, &cmd(&["SET", "a", "2"]));
    assert_eq!(net.take(c), b"+OK\r\n");
    assert_eq!(net.servers[0].data[&b"a"[..]], b"2");
    // After the retry time it is back, and its keys with it.
    net.servers[1].down = false;
    net.advance(5_000_000);
    assert!(net.engine.is_live(0, 1));
    net.send(c, &cmd(&["SET", "a", "3"]));
    assert_eq!(net.take(c), b"+OK\r\n");
    assert_eq!(net.servers[1].data[&b"a"[..]], b"3");
}

/// A net on `spec`, and a client.
fn with_client(spec: PoolSpec) -> (Net, Handle) {
    let mut net = Net::new(spec);
    let c = net.client();
    (net, c)
}

/// A net whose server `server` takes requests but never answers, and a
/// client.
fn muted(spec: PoolSpec, server: usize) -> (Net, Handle) {
    let mut net = Net::new(spec);
    net.servers[server].mute = true;
    let c = net.client();
    (net, c)
}

#[test]
fn a_request_timeout_fails_the_requests_in_flight_on_that_connection() {
    let (mut net, c) = muted(spec(2), 1);
    net.send(c, &cmd(&["GET", "a"]));
    net.send(c, &cmd(&["GET", "a"]));
    net.send(c, &cmd(&["GET", "b"]));
    assert_eq!(net.take(c), b"");
    net.advance(999);
    assert_eq!(net.take(c), b"");
    net.advance(1);
    assert_eq!(
        net.take(c),
        b"-ERR ferrox: server s1 timed out\r\n-ERR ferrox: server s1 timed out\r\n$-1\r\n"
    );
    assert_eq!(net.engine.stats().timeouts, 1);
    let pool = net.engine.pools().next().unwrap();
    assert_eq!(pool.counters.forward_errors, 2);
    let servers: Vec<ServerView> = pool.servers().collect();
    assert_eq!((servers[1].timeouts, servers[1].responses), (1, 0));
    assert_eq!((servers[0].timeouts, servers[0].responses), (0, 1));
}

#[test]
fn protocol_errors_answer_then_close_and_other_sessions_go_on() {
    let (mut net, bad) = with_client(spec(1));
    let good = net.client();
    net.send(bad, b"*1\r\n$-5\r\n");
    assert_eq!(
        net.take(bad),
        b"-ERR Protocol error: invalid bulk length\r\n<closed>"
    );
    net.send(good, &cmd(&["PING"]));
    assert_eq!(net.take(good), b"+PONG\r\n");
    let pool = net.engine.pools().next().unwrap();
    assert_eq!((pool.counters.client_err, pool.counters.client_eof), (1, 0));
    // A reset by the client is an error too; a FIN is a clean end.
    net.engine.handle_gone(net.client_tag(good), good, net.now);
    let c = net.client();
    net.engine.handle_peer_closed(net.client_tag(c), net.now);
    net.pump();
    let pool = net.engine.pools().next().unwrap();
    assert_eq!((pool.counters.client_err, pool.counters.client_eof), (2, 1));
}

#[test]
fn a_large_value_is_held_until_whole_and_an_overlong_request_refused() {
    let (mut net, c) = with_client(spec(1));
    let tag = net.client_tag(c);
    // 900 KB of a 1 MB value: incomplete, within max_request (1 MiB).
    let mut set = b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$1000000\r\n".to_vec();
    let header = set.len();
    set.resize(header + 900_000, b'v');
    assert_eq!(net.engine.handle_input(tag, &set, net.now), 0);
    set.resize(header + 1_000_000, b'v');
    set.extend_from_slice(b"\r\n");
    assert_eq!(net.engine.handle_input(tag, &set, net.now), set.len());
    net.pump();
    assert_eq!(net.take(c), b"+OK\r\n");
    // Two 600 KB arguments: past max_request before the second is whole.
    let mut mset = b"*5\r\n$4\r\nMSET\r\n$1\r\na\r\n$600000\r\n".to_vec();
    mset.resize(mset.len() + 600_000, b'a');
    mset.extend_from_slice(b"\r\n$1\r\nb\r\n$600000\r\n");
    mset.resize(mset.len() + 500_000, b'b');
    assert_eq!(net.engine.handle_input(tag, &mset, net.now), mset.len());
    net.pump();
    assert_eq!(
        net.take(c),
        b"-ERR Protocol error: request longer than max_request (1048576 bytes)\r\n<closed>"
    );
}

#[test]
fn quit_flushes_earlier_replies_then_closes() {
    let (mut net, c) = muted(spec(1), 0);
    let mut pipeline = cmd(&["GET", "a"]);
    pipeline.extend(cmd(&["QUIT"]));
    net.send(c, &pipeline);
    assert_eq!(net.take(c), b"");
    net.servers[0].mute = false;
    net.servers[0].log.clear();
    net.advance(2_000);
    // The GET timed out (the server was mute); its error comes first.
    assert_eq!(
        net.take(c),
        b"-ERR ferrox: server s0 timed out\r\n+OK\r\n<closed>"
    );
    // QUIT is a clean end.
    let pool = net.engine.pools().next().unwrap();
    assert_eq!((pool.counters.client_eof, pool.counters.client_err), (1, 0));
}

#[test]
fn replies_for_a_closed_session_are_dropped() {
    let (mut net, c) = muted(spec(1), 0);
    net.send(c, &cmd(&["GET", "a"]));
    net.engine.handle_gone(net.client_tag(c), c, net.now);
    net.servers[0].mute = false;
    // A new session takes the freed place and must not see the old reply.
    let d = net.client();
    net.send(d, &cmd(&["PING"]));
    assert_eq!(net.take(d), b"+PONG\r\n");
}

#[test]
fn a_full_pipeline_holds_input_back() {
    let (mut net, c) = muted(
        PoolSpec {
            max_pipeline: 2,
            ..spec(1)
        },
        0,
    );
    let tag = net.client_tag(c);
    let three = [cmd(&["GET", "a"]), cmd(&["GET", "b"]), cmd(&["GET", "c"])].concat();
    let used = net.engine.handle_input(tag, &three, net.now);
    assert_eq!(used, cmd(&["GET", "a"]).len() * 2);
    assert!(!net.engine.wants_input(tag));
}

#[test]
fn client_connection_limit() {
    let (mut net, _c) = with_client(PoolSpec {
        client_connections: 1,
        ..spec(1)
    });
    assert_eq!(net.engine.accept(0, 99), None);
    assert_eq!(net.engine.stats().sessions_refused, 1);
}

fn memcache_spec(servers: usize) -> PoolSpec {
    PoolSpec {
        protocol: Protocol::Memcache,
        ..spec(servers)
    }
}

#[test]
fn memcache_multi_get_splits_and_merges() {
    let (mut net, c) = with_client(memcache_spec(2));
    net.send(
        c,
        b"set a 0 0 1\r\nA\r\nset b 0 0 1 noreply\r\nB\r\nset c 0 0 1\r\nC\r\n",
    );
    // `noreply` was stripped on the way and its reply dropped.
    assert_eq!(net.take(c), b"STORED\r\nSTORED\r\n");
    assert_eq!(net.servers[0].log, ["set"]);
    assert_eq!(net.servers[1].log, ["set", "set"]);
    net.send(c, b"get a b x c\r\n");
    assert_eq!(
        net.take(c),
        b"VALUE a 0 1\r\nA\r\nVALUE b 0 1\r\nB\r\nVALUE c 0 1\r\nC\r\nEND\r\n",
        "values in the order of the keys, as one memcached answers"
    );
    assert_eq!(net.engine.stats().split_requests, 1);
    assert_eq!(net.servers[1].log.last().unwrap(), "get");
}

#[test]
fn memcache_quiet_meta_and_local_commands() {
    let (mut net, c) = with_client(memcache_spec(1));
    // A quiet miss is dropped, a quiet hit is not; mn answers in order.
    net.send(c, b"mg nope v q\r\nset k 0 0 2\r\nhi\r\nmg k v q\r\nmn\r\n");
    assert_eq!(net.take(c), b"STORED\r\nVA 2\r\nhi\r\nMN\r\n");
    net.send(c, b"version\r\n");
    assert!(net.take(c).starts_with(b"VERSION ferrox-"));
    net.send(c, b"bogus\r\nget k\r\n");
    assert_eq!(net.take(c), b"ERROR\r\nVALUE k 0 2\r\nhi\r\nEND\r\n");
    net.send(c, b"quit\r\n");
    assert_eq!(net.take(c), b"<closed>");
}

#[test]
fn memcache_dead_server_answers_server_error() {
    let mut net = Net::new(memcache_spec(2));
    net.servers[0].down = true;
    let c = net.client();
    net.send(c, b"get b\r\nget a\r\n");
    assert_eq!(
        net.take(c),
        b"SERVER_ERROR ferrox: server s0 refused the connection\r\nEND\r\n"
    );
}

/// A binary request packet, opaque `opaque`.
fn binary_packet(opcode: u8, extras: &[u8], key: &[u8], value: &[u8], opaque: u32) -> Vec<u8> {
    let body = extras.len() + key.len() + value.len();
    let mut p = vec![0x80, opcode];
    p.extend((key.len() as u16).to_be_bytes());
    p.extend([extras.len() as u8, 0, 0, 0]);
    p.extend((body as u32).to_be_bytes());
    p.extend(opaque.to_be_bytes());
    p.extend([0; 8]);
    p.extend([extras, key, value].concat());
    p
}

/// The binary response packets in `out`: (opcode, status, opaque, cas,
/// body).
fn binary_responses(mut out: &[u8]) -> Vec<(u8, u16, u32, u64, Vec<u8>)> {
    use ferrox_proto::memcache::binary::{Header, HEADER_LEN};
    let mut responses = Vec::new();
    while !out.is_empty() {
        let header = Header::new_checked(out).expect("a whole header");
        let len = HEADER_LEN + header.body_length() as usize;
        responses.push((
            header.opcode(),
            header.status(),
            header.opaque(),
            header.cas(),
            out[HEADER_LEN..len].to_vec(),
        ));
        out = &out[len..];
    }
    responses
}

#[test]
fn memcache_binary_requests_go_to_their_servers_as_meta_commands() {
    use ferrox_proto::memcache::binary::opcode as o;
    let (mut net, c) = with_client(memcache_spec(2));
    let set_extras = [0, 0, 0, 0, 0, 0, 0, 0];
    // A pipeline: set, a quiet set, getk hit, getq miss (silent), getkq
    // hit, add on a present key, noop; responses in request order.
    let mut input = binary_packet(o::SET, &set_extras, b"a", b"one", 1);
    input.extend(binary_packet(o::SETQ, &set_extras, b"b", b"two", 2));
    input.extend(binary_packet(o::GETK, &[], b"a", b"", 3));
    input.extend(binary_packet(o::GETQ, &[], b"missing", b"", 4));
    input.extend(binary_packet(o::GETKQ, &[], b"b", b"", 5));
    input.extend(binary_packet(o::ADD, &set_extras, b"a", b"x", 6));
    input.extend(binary_packet(o::NOOP, &[], b"", b"", 7));
    net.send(c, &input);
    let out = net.take(c);
    let flags0 = [0u8, 0, 0, 0];
    assert_eq!(
        binary_responses(&out),
        [
            (o::SET, 0, 1, 1, vec![]),
            (o::GETK, 0, 3, 1, [&flags0[..], b"aone"].concat()),
            (o::GETKQ, 0, 5, 1, [&flags0[..], b"btwo"].concat()),
            (o::ADD, 2, 6, 0, b"Data exists for key.".to_vec()),
            (o::NOOP, 0, 7, 0, vec![]),
        ]
    );
    // Each key on the server the text protocol would place it on.
    let server = |net: &Net, key: &[u8]| net.servers.iter().position(|s| s.data.contains_key(key));
    let (a, b) = (server(&net, b"a").unwrap(), server(&net, b"b").unwrap());
    let placement = &memcache_spec(2).placement;
    assert_eq!(Some(a), placement.server_for(b"a", 0));
    assert_eq!(Some(b), placement.server_for(b"b", 0));
    // Counters, append, delete, a miss, version; then quit closes.
    // Delta 2, initial 40, created without expiry.
    let create = [&2u64.to_be_bytes()[..], &40u64.to_be_bytes(), &[0; 4]].concat();
    let mut input = binary_packet(o::INCREMENT, &create, b"n", b"", 8);
    input.extend(binary_packet(o::INCREMENT, &create, b"n", b"", 9));
    input.extend(binary_packet(o::APPEND, &[], b"a", b"+", 10));
    input.extend(binary_packet(o::GET, &[], b"a", b"", 11));
    input.extend(binary_packet(o::DELETE, &[], b"a", b"", 12));
    input.extend(binary_packet(o::GET, &[], b"a", b"", 13));
    input.extend(binary_packet(o::VERSION, &[], b"", b"", 14));
    net.send(c, &input);
    let responses = binary_responses(&net.take(c));
    assert_eq!(
        responses[0],
        (o::INCREMENT, 0, 8, 1, 40u64.to_be_bytes().to_vec())
    );
    assert_eq!(
        responses[1],
        (o::INCREMENT, 0, 9, 1, 42u64.to_be_bytes().to_vec())
    );
    assert_eq!(responses[2], (o::APPEND, 0, 10, 1, vec![]));
    assert_eq!(
        responses[3],
        (o::GET, 0, 11, 1, [&flags0[..], b"one+"].concat())
    );
    assert_eq!(responses[4], (o::DELETE, 0, 12, 0, vec![]));
    assert_eq!(responses[5], (o::GET, 1, 13, 0, b"Not found".to_vec()));
    assert_eq!(responses[6].0, o::VERSION);
    assert!(responses[6].4.starts_with(b"ferrox-"));
    net.send(c, &binary_packet(o::QUIT, &[], b"", b"", 15));
    assert_eq!(
        net.take(c),
        [
            binary_packet(0, &[], b"", b"", 15)[..24].to_vec(),
            b"<closed>".to_vec()
        ]
        .concat()
        .iter()
        .enumerate()
        .map(|(i, &b)| match i {
            0 => 0x81,
            1 => o::QUIT,
            _ => b,
        })
        .collect::<Vec<u8>>()
    );
}

#[test]
fn memcache_binary_errors_local_answers_and_refusals() {
    use ferrox_proto::memcache::binary::opcode as o;
    let mut net = Net::new(memcache_spec(2));
    net.servers[0].down = true;
    let c = net.client();
    // An unknown opcode is answered and the stream goes on; stat is the
    // proxy's own, ending with an empty response; a dead server's
    // request gets an internal error naming it.
    let key_on_dead = (b'a'..=b'z')
        .map(|c| String::from(c as char))
        .find(|k| memcache_spec(2).placement.server_for(k.as_bytes(), 0) == Some(0))
        .unwrap();
    let mut input = binary_packet(0x20, &[], b"PLAIN", b"", 1);
    // Part of a header: nothing is taken or answered yet.
    let tag = memcache_client_requests::session_tag(&net, c);
    assert_eq!(net.engine.handle_input(tag, &input[..10], net.now), 0);
    net.pump();
    assert_eq!(net.take(c), b"");
    input.extend(binary_packet(o::STAT, &[], b"", b"", 2));
    input.extend(binary_packet(o::GET, &[], key_on_dead.as_bytes(), b"", 3));
    input.extend(binary_packet(o::FLUSH, &[], b"", b"", 4));
    net.send(c, &input);
    let responses = binary_responses(&net.take(c));
    assert_eq!(
        responses[0],
        (0x20, 0x81, 1, 0, b"Unknown command".to_vec())
    );
    let stats: Vec<_> = responses.iter().filter(|r| r.2 == 2).collect();
    assert!(stats.len() > 5, "{stats:?}");
    assert!(stats.iter().all(|r| r.0 == o::STAT && r.1 == 0));
    assert_eq!(
        stats.last().unwrap().4,
        b"",
        "an empty response ends the stats"
    );
    assert!(stats.iter().any(|r| r.4.starts_with(b"pid")), "{stats:?}");
    let get = responses.iter().find(|r| r.2 == 3).unwrap();
    assert_eq!(get.1, 0x84);
    assert!(
        String::from_utf8_lossy(&get.4).contains("server s0"),
        "{get:?}"
    );
    assert_eq!(responses.last().unwrap().1, 0x83, "flush is refused");
    // A malformed packet (a get with extras) is refused and closes.
    net.send(c, &binary_packet(o::GET, &[1, 2, 3, 4], b"k", b"", 5));
    let out = net.take(c);
    let (refusal, closed) = out.split_at(out.len() - b"<closed>".len());
    assert_eq!(closed, b"<closed>");
    assert_eq!(binary_responses(refusal)[0].1, 0x04);
}

mod arbitrary_input {
    use proptest::prelude::*;

    use super::*;

    /// Pieces of client input: valid commands of both protocols, broken
    /// ones, and noise.
    fn piece() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(cmd(&["GET", "a"])),
            Just(cmd(&["MGET", "a", "b", "c"])),
            Just(cmd(&["MSET", "a", "1", "b"])),
            Just(cmd(&["DEL", "a", "b"])),
            Just(cmd(&["HELLO", "3"])),
            Just(cmd(&["QUIT"])),
            Just(b"PING\r\n".to_vec()),
            Just(b"*2\r\n$3\r\nGET\r\n$-9\r\n".to_vec()),
            Just(b"get a b c\r\nset a 0 0 1 noreply\r\nx\r\nmg a v q\r\nmn\r\n".to_vec()),
            Just(b"set a 0 0 99\r\nshort\r\n".to_vec()),
            Just(binary_packet(0x0d, &[], b"a", b"", 9)),
            Just(binary_packet(0x11, &[0; 8], b"b", b"v", 9)),
            Just(binary_packet(0x0a, &[], b"", b"", 9)),
            Just(binary_packet(0x00, &[0; 4], b"a", b"", 9)),
            proptest::collection::vec(any::<u8>(), 0..40),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever a client sends, in whatever pieces, the engine neither
        /// panics nor loses its other sessions, and a session it closes
        /// stays closed.
        #[test]
        fn any_client_input_is_answered_or_closed(
            pieces in proptest::collection::vec(piece(), 0..12),
            cuts in proptest::collection::vec(1usize..64, 0..12),
            memcache in any::<bool>(),
        ) {
            let mut pool = if memcache { memcache_spec(2) } else { spec(2) };
            pool.max_pipeline = 4096;
            let (mut net, fuzzed) = with_client(pool);
            let bystander = net.client();
            let stream = pieces.concat();
            let mut at = 0;
            let mut held = Vec::new();
            for cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
                let end = at + (*cut).min(stream.len() - at);
                held.extend_from_slice(&stream[at..end]);
                at = end;
                let used = net.engine.handle_input(net.client_tag(fuzzed), &held, net.now);
                held.drain(..used);
                net.pump();
                if net.take_peek(fuzzed).ends_with(b"<closed>") {
                    break;
                }
            }
            let ping: &[u8] = if memcache { b"version\r\n" } else { b"PING\r\n" };
            net.send(bystander, ping);
            let answer = net.take(bystander);
            prop_assert!(answer.starts_with(b"+PONG") || answer.starts_with(b"VERSION"));
        }
    }
}

mod reconfiguration {
    use super::*;

    #[test]
    fn servers_come_and_go_without_closing_clients_or_losing_requests() {
        let mut net = Net::new(spec(2));
        net.servers.push(FakeServer::default());
        let c = net.client();
        // A request in flight on server 1 while the change happens.
        net.servers[1].hold = true;
        net.send(c, &cmd(&["GET", "a"]));
        // Three servers now: 'a' (97) goes to server 1, 'b' (98) to 2.
        let (indices, changes) = net.engine.reconfigure(vec![spec(3)]);
        assert_eq!(indices, [0]);
        assert_eq!(changes.servers_added, 1);
        net.servers[1].hold = false;
        net.servers[1].data.insert(b"a".to_vec(), b"A".to_vec());
        // The held request is answered by the server it was sent to.
        net.send(c, &cmd(&["SET", "b", "2"]));
        assert_eq!(net.take(c), b"$1\r\nA\r\n+OK\r\n");
        assert!(net.servers[2].data.contains_key(&b"b"[..]));
        // Back to one server: the others' connections close, the client's
        // does not, and every key goes to server 0.
        let (_, changes) = net.engine.reconfigure(vec![spec(1)]);
        assert_eq!(changes.servers_removed, 2);
        net.pump();
        net.send(c, &cmd(&["SET", "a", "1"]));
        net.send(c, &cmd(&["SET", "b", "1"]));
        assert_eq!(net.take(c), b"+OK\r\n+OK\r\n");
        assert_eq!(net.servers[0].data.len(), 2);
        let open_backends = net
            .conns
            .values()
            .filter(|c| matches!(c, Conn::Backend { up: true, .. }))
            .count();
        assert_eq!(open_backends, 1);
    }

    #[test]
    fn a_removed_server_answers_what_it_holds_before_it_is_closed() {
        let (mut net, c) = with_client(spec(2));
        net.servers[1].hold = true;
        net.servers[1].data.insert(b"a".to_vec(), b"A".to_vec());
        net.send(c, &cmd(&["GET", "a"]));
        net.engine.reconfigure(vec![spec(1)]);
        net.pump();
        let backend = net
            .conns
            .iter()
            .find_map(|(h, c)| match c {
                Conn::Backend { server: 1, .. } => Some(*h),
                _ => None,
            })
            .unwrap();
        assert!(matches!(
            net.conns[&backend],
            Conn::Backend { up: true, .. }
        ));
        // Server 1 answers the GET it was sent; its connection is closed
        // after that.
        net.servers[1].hold = false;
        net.pump();
        assert_eq!(net.take(c), b"$1\r\nA\r\n");
        assert!(matches!(
            net.conns[&backend],
            Conn::Backend { up: false, .. }
        ));
    }

    #[test]
    fn settings_change_in_place_and_removed_pools_close_their_clients() {
        let (mut net, c) = with_client(spec(1));
        net.send(c, &cmd(&["GET", "a"]));
        assert_eq!(net.take(c), b"$-1\r\n");
        let mut blocking = spec(1);
        blocking.blocked = vec![b"GET".to_vec()];
        net.engine.reconfigure(vec![blocking]);
        net.send(c, &cmd(&["GET", "a"]));
        assert!(net
            .take(c)
            .starts_with(b"-ERR ferrox: command 'GET' is blocked"));
        // A pool under another name: the old one's client is closed, the
        // new one takes clients.
        let mut renamed = spec(1);
        renamed.name = "other".into();
        let (indices, changes) = net.engine.reconfigure(vec![renamed]);
        assert_eq!((changes.pools_added, changes.pools_removed), (1, 1));
        net.pump();
        assert_eq!(net.take(c), b"<closed>");
        assert_eq!(net.engine.accept(0, 1000), None);
        assert!(net.engine.accept(indices[0], 1001).is_some());
    }
}

#[test]
fn a_server_held_out_takes_no_keys_until_let_back_and_survives_a_reconfiguration() {
    let (mut net, c) = with_client(spec(2));
    // 'a' lives on server 1; held out, its keys go to server 0.
    net.engine.hold_out(0, 0b10);
    assert!(!net.engine.is_live(0, 1));
    net.send(c, &cmd(&["SET", "a", "1"]));
    assert_eq!(net.take(c), b"+OK\r\n");
    assert_eq!(net.servers[0].data[&b"a"[..]], b"1");
    assert!(
        net.engine
            .pools()
            .next()
            .unwrap()
            .servers()
            .nth(1)
            .unwrap()
            .ejected
    );
    // A new configuration with the same servers keeps it held out.
    net.engine.reconfigure(vec![spec(2)]);
    assert!(!net.engine.is_live(0, 1));
    // Let back, it takes its keys again.
    net.engine.hold_out(0, 0);
    assert!(net.engine.is_live(0, 1));
    net.send(c, &cmd(&["SET", "a", "2"]));
    assert_eq!(net.take(c), b"+OK\r\n");
    assert_eq!(net.servers[1].data[&b"a"[..]], b"2");
    // Out-of-range pools and bits are ignored.
    net.engine.hold_out(7, u64::MAX);
    net.engine.hold_out(0, 1 << 63);
    assert!(net.engine.is_live(0, 0) && net.engine.is_live(0, 1));
}

/// memcached requests real clients send that the proxy once refused or
/// left unanswered: long multi-get lines, and the binary protocol.
mod memcache_client_requests {
    use super::*;

    /// `get` (or `gets`) of `n` keys spread over the servers by their
    /// first byte, 30 bytes a key on the line.
    fn many_keys(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                format!(
                    "{}{i:05}:padding-padding-xyz-abc",
                    (b'a' + (i % 3) as u8) as char
                )
            })
            .collect()
    }

    pub(super) fn session_tag(net: &Net, client: Handle) -> Tag {
        match net.conns.get(&client) {
            Some(Conn::Client { tag, .. }) => *tag,
            _ => panic!("no client {client}"),
        }
    }

    #[test]
    fn a_5000_key_multi_get_arriving_in_segments_is_split_and_merged() {
        for command in ["get", "gets"] {
            let mut net = Net::new(memcache_spec(3));
            let keys = many_keys(5_000);
            // Every seventh key is stored, on the server its first byte
            // names.
            for (i, key) in keys.iter().enumerate().filter(|(i, _)| i % 7 == 0) {
                let server = key.as_bytes()[0] as usize % 3;
                let value = format!("v{i}").into_bytes();
                net.servers[server]
                    .data
                    .insert(key.as_bytes().to_vec(), value);
            }
            let mut line = command.as_bytes().to_vec();
            for key in &keys {
                line.push(b' ');
                line.extend_from_slice(key.as_bytes());
            }
            line.extend_from_slice(b"\r\n");
            assert!(line.len() > 145_000, "{}", line.len());
            let c = net.client();
            let tag = session_tag(&net, c);
            // Segments of a 1500-byte MTU; the runtime offers what it
            // holds back each time, as dataplane/src/net does.
            let mut held: Vec<u8> = Vec::new();
            for segment in line.chunks(1448) {
                held.extend_from_slice(segment);
                let used = net.engine.handle_input(tag, &held, net.now);
                held.drain(..used);
                net.pump();
                if !held.is_empty() {
                    // Incomplete: nothing used, and the next call goes on
                    // searching where this one stopped.
                    assert_eq!(used, 0);
                    let session = &net.engine.sessions[tag.index()];
                    assert_eq!(session.memcache_searched(), held.len());
                }
            }
            assert!(held.is_empty());
            // One piece per server; the VALUE blocks come back in the
            // order of the keys, under one END.
            let mut expected = Vec::new();
            for (i, key) in keys.iter().enumerate().filter(|(i, _)| i % 7 == 0) {
                let value = format!("v{i}");
                expected.extend_from_slice(
                    format!("VALUE {key} 0 {}\r\n{value}\r\n", value.len()).as_bytes(),
                );
            }
            expected.extend_from_slice(b"END\r\n");
            let reply = net.take(c);
            assert!(reply == expected, "values out of key order");
            assert_eq!(reply.windows(6).filter(|w| w == b"VALUE ").count(), 715);
            assert_eq!(net.engine.stats().split_requests, 1);
            for server in &net.servers {
                assert_eq!(server.log, [command]);
            }
            // The session goes on with ordinary requests.
            net.send(c, b"get a00000:padding-padding-xyz-abc\r\n");
            assert_eq!(
                net.take(c),
                b"VALUE a00000:padding-padding-xyz-abc 0 2\r\nv0\r\nEND\r\n"
            );
        }
    }

    #[test]
    fn a_retrieval_line_is_bounded_by_max_request_and_other_lines_by_max_line() {
        let (mut net, c) = with_client(PoolSpec {
            max_request: 100_000,
            ..memcache_spec(2)
        });
        let keys = many_keys(4_000);
        let line = format!("get {}\r\n", keys.join(" "));
        assert!(line.len() > 100_000);
        net.send(c, line.as_bytes());
        assert_eq!(net.take(c), b"CLIENT_ERROR line too long\r\n<closed>");
        // A line of another command keeps the 64 KiB line limit.
        let d = net.client();
        let long = format!("delete {}\r\n", "k".repeat(70_000));
        net.send(d, long.as_bytes());
        assert_eq!(net.take(d), b"CLIENT_ERROR line too long\r\n<closed>");
        assert!(net.servers.iter().all(|s| s.log.is_empty()));
    }
}

/// Connecting and reconnecting to servers, on a fake clock: a first
/// attempt that is lost or refused, a server that dies and comes back.
mod reconnecting {
    use super::*;

    /// A connection attempt to a server that does not answer it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fault {
        /// The SYN (or the ARP exchange before it) is lost: only the
        /// engine's connect timeout ends the attempt.
        Lost,
        /// Refused at once (RST).
        Refused,
    }

    /// Carries the engine's pending actions as `Net::pump` does, except
    /// that the next `times` connection attempts to `server` meet `fault`.
    /// Returns how many did.
    fn pump_with_fault(net: &mut Net, server: usize, fault: Fault, times: u32) -> u32 {
        let mut hit = 0;
        loop {
            let mut moved = false;
            while let Some(action) = net.engine.poll_action() {
                moved = true;
                match action {
                    Action::Connect { tag, addr }
                        if hit < times && usize::from(addr.port() - 7000) == server =>
                    {
                        hit += 1;
                        let handle = net.next_handle;
                        net.next_handle += 1;
                        net.engine.bind(tag, handle);
                        if fault == Fault::Refused {
                            net.engine.handle_gone(tag, handle, net.now);
                        } else {
                            // Never up: the engine aborts it in the end.
                            let inbox = Vec::new();
                            let conn = Conn::Backend {
                                tag,
                                server,
                                up: false,
                                inbox,
                            };
                            net.conns.insert(handle, conn);
                        }
                    }
                    other => net.act(other),
                }
            }
            if !moved {
                net.pump();
                return hit;
            }
        }
    }

    /// The connections to `server` are reset (the server was killed) and
    /// new ones are refused until `down` is cleared.
    pub(super) fn kill(net: &mut Net, server: usize) {
        net.servers[server].down = true;
        let mut killed = Vec::new();
        for (handle, conn) in &mut net.conns {
            if let Conn::Backend {
                tag, server: s, up, ..
            } = conn
            {
                if *s == server && *up {
                    *up = false;
                    killed.push((*tag, *handle));
                }
            }
        }
        for (tag, handle) in killed {
            net.engine.handle_gone(tag, handle, net.now);
        }
        net.pump();
    }

    fn set(key: &str) -> Vec<u8> {
        cmd(&["SET", key, "v"])
    }

    /// A twemproxy pool as reported: preconnect, `server_retry_timeout:
    /// 2000`, `server_failure_limit: 3`, ejection on, the default 1 s
    /// connect timeout.
    fn preconnecting() -> PoolSpec {
        PoolSpec {
            preconnect: true,
            connect_timeout: 1_000_000,
            timeout: None,
            retry_max: 2_000_000,
            ..ejecting(3, 2_000_000)
        }
    }

    /// SETs for `n` keys on each server, interleaved: `a…` keys live on
    /// server 1, `b…` keys on server 0.
    fn sets(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| [set(&format!("a{i}")), set(&format!("b{i}"))])
            .flatten()
            .collect()
    }

    #[test]
    fn a_first_connect_that_times_out_is_retried_at_once_and_its_requests_wait() {
        let mut net = Net::new(preconnecting());
        net.engine.preconnect(net.now);
        // Server 1's first SYN is lost (the connect raced ARP).
        assert_eq!(pump_with_fault(&mut net, 1, Fault::Lost, 1), 1);
        let c = net.client();
        net.send(c, b"PING\r\n");
        assert_eq!(net.take(c), b"+PONG\r\n");
        // The first 40 SETs right after the first PONG.
        let tag = match net.conns[&c] {
            Conn::Client { tag, .. } => tag,
            _ => unreachable!(),
        };
        let pipeline = sets(20);
        assert_eq!(
            net.engine.handle_input(tag, &pipeline, net.now),
            pipeline.len()
        );
        pump_with_fault(&mut net, 1, Fault::Lost, 0);
        // Server 1's SETs wait for its connection, and the others behind
        // them in the pipeline.
        assert_eq!(net.take(c), b"");
        net.advance(999_999);
        assert_eq!(net.take(c), b"");
        // The attempt times out and is made again at once; this one
        // connects, and every SET is served.
        let connects = net.engine.stats().backend_connects;
        net.advance(1);
        assert_eq!(net.take(c), b"+OK\r\n".repeat(40));
        let stats = net.engine.stats();
        assert_eq!(stats.backend_connects, connects + 1);
        assert_eq!((stats.connect_retries, stats.backend_failures), (1, 1));
        assert_eq!((stats.errors, stats.ejections), (0, 0));
        assert_eq!(net.servers[1].data.len(), 20);
        // The lost attempt is not held against the server.
        let pools: Vec<_> = net.engine.pools().collect();
        assert_eq!(pools[0].servers().nth(1).unwrap().failures, 0);
        assert!(net.engine.is_live(0, 1));
    }

    #[test]
    fn a_first_connect_that_is_refused_is_retried_at_once() {
        let (mut net, c) = with_client(preconnecting());
        let tag = match net.conns[&c] {
            Conn::Client { tag, .. } => tag,
            _ => unreachable!(),
        };
        // No preconnect this time: the SETs open the connections, and
        // server 1 refuses the first one.
        let pipeline = sets(3);
        net.engine.handle_input(tag, &pipeline, net.now);
        assert_eq!(pump_with_fault(&mut net, 1, Fault::Refused, 1), 1);
        assert_eq!(net.take(c), b"+OK\r\n".repeat(6));
        assert_eq!(net.engine.stats().connect_retries, 1);
        assert_eq!(net.engine.stats().errors, 0);
    }

    #[test]
    fn when_the_retry_fails_too_the_queued_requests_fail_and_it_counts_once() {
        let mut net = Net::new(preconnecting());
        net.engine.preconnect(net.now);
        pump_with_fault(&mut net, 1, Fault::Lost, 1);
        let c = net.client();
        net.send(c, &set("a"));
        net.send(c, &set("b"));
        // The retry is refused: the server is down after all.
        net.servers[1].down = true;
        net.advance(1_000_000);
        assert_eq!(
            net.take(c),
            b"-ERR ferrox: server s1 refused the connection\r\n+OK\r\n"
        );
        let stats = net.engine.stats();
        assert_eq!((stats.connect_retries, stats.backend_failures), (1, 2));
        let pools: Vec<_> = net.engine.pools().collect();
        assert_eq!(pools[0].servers().nth(1).unwrap().failures, 1);
        assert!(net.engine.is_live(0, 1));
    }

    #[test]
    fn after_a_restart_the_first_request_reaches_the_server() {
        let (mut net, c) = with_client(spec(2));
        net.send(c, &set("a"));
        net.send(c, &set("b"));
        assert_eq!(net.take(c), b"+OK\r\n+OK\r\n");
        // Server 1 is killed under load: only its keys fail.
        kill(&mut net, 1);
        let connects = net.engine.stats().backend_connects;
        net.send(c, &[set("a"), set("b"), set("a")].concat());
        assert_eq!(
            net.take(c),
            [
                &b"-ERR ferrox: server s1 refused the connection\r\n"[..],
                b"+OK\r\n",
                b"-ERR ferrox: server s1 refused the connection\r\n",
            ]
            .concat()
        );
        // One attempt for both of its requests, not one each.
        assert_eq!(net.engine.stats().backend_connects, connects + 1);
        // It is started again 50 ms later: the very next request reaches
        // it, whatever backoff the failures had earned.
        net.advance(50_000);
        net.servers[1].down = false;
        net.send(c, &set("a"));
        assert_eq!(net.take(c), b"+OK\r\n");
        assert_eq!(net.engine.stats().backend_connects, connects + 2);
    }

    #[test]
    fn a_server_that_does_not_answer_gets_one_attempt_at_a_time() {
        let mut s = spec(2);
        s.server_connections = 2;
        s.connect_timeout = 1_000_000;
        s.timeout = None;
        let (mut net, c) = with_client(s);
        net.send(c, &[set("a"), set("a"), set("b")].concat());
        assert_eq!(net.take(c), b"+OK\r\n".repeat(3));
        // Server 1 dies, and its host stops answering SYNs.
        kill(&mut net, 1);
        let tag = match net.conns[&c] {
            Conn::Client { tag, .. } => tag,
            _ => unreachable!(),
        };
        let connects = net.engine.stats().backend_connects;
        let four = [set("a"), set("a"), set("a"), set("a")].concat();
        net.engine.handle_input(tag, &four, net.now);
        assert_eq!(pump_with_fault(&mut net, 1, Fault::Lost, u32::MAX), 1);
        // Requests that come while the attempt is in flight wait for it,
        // on whichever of the server's connections they were routed to.
        net.advance(500_000);
        net.engine.handle_input(tag, &set("a"), net.now);
        assert_eq!(pump_with_fault(&mut net, 1, Fault::Lost, u32::MAX), 0);
        assert_eq!(net.engine.stats().backend_connects, connects + 1);
        assert_eq!(net.take(c), b"");
        // It times out: they all fail.
        net.advance(500_000);
        assert_eq!(
            net.take(c),
            b"-ERR ferrox: server s1 did not accept a connection in time\r\n".repeat(5)
        );
        // The server is back: the next request connects and is served.
        net.servers[1].down = false;
        net.send(c, &set("a"));
        assert_eq!(net.take(c), b"+OK\r\n");
    }

    #[test]
    fn an_ejected_server_gets_no_attempt_until_its_retry_time() {
        let (mut net, c) = with_client(ejecting(2, 1_000_000));
        net.send(c, &[set("a"), set("b")].concat());
        assert_eq!(net.take(c), b"+OK\r\n+OK\r\n");
        // The reset connection is one failure, the refused attempt of the
        // next request the second: ejected.
        kill(&mut net, 1);
        net.send(c, &set("a"));
        assert_eq!(
            net.take(c),
            b"-ERR ferrox: server s1 refused the connection\r\n"
        );
        assert!(!net.engine.is_live(0, 1));
        // Its keys go to server 0 now, and server 1 sees no attempt, even
        // once it is up again.
        let connects = net.engine.stats().backend_connects;
        net.servers[1].down = false;
        net.send(c, &set("a"));
        assert_eq!(net.take(c), b"+OK\r\n");
        assert!(net.servers[0].data.contains_key(&b"a"[..]));
        assert_eq!(net.engine.stats().backend_connects, connects);
        // At its retry time it takes its keys back, and the first request
        // for one reaches it.
        net.advance(1_000_000);
        assert!(net.engine.is_live(0, 1));
        net.servers[1].data.clear();
        net.send(c, &set("a"));
        assert_eq!(net.take(c), b"+OK\r\n");
        assert!(net.servers[1].data.contains_key(&b"a"[..]));
    }
}

/// With several connections to a server, a session's requests all take
/// the same one, so a read pipelined after a write sees it; other
/// sessions spread over the others.
#[test]
fn a_sessions_requests_to_a_server_stay_on_one_connection() {
    let mut s = spec(1);
    s.server_connections = 2;
    let mut net = Net::new(s);
    net.servers[0].hold = true;
    let (a, b) = (net.client(), net.client());
    net.send(a, &[cmd(&["SET", "k", "v"]), cmd(&["GET", "k"])].concat());
    net.send(b, &cmd(&["GET", "other"]));
    let inboxes: Vec<usize> = net
        .conns
        .values()
        .filter_map(|c| match c {
            Conn::Backend { inbox, .. } if !inbox.is_empty() => Some(inbox.len()),
            _ => None,
        })
        .collect();
    assert_eq!(inboxes.len(), 2, "two sessions, two connections");
    assert!(
        inboxes.contains(&(cmd(&["SET", "k", "v"]).len() + cmd(&["GET", "k"]).len())),
        "the write and the read on one connection: {inboxes:?}"
    );
    net.servers[0].hold = false;
    net.pump();
    assert_eq!(net.take(a), b"+OK\r\n$1\r\nv\r\n");
}

mod back_pressure;
mod compression;
mod handover;
mod hot;

/// A pool of `servers` with nothing blocked.
fn unblocked(servers: usize) -> PoolSpec {
    PoolSpec {
        blocked: Vec::new(),
        ..spec(servers)
    }
}

#[test]
fn keyspace_commands_go_to_every_server_and_their_replies_merge() {
    let (mut net, c) = with_client(unblocked(2));
    net.send(c, &cmd(&["MSET", "a", "1", "b", "2", "c", "3"]));
    net.take(c);
    net.send(c, &cmd(&["DBSIZE"]));
    assert_eq!(net.take(c), b":3\r\n");
    // Server 0 holds b, server 1 a and c: the arrays one after another.
    net.send(c, &cmd(&["KEYS", "*"]));
    assert_eq!(net.take(c), b"*3\r\n$1\r\nb\r\n$1\r\na\r\n$1\r\nc\r\n");
    // RANDOMKEY: a key of some server; with server 0 emptied, always a
    // key of server 1, whichever server the proxy asks first.
    net.send(c, &cmd(&["RANDOMKEY"]));
    let got = net.take(c);
    assert!(got == b"$1\r\na\r\n" || got == b"$1\r\nb\r\n", "{got:?}");
    net.servers[0].data.clear();
    for _ in 0..8 {
        net.send(c, &cmd(&["RANDOMKEY"]));
        assert_eq!(net.take(c), b"$1\r\na\r\n");
    }
    net.send(c, &cmd(&["FLUSHDB"]));
    assert_eq!(net.take(c), b"+OK\r\n");
    assert!(net.servers.iter().all(|s| s.data.is_empty()));
    net.send(c, &cmd(&["RANDOMKEY"]));
    assert_eq!(net.take(c), b"$-1\r\n");
    net.send(c, &cmd(&["DBSIZE"]));
    assert_eq!(net.take(c), b":0\r\n");
    // A server out of the pool holds no keys the pool places: it is left
    // out, and a pool with one server left gets the request whole.
    net.engine.hold_out(0, 0b01);
    net.send(c, &cmd(&["SET", "b", "2"]));
    net.take(c);
    net.send(c, &cmd(&["DBSIZE"]));
    assert_eq!(net.take(c), b":1\r\n");
    let dbsizes = |server: &FakeServer| server.log.iter().filter(|c| *c == "DBSIZE").count();
    assert_eq!((dbsizes(&net.servers[0]), dbsizes(&net.servers[1])), (2, 3));
}

/// Every key a proxy `SCAN` returns, and the cursors it went through.
fn scan_all(net: &mut Net, c: Handle) -> (Vec<String>, Vec<u64>) {
    let (mut keys, mut cursors) = (Vec::new(), Vec::new());
    let mut cursor = 0u64;
    for _ in 0..100 {
        net.send(c, &cmd(&["SCAN", &cursor.to_string(), "COUNT", "2"]));
        let reply = String::from_utf8(net.take(c)).unwrap();
        let lines: Vec<&str> = reply.split("\r\n").collect();
        assert_eq!(lines[0], "*2", "{reply}");
        cursor = lines[2].parse().unwrap();
        keys.extend(lines[4..].iter().skip(1).step_by(2).map(|k| k.to_string()));
        cursors.push(cursor);
        if cursor == 0 {
            return (keys, cursors);
        }
    }
    panic!("the scan did not end: {cursors:?}");
}

#[test]
fn scan_walks_every_server_once_with_a_cursor_that_carries_the_server() {
    let (mut net, c) = with_client(spec(3));
    let all: Vec<String> = ["a1", "a2", "a3", "b1", "b2", "c1", "c2", "c3", "c4"]
        .iter()
        .map(|k| k.to_string())
        .collect();
    for key in &all {
        net.send(c, &cmd(&["SET", key, "v"]));
    }
    net.take(c);
    let (mut keys, cursors) = scan_all(&mut net, c);
    keys.sort();
    assert_eq!(keys, all, "every key once: {cursors:?}");
    // Server 0 (c*: 4 keys, two a call), then 1 (a*: 3), then 2 (b*: 2):
    // the low byte says which server the scan is on.
    assert_eq!(cursors, [2 << 8, 1, 2 << 8 | 1, 2, 0]);
    // The server's own arguments pass through.
    assert!(net.servers[1].log.iter().any(|c| c == "SCAN"));
    // A server out of the pool is skipped; its keys are not lost to the
    // others' (they rehash), only not listed while it is out.
    net.engine.hold_out(0, 0b010);
    let (keys, _) = scan_all(&mut net, c);
    assert_eq!(keys.len(), 6, "{keys:?}");
    net.send(c, &cmd(&["SCAN", "7"]));
    assert_eq!(net.take(c), b"-ERR invalid cursor\r\n");
    net.send(c, &cmd(&["SCAN", "x"]));
    assert_eq!(net.take(c), b"-ERR invalid cursor\r\n");
}

#[test]
fn command_and_info_are_answered_by_the_proxy() {
    let (mut net, c) = with_client(spec(2));
    net.send(c, &cmd(&["COMMAND", "COUNT"]));
    let count: i64 = String::from_utf8(net.take(c)).unwrap()[1..]
        .trim()
        .parse()
        .unwrap();
    let served = crate::command::served().count() as i64;
    assert!(count == served && count > 150, "{count}");
    net.send(c, &cmd(&["COMMAND", "INFO", "get", "MSET", "monitor"]));
    assert_eq!(
        net.take(c),
        [
            &b"*3\r\n"[..],
            b"*10\r\n$3\r\nget\r\n:-2\r\n*0\r\n:1\r\n:1\r\n:1\r\n*0\r\n*0\r\n*0\r\n*0\r\n",
            b"*10\r\n$4\r\nmset\r\n:-3\r\n*0\r\n:1\r\n:-1\r\n:2\r\n*0\r\n*0\r\n*0\r\n*0\r\n",
            // Known but refused: not served, so not described.
            b"*-1\r\n",
        ]
        .concat()
    );
    net.send(c, &cmd(&["COMMAND", "DOCS"]));
    assert_eq!(net.take(c), b"*0\r\n");
    net.send(c, &cmd(&["MSET", "a", "1", "b", "2", "c", "3"]));
    net.take(c);
    net.send(c, &cmd(&["INFO"]));
    let info = String::from_utf8(net.take(c)).unwrap();
    // Server 0 holds b (avg_ttl 1000), server 1 a and c (2000).
    assert!(
        info.ends_with("\r\n# Keyspace\r\ndb0:keys=3,expires=3,avg_ttl=1666\r\n\r\n"),
        "{info}"
    );
    for line in [
        "# Server\r\n",
        "redis_mode:proxy\r\n",
        "connected_clients:1\r\n",
        // The three COMMANDs and MSET: as in Redis, INFO does not count
        // itself.
        "total_commands_processed:4\r\n",
        "# Proxy\r\n",
        "server1:addr=10.0.0.1:7001,name=s1,in_pool=1\r\n",
    ] {
        assert!(info.contains(line), "{line:?} in {info}");
    }
    net.engine.set_totals(crate::engine::info::Totals {
        cores: 2,
        connected_clients: 40,
        ops_per_sec: 1234,
        ..Default::default()
    });
    net.send(c, &cmd(&["INFO", "clients", "STATS"]));
    let info = String::from_utf8(net.take(c)).unwrap();
    assert!(info.starts_with("$"), "{info}");
    assert!(
        info.contains("# Clients\r\nconnected_clients:40\r\n"),
        "{info}"
    );
    assert!(
        info.contains("instantaneous_ops_per_sec:1234\r\n"),
        "{info}"
    );
    assert!(!info.contains("# Server"), "{info}");
}

#[test]
fn memcached_stats_are_the_proxys_own() {
    let (mut net, c) = with_client(memcache_spec(2));
    net.send(c, b"set a 0 0 1\r\nx\r\nget a b\r\nmg a v\r\ndelete a\r\n");
    net.take(c);
    net.send(c, b"stats\r\n");
    let stats = String::from_utf8(net.take(c)).unwrap();
    assert!(
        stats.starts_with("STAT pid ") && stats.ends_with("\r\nEND\r\n"),
        "{stats}"
    );
    for line in [
        "STAT cmd_get 2\r\n",
        "STAT cmd_set 1\r\n",
        "STAT cmd_delete 1\r\n",
        "STAT curr_connections 1\r\n",
        "STAT total_connections 1\r\n",
    ] {
        assert!(stats.contains(line), "{line:?} in {stats}");
    }
    // Its groups are the servers' to answer: an error, and the session
    // goes on.
    net.send(c, b"stats slabs\r\nversion\r\n");
    let got = String::from_utf8(net.take(c)).unwrap();
    assert!(
        got.starts_with("CLIENT_ERROR ") && got.ends_with("VERSION ferrox-0.1.0\r\n"),
        "{got}"
    );
}

/// Backend connections up to `server`.
fn backends_up(net: &Net, server: usize) -> usize {
    net.conns
        .values()
        .filter(|c| matches!(c, Conn::Backend { server: s, up: true, .. } if *s == server))
        .count()
}

#[test]
fn a_blocking_command_waits_on_a_connection_of_its_own() {
    let (mut net, c) = with_client(spec(2));
    let other = net.client();
    // 'q' lives on server 1.
    net.send(c, &cmd(&["BLPOP", "q", "0"]));
    // After it in c's pipeline: answered after it, in order.
    net.send(c, &cmd(&["PING"]));
    // The shared connection is not held up: another client goes on.
    net.send(other, &cmd(&["SET", "a", "v"]));
    assert_eq!(net.take(other), b"+OK\r\n");
    // No request timeout: it waits as long as the client asked.
    net.advance(10_000);
    assert_eq!(net.take(c), b"");
    assert_eq!(backends_up(&net, 1), 2, "the shared connection and c's own");
    net.send(other, &cmd(&["SET", "q", "job"]));
    assert_eq!(net.take(other), b"+OK\r\n");
    assert_eq!(net.take(c), b"*2\r\n$1\r\nq\r\n$3\r\njob\r\n+PONG\r\n");
    // Answered: its connection is closed.
    assert_eq!(backends_up(&net, 1), 1);
    // A client that goes while blocked takes its connection with it, and
    // the slot it held is reused safely.
    net.send(c, &cmd(&["BLPOP", "q", "0"]));
    assert_eq!(backends_up(&net, 1), 2);
    net.engine.handle_gone(net.client_tag(c), c, net.now);
    net.pump();
    assert_eq!(backends_up(&net, 1), 1);
    let d = net.client();
    net.send(d, &cmd(&["SET", "q", "next"]));
    net.send(d, &cmd(&["BLPOP", "q", "5"]));
    assert_eq!(net.take(d), b"+OK\r\n*2\r\n$1\r\nq\r\n$4\r\nnext\r\n");
    assert_eq!(backends_up(&net, 1), 1);
    // Its keys must share a server, as for every command with several.
    net.send(d, &cmd(&["BLPOP", "a", "b", "0"]));
    let got = String::from_utf8(net.take(d)).unwrap();
    assert!(got.contains("are on different servers"), "{got}");
    // A dead server fails it at once.
    net.servers[0].down = true;
    net.send(d, &cmd(&["BRPOP", "b", "0"]));
    let got = String::from_utf8(net.take(d)).unwrap();
    assert!(got.starts_with("-ERR ferrox: server s0"), "{got}");
}

#[test]
fn a_transaction_on_one_server_runs_whole_on_a_connection_of_its_own() {
    let (mut net, c) = with_client(spec(2));
    let other = net.client();
    // a and c live on server 1.
    net.send(c, &cmd(&["MULTI"]));
    net.send(c, &cmd(&["SET", "a", "1"]));
    // Queued by the proxy: nothing reaches a server before EXEC.
    net.send(other, &cmd(&["SET", "a", "0"]));
    net.send(c, &cmd(&["INCR", "c"]));
    net.send(c, &cmd(&["GET", "a"]));
    assert_eq!(net.take(c), b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n");
    assert!(!net.servers[1].log.contains(&"MULTI".to_string()));
    net.send(c, &cmd(&["EXEC"]));
    assert_eq!(net.take(c), b"*3\r\n+OK\r\n:1\r\n$1\r\n1\r\n");
    let log = &net.servers[1].log;
    let at = log.iter().position(|c| c == "MULTI").unwrap();
    assert_eq!(log[at..], ["MULTI", "SET", "INCR", "GET", "EXEC"]);
    assert_eq!(
        backends_up(&net, 1),
        1,
        "its connection closed once answered"
    );
    // A key on another server: refused, and EXEC discards the rest.
    net.send(c, &cmd(&["MULTI"]));
    net.send(c, &cmd(&["SET", "a", "2"]));
    net.send(c, &cmd(&["SET", "b", "2"]));
    net.send(c, &cmd(&["KEYS", "*"]));
    net.send(c, &cmd(&["EXEC"]));
    let got = String::from_utf8(net.take(c)).unwrap();
    let lines: Vec<&str> = got.split("\r\n").collect();
    assert_eq!(lines[..2], ["+OK", "+QUEUED"]);
    assert!(lines[2].starts_with("-CROSSSLOT "), "{got}");
    assert!(lines[3].contains("blocked by configuration"), "{got}");
    assert!(lines[4].starts_with("-EXECABORT"), "{got}");
    assert_eq!(net.servers[1].data[&b"a"[..]], b"1");
    // DISCARD, and the errors Redis gives out of place.
    net.send(c, &cmd(&["MULTI"]));
    net.send(c, &cmd(&["MULTI"]));
    net.send(c, &cmd(&["SET", "a", "3"]));
    net.send(c, &cmd(&["DISCARD"]));
    net.send(c, &cmd(&["EXEC"]));
    net.send(c, &cmd(&["DISCARD"]));
    net.send(c, &cmd(&["MULTI"]));
    net.send(c, &cmd(&["EXEC"]));
    assert_eq!(
        String::from_utf8(net.take(c)).unwrap(),
        "+OK\r\n-ERR MULTI calls can not be nested\r\n+QUEUED\r\n+OK\r\n\
         -ERR EXEC without MULTI\r\n-ERR DISCARD without MULTI\r\n+OK\r\n*0\r\n"
    );
    assert_eq!(net.servers[1].data[&b"a"[..]], b"1");
}

/// The newest backend connection to `server`: (handle, tag).
fn newest_backend(net: &Net, server: usize) -> (Handle, Tag) {
    net.conns
        .iter()
        .filter_map(|(h, c)| match c {
            Conn::Backend {
                tag,
                server: s,
                up: true,
                ..
            } if *s == server => Some((*h, *tag)),
            _ => None,
        })
        .max_by_key(|(h, _)| *h)
        .expect("a connection to the server")
}

#[test]
fn subscriptions_hold_connections_of_their_own_and_pass_messages_on() {
    let (mut net, c) = with_client(spec(2));
    // 'a' on server 1, 'b' on server 0; servers answer from the last.
    net.send(c, &cmd(&["SUBSCRIBE", "a", "b"]));
    assert_eq!(
        net.take(c),
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n\
          *3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"
    );
    // Subscribed: other commands are refused, PING answers as RESP2 does.
    net.send(c, &cmd(&["GET", "x"]));
    let got = String::from_utf8(net.take(c)).unwrap();
    assert!(got.contains("only (P|S)SUBSCRIBE"), "{got}");
    net.send(c, &cmd(&["PING"]));
    assert_eq!(net.take(c), b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    // A message a server pushes goes to the client as it comes.
    let (_, tag) = newest_backend(&net, 1);
    let message = b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n";
    assert_eq!(
        net.engine.handle_input(tag, message, net.now),
        message.len()
    );
    net.pump();
    assert_eq!(net.take(c), message);
    // A pattern goes to every server; its confirmation comes once.
    net.send(c, &cmd(&["PSUBSCRIBE", "n*"]));
    assert_eq!(
        net.take(c),
        b"*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:3\r\n"
    );
    net.send(c, &cmd(&["PUNSUBSCRIBE"]));
    net.send(c, &cmd(&["UNSUBSCRIBE"]));
    assert_eq!(
        net.take(c),
        b"*3\r\n$12\r\npunsubscribe\r\n$2\r\nn*\r\n:2\r\n\
          *3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n\
          *3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n"
    );
    // Out of subscribed mode: commands again.
    net.send(c, &cmd(&["SET", "a", "1"]));
    assert_eq!(net.take(c), b"+OK\r\n");
    // PUBLISH goes to the channel's server.
    net.send(c, &cmd(&["PUBLISH", "a", "x"]));
    assert!(net.servers[1].log.contains(&"PUBLISH".to_string()));
    net.take(c);
    // The client goes: its subscriber connections close with it.
    let before = backends_up(&net, 0) + backends_up(&net, 1);
    net.engine.handle_gone(net.client_tag(c), c, net.now);
    net.pump();
    assert_eq!(backends_up(&net, 0) + backends_up(&net, 1), before - 2);
}

#[test]
fn watch_holds_a_connection_of_its_own_and_exec_runs_there() {
    let (mut net, c) = with_client(spec(2));
    let other = net.client();
    // 'a' lives on server 1.
    net.send(c, &cmd(&["SET", "a", "1"]));
    net.send(c, &cmd(&["WATCH", "a"]));
    net.send(c, &cmd(&["GET", "a"]));
    assert_eq!(net.take(c), b"+OK\r\n+OK\r\n$1\r\n1\r\n");
    assert_eq!(
        backends_up(&net, 1),
        2,
        "the shared connection and the WATCH's"
    );
    net.send(c, &cmd(&["MULTI"]));
    net.send(c, &cmd(&["INCR", "n"]));
    net.send(c, &cmd(&["EXEC"]));
    // 'n' is on server 0, the watched key on server 1: refused whole.
    let got = String::from_utf8(net.take(c)).unwrap();
    assert!(got.ends_with("-EXECABORT ferrox: the transaction's keys are not on the server of the watched keys\r\n"), "{got}");
    assert_eq!(backends_up(&net, 1), 1, "the WATCH let go");
    // Unchanged since WATCH: the transaction runs on the WATCH's connection.
    net.send(c, &cmd(&["WATCH", "a"]));
    net.send(c, &cmd(&["MULTI"]));
    net.send(c, &cmd(&["SET", "a", "2"]));
    net.send(c, &cmd(&["EXEC"]));
    assert_eq!(net.take(c), b"+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n");
    assert_eq!(backends_up(&net, 1), 1);
    // Changed by another client in between: EXEC answers nil.
    net.send(c, &cmd(&["WATCH", "a"]));
    net.send(other, &cmd(&["SET", "a", "9"]));
    net.send(c, &cmd(&["MULTI"]));
    net.send(c, &cmd(&["GET", "a"]));
    net.send(c, &cmd(&["EXEC"]));
    assert_eq!(net.take(c), b"+OK\r\n+OK\r\n+QUEUED\r\n*-1\r\n");
    assert_eq!(net.servers[1].data[&b"a"[..]], b"9");
    // Watched keys must share a server; WATCH is refused inside MULTI;
    // UNWATCH lets the connection go.
    net.send(c, &cmd(&["WATCH", "a", "b"]));
    let got = String::from_utf8(net.take(c)).unwrap();
    assert!(got.starts_with("-CROSSSLOT "), "{got}");
    net.send(c, &cmd(&["WATCH", "a"]));
    assert_eq!(backends_up(&net, 1), 2);
    net.send(c, &cmd(&["UNWATCH"]));
    assert_eq!(net.take(c), b"+OK\r\n+OK\r\n");
    assert_eq!(backends_up(&net, 1), 1);
    net.send(c, &cmd(&["MULTI"]));
    net.send(c, &cmd(&["WATCH", "a"]));
    net.send(c, &cmd(&["DISCARD"]));
    assert_eq!(
        net.take(c),
        b"+OK\r\n-ERR WATCH inside MULTI is not allowed\r\n+OK\r\n"
    );
}

/// Redis Cluster pools against fake cluster nodes: redirections followed,
/// the slot map learnt, multi-key commands split per slot.
mod cluster_pools {
    use ferrox_route::cluster::key_slot;

    use super::*;

    /// A cluster pool with `seeds` seed nodes of a cluster of `nodes`
    /// (slots split evenly in node order), a 5 s timeout, and a client.
    fn cluster_net(seeds: usize, nodes: usize) -> (Net, Handle) {
        let mut net = Net::new(PoolSpec {
            cluster: true,
            timeout: Some(5_000_000),
            ..spec(seeds)
        });
        while net.servers.len() < nodes {
            net.servers.push(FakeServer::default());
        }
        for (i, server) in net.servers.iter_mut().enumerate() {
            server.cluster = Some(FakeCluster::new(i, nodes));
        }
        let c = net.client();
        (net, c)
    }

    fn redirects(net: &Net) -> usize {
        net.servers
            .iter()
            .map(|s| s.cluster.as_ref().unwrap().redirects)
            .sum()
    }

    fn owner(net: &Net, key: &str) -> usize {
        net.servers[0].cluster.as_ref().unwrap().owner[key_slot(key.as_bytes()) as usize]
    }

    #[test]
    fn moved_is_followed_then_the_map_sends_keys_straight_to_their_node() {
        let (mut net, c) = cluster_net(1, 3);
        let keys: Vec<String> = (0..30).map(|i| format!("key:{i}")).collect();
        for k in &keys {
            net.send(c, &cmd(&["SET", k, &format!("v{k}")]));
        }
        // The seed redirected most of them; the client saw none of it.
        assert_eq!(net.take(c), b"+OK\r\n".repeat(keys.len()));
        assert!(redirects(&net) > 0);
        for k in &keys {
            assert!(
                net.servers[owner(&net, k)].data.contains_key(k.as_bytes()),
                "{k}"
            );
        }
        // MGET over the three nodes: one piece per slot (a node refuses
        // keys of several slots), merged back in key order.
        let mut mget = vec!["MGET"];
        mget.extend(keys.iter().map(String::as_str));
        net.send(c, &cmd(&mget));
        let mut expected = format!("*{}\r\n", keys.len()).into_bytes();
        for k in &keys {
            resp::write_bulk(&mut expected, format!("v{k}").as_bytes());
        }
        assert_eq!(net.take(c), expected);
        // The map, asked for once due, sends every key to its node.
        net.advance(1);
        assert!(net.servers[0].log.iter().any(|c| c == "CLUSTER"));
        let before = redirects(&net);
        for k in &keys {
            net.send(c, &cmd(&["GET", k]));
        }
        assert_eq!(
            redirects(&net),
            before,
            "no redirection once the map is known"
        );
        net.take(c);
        // Every primary once in a fan-out.
        net.send(c, &cmd(&["DBSIZE"]));
        assert_eq!(net.take(c), b":30\r\n");
    }

    #[test]
    fn a_migrating_slot_is_followed_with_asking_and_its_end_with_moved() {
        let (mut net, c) = cluster_net(3, 3);
        net.advance(1);
        let key = "moving";
        let slot = key_slot(key.as_bytes());
        let from = owner(&net, key);
        let to = (from + 1) % 3;
        // The key already moved; the slot is still the old node's.
        net.servers[to].data.insert(key.into(), b"there".to_vec());
        net.servers[from].cluster.as_mut().unwrap().migrating = Some((slot, to));
        net.send(c, &cmd(&["GET", key]));
        assert_eq!(net.take(c), b"$5\r\nthere\r\n");
        assert!(net.servers[to].log.iter().any(|c| c == "ASKING"));
        // An ASK leaves the map as it is: the next GET asks `from` again.
        net.send(c, &cmd(&["GET", key]));
        assert_eq!(net.take(c), b"$5\r\nthere\r\n");
        assert_eq!(net.servers[from].cluster.as_ref().unwrap().redirects, 2);
        // The migration ends: the old node redirects for good, once.
        for server in &mut net.servers {
            let cluster = server.cluster.as_mut().unwrap();
            cluster.owner[slot as usize] = to;
            cluster.migrating = None;
        }
        for _ in 0..3 {
            net.send(c, &cmd(&["GET", key]));
            assert_eq!(net.take(c), b"$5\r\nthere\r\n");
        }
        assert_eq!(net.servers[from].cluster.as_ref().unwrap().redirects, 3);
    }

    #[test]
    fn a_blocking_command_redirected_waits_on_a_new_connection_of_its_own() {
        let (mut net, c) = cluster_net(1, 3);
        // Before the map is known the seed gets it, and redirects.
        let key = (0..100)
            .map(|i| format!("q{i}"))
            .find(|k| owner(&net, k) != 0)
            .unwrap();
        let node = owner(&net, &key);
        net.servers[node]
            .data
            .insert(key.clone().into(), b"item".to_vec());
        net.send(c, &cmd(&["BLPOP", &key, "0"]));
        assert_eq!(
            net.take(c),
            [format!("*2\r\n${}\r\n{key}\r\n$4\r\nitem\r\n", key.len()).as_bytes(),].concat()
        );
        assert_eq!(net.servers[0].cluster.as_ref().unwrap().redirects, 1);
        assert!(net.servers[node].log.contains(&"BLPOP".to_string()));
    }

    #[test]
    fn a_request_for_a_dead_primary_waits_for_the_failover() {
        let (mut net, c) = cluster_net(3, 3);
        net.advance(1);
        let key = (0..100)
            .map(|i| format!("f{i}"))
            .find(|k| owner(&net, k) == 1)
            .unwrap();
        let slot = key_slot(key.as_bytes()) as usize;
        // Node 1 dies; its replica (node 2 here) has the data.
        super::reconnecting::kill(&mut net, 1);
        net.servers[2]
            .data
            .insert(key.clone().into(), b"kept".to_vec());
        net.send(c, &cmd(&["GET", &key]));
        net.send(c, &cmd(&["SET", "other", "x"]));
        // The GET waits (its reply holds back the SET's, in order).
        assert_eq!(net.take(c), b"");
        // The cluster promotes the replica: node 2 serves node 1's slots.
        for server in &mut net.servers {
            let cluster = server.cluster.as_mut().unwrap();
            for owner in cluster.owner.iter_mut().filter(|o| **o == 1) {
                *owner = 2;
            }
        }
        assert_eq!(net.servers[0].cluster.as_ref().unwrap().owner[slot], 2);
        // The next refresh learns it, and the GET goes there.
        net.advance(1_000_000);
        net.advance(1_000_000);
        assert_eq!(net.take(c), b"$4\r\nkept\r\n+OK\r\n");
        // Without a failover, a parked request fails at the pool's timeout.
        super::reconnecting::kill(&mut net, 2);
        let key2 = (0..100)
            .map(|i| format!("g{i}"))
            .find(|k| owner(&net, k) == 2)
            .unwrap();
        net.send(c, &cmd(&["GET", &key2]));
        for _ in 0..6 {
            net.advance(1_000_000);
        }
        let reply = String::from_utf8(net.take(c)).unwrap();
        assert!(
            reply.contains("failed and no node took over its slots in time"),
            "{reply}"
        );
    }

    #[test]
    fn a_redirection_loop_ends_with_the_redirection_as_the_reply() {
        let (mut net, c) = cluster_net(2, 2);
        let key = "loop";
        let slot = key_slot(key.as_bytes()) as usize;
        // Each node says the other serves the slot.
        net.servers[0].cluster.as_mut().unwrap().owner[slot] = 1;
        net.servers[1].cluster.as_mut().unwrap().owner[slot] = 0;
        net.send(c, &cmd(&["GET", key]));
        let reply = net.take(c);
        assert!(
            reply.starts_with(b"-MOVED "),
            "{}",
            String::from_utf8_lossy(&reply)
        );
        assert_eq!(
            redirects(&net),
            1 + super::super::cluster::MAX_REDIRECTS as usize
        );
        // Other keys are unaffected.
        net.send(c, &cmd(&["SET", "other", "1"]));
        assert_eq!(net.take(c), b"+OK\r\n");
    }
}

#[test]
fn wait_asks_every_server_for_the_least_count_within_a_bounded_time() {
    let (mut net, c) = with_client(spec(3));
    for (server, replicas) in net.servers.iter_mut().zip([2, 1, 2]) {
        server.replicas = replicas;
    }
    // spec() has a 1 ms timeout: WAIT may hold a shared connection for
    // half of it at most (1 ms, the least it can ask).
    net.send(c, &cmd(&["WAIT", "2", "0"]));
    assert_eq!(net.take(c), b":1\r\n");
    assert!(net.servers.iter().all(|s| s.waited == Some((2, 1))));
    let (mut net, c) = with_client(PoolSpec {
        timeout: None,
        ..spec(2)
    });
    net.send(c, &cmd(&["WAIT", "1", "50"]));
    assert_eq!(net.take(c), b":0\r\n");
    assert!(net.servers.iter().all(|s| s.waited == Some((1, 50))));
    net.send(c, &cmd(&["WAIT", "1", "0"]));
    net.take(c);
    assert!(
        net.servers.iter().all(|s| s.waited == Some((1, 1000))),
        "forever is 1 s"
    );
    net.send(c, &cmd(&["WAIT", "x", "0"]));
    assert_eq!(
        net.take(c),
        b"-ERR value is not an integer or out of range\r\n"
    );
    net.send(c, &cmd(&["WAIT", "1"]));
    let reply = net.take(c);
    assert!(
        reply.starts_with(b"-ERR ferrox: wrong number of arguments"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
}

#[test]
fn sharded_subscriptions_count_apart_and_spublish_goes_to_the_channels_server() {
    let (mut net, c) = with_client(spec(2));
    // 'a' on server 1, 'b' on server 0.
    net.send(c, &cmd(&["SUBSCRIBE", "a"]));
    net.send(c, &cmd(&["SSUBSCRIBE", "a", "b"]));
    assert_eq!(
        net.take(c),
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n\
          *3\r\n$10\r\nssubscribe\r\n$1\r\na\r\n:1\r\n\
          *3\r\n$10\r\nssubscribe\r\n$1\r\nb\r\n:2\r\n"
    );
    assert!(net.servers[0].log.contains(&"SSUBSCRIBE".to_string()));
    assert!(net.servers[1].log.contains(&"SSUBSCRIBE".to_string()));
    // A shard message passes on as it comes.
    let (_, tag) = newest_backend(&net, 0);
    let message = b"*3\r\n$8\r\nsmessage\r\n$1\r\nb\r\n$2\r\nhi\r\n";
    assert_eq!(
        net.engine.handle_input(tag, message, net.now),
        message.len()
    );
    net.pump();
    assert_eq!(net.take(c), message);
    net.send(c, &cmd(&["SUNSUBSCRIBE"]));
    assert_eq!(
        net.take(c),
        b"*3\r\n$12\r\nsunsubscribe\r\n$1\r\na\r\n:1\r\n\
          *3\r\n$12\r\nsunsubscribe\r\n$1\r\nb\r\n:0\r\n"
    );
    net.send(c, &cmd(&["UNSUBSCRIBE"]));
    assert_eq!(
        net.take(c),
        b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n"
    );
    // SPUBLISH is routed by its channel, as a key.
    net.send(c, &cmd(&["SPUBLISH", "b", "x"]));
    assert!(net.servers[0].log.contains(&"SPUBLISH".to_string()));
    assert!(!net.servers[1].log.contains(&"SPUBLISH".to_string()));
}

/// Users with Redis ACL rules beside the pool's default user.
mod users {
    use super::*;
    use crate::acl::Acl;
    use crate::UserSpec;

    fn user(name: &str, passwords: &[&str], acl: &str) -> UserSpec {
        UserSpec {
            name: name.into(),
            passwords: passwords.iter().map(|p| p.as_bytes().to_vec()).collect(),
            acl: Box::new(Acl::compile(acl).unwrap()),
        }
    }

    fn pool() -> PoolSpec {
        PoolSpec {
            auth: Some(b"sesame".to_vec()),
            users: vec![
                user("reporting", &["r1"], "+@read +@transaction ~report:*"),
                user("app", &["old", "new"], "allcommands allkeys -@dangerous"),
            ],
            ..spec(2)
        }
    }

    /// A net whose servers take the pool's password, and a client.
    fn users_net(spec: PoolSpec) -> (Net, Handle) {
        let password = spec.auth.clone();
        let (mut net, c) = with_client(spec);
        for server in &mut net.servers {
            server.password = password.clone();
        }
        (net, c)
    }

    #[test]
    fn a_user_runs_what_its_rules_allow_and_nothing_else() {
        let (mut net, c) = users_net(pool());
        net.send(c, &cmd(&["GET", "report:1"]));
        assert_eq!(net.take(c), b"-NOAUTH Authentication required.\r\n");
        net.send(c, &cmd(&["AUTH", "reporting", "wrong"]));
        net.send(c, &cmd(&["AUTH", "nobody", "r1"]));
        net.send(c, &cmd(&["AUTH", "reporting", "r1"]));
        assert_eq!(
            net.take(c),
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n\
              -WRONGPASS invalid username-password pair or user is disabled.\r\n\
              +OK\r\n"
        );
        // Reads of its keys only; the refusals as Redis words them.
        net.send(c, &cmd(&["GET", "report:1"]));
        net.send(c, &cmd(&["GET", "user:1"]));
        net.send(c, &cmd(&["set", "report:1", "x"]));
        net.send(c, &cmd(&["MGET", "report:1", "report:2"]));
        net.send(c, &cmd(&["MGET", "report:1", "user:2"]));
        assert_eq!(
            net.take(c),
            b"$-1\r\n\
              -NOPERM this user has no permissions to access one of the keys used as arguments\r\n\
              -NOPERM this user has no permissions to run the 'set' command\r\n\
              *2\r\n$-1\r\n$-1\r\n\
              -NOPERM this user has no permissions to access one of the keys used as arguments\r\n"
        );
        // Nothing refused reached a server; each refusal is counted.
        let logged: usize = net.servers.iter().map(|s| s.log.len()).sum();
        assert_eq!(logged, 3, "the GET and the MGET's two pieces");
        assert_eq!(net.engine.pools().next().unwrap().counters.acl_refused, 3);
        // A transaction's commands are checked as they are queued.
        net.send(c, &cmd(&["MULTI"]));
        net.send(c, &cmd(&["DEL", "report:1"]));
        net.send(c, &cmd(&["EXEC"]));
        let got = String::from_utf8(net.take(c)).unwrap();
        assert!(
            got.contains("-NOPERM this user has no permissions to run the 'del' command"),
            "{got}"
        );
        assert!(
            got.ends_with("-EXECABORT Transaction discarded because of previous errors.\r\n"),
            "{got}"
        );
        // AUTH again, as the default user: everything.
        net.send(c, &cmd(&["AUTH", "sesame"]));
        net.send(c, &cmd(&["SET", "user:1", "x"]));
        assert_eq!(net.take(c), b"+OK\r\n+OK\r\n");
    }

    #[test]
    fn hello_authenticates_users_and_every_password_of_a_rotation_works() {
        let (mut net, c) = users_net(pool());
        net.send(c, &cmd(&["HELLO", "3", "AUTH", "app", "new"]));
        assert!(net.take(c).starts_with(b"%7\r\n"));
        net.send(c, &cmd(&["SET", "a", "1"]));
        net.send(c, &cmd(&["FLUSHALL"]));
        assert_eq!(
            net.take(c),
            b"+OK\r\n-NOPERM this user has no permissions to run the 'flushall' command\r\n"
        );
        let d = net.client();
        net.send(d, &cmd(&["AUTH", "app", "old"]));
        net.send(d, &cmd(&["HELLO", "2", "AUTH", "app", "nope"]));
        assert_eq!(
            net.take(d),
            b"+OK\r\n-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        );
    }

    #[test]
    fn a_pool_with_users_and_no_password_has_no_default_user() {
        let (mut net, c) = with_client(PoolSpec {
            auth: None,
            ..pool()
        });
        net.send(c, &cmd(&["GET", "a"]));
        net.send(c, &cmd(&["AUTH", "default", "anything"]));
        net.send(c, &cmd(&["AUTH", "anything"]));
        assert_eq!(
            net.take(c),
            b"-NOAUTH Authentication required.\r\n\
              -WRONGPASS invalid username-password pair or user is disabled.\r\n\
              -ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n"
        );
    }

    #[test]
    fn memcached_clients_authenticate_with_a_set_and_meet_the_same_rules() {
        let (mut net, c) = with_client(PoolSpec {
            users: vec![user("reader", &["pw"], "+@read ~s:*")],
            ..memcache_spec(1)
        });
        net.servers[0].data.insert(b"s:1".to_vec(), b"one".to_vec());
        net.send(c, b"get s:1\r\n");
        net.send(c, b"set auth 0 0 9\r\nreader no\r\n");
        net.send(c, b"set auth 0 0 9\r\nreader pw\r\n");
        net.send(c, b"get s:1\r\n");
        net.send(c, b"get other\r\n");
        net.send(c, b"set s:1 0 0 1\r\nx\r\n");
        assert_eq!(
            String::from_utf8(net.take(c)).unwrap(),
            "CLIENT_ERROR unauthenticated\r\n\
             CLIENT_ERROR authentication failure\r\n\
             STORED\r\n\
             VALUE s:1 0 3\r\none\r\nEND\r\n\
             CLIENT_ERROR ferrox: this user has no permissions to access one of the keys\r\n\
             CLIENT_ERROR ferrox: this user has no permissions to run this command\r\n"
        );
        assert_eq!(
            net.servers[0].log,
            ["get"],
            "nothing else reached the server"
        );
        // A binary client must authenticate with the text protocol first.
        let d = net.client();
        net.send(d, &binary_packet(0x00, &[], b"s:1", b"", 5));
        let responses = binary_responses(&net.take(d));
        assert_eq!((responses[0].1, responses[0].2), (0x20, 5));
    }

    #[test]
    fn a_reload_gives_users_their_new_rules_and_removed_users_must_authenticate_again() {
        let (mut net, c) = users_net(pool());
        let d = net.client();
        net.send(c, &cmd(&["AUTH", "reporting", "r1"]));
        net.send(d, &cmd(&["AUTH", "app", "new"]));
        net.take(c);
        net.take(d);
        // reporting may now write its keys; app is gone.
        let mut next = pool();
        next.users = vec![user("reporting", &["r1"], "+@read +@write ~report:*")];
        net.engine.reconfigure(vec![next]);
        net.send(c, &cmd(&["SET", "report:1", "x"]));
        assert_eq!(net.take(c), b"+OK\r\n");
        net.send(d, &cmd(&["GET", "a"]));
        assert_eq!(net.take(d), b"-NOAUTH Authentication required.\r\n");
    }
}

/// A pool's data validation: requests that break a rule are refused with
/// the rule's name, and nothing reaches a server.
mod validation {
    use super::*;

    fn rules() -> ferrox_config::Validate {
        ferrox_config::Validate {
            key_patterns: vec!["app:*".into()],
            max_key_bytes: Some(16),
            max_value_bytes: Some(8),
            max_keys: Some(3),
            require_ttl: true,
            max_ttl_s: Some(3600),
        }
    }

    #[test]
    fn redis_requests_are_held_to_the_pools_rules() {
        let (mut net, c) = with_client(PoolSpec {
            validate: rules(),
            ..spec(2)
        });
        for (request, reply) in [
            (cmd(&["SET", "app:1", "v", "EX", "60"]), "+OK"),
            (cmd(&["GET", "app:1"]), "$1\r\nv"),
            (
                cmd(&["GET", "other"]),
                "-ERR ferrox: validate key_patterns: key 'other' matches none of app:*",
            ),
            (
                cmd(&["GET", "app:0123456789abc"]),
                "-ERR ferrox: validate max_key_bytes: a key of 17 bytes, longer than 16",
            ),
            (
                cmd(&["MGET", "app:1", "app:2", "app:3", "app:4"]),
                "-ERR ferrox: validate max_keys: 4 keys, at most 3",
            ),
            (
                cmd(&["SET", "app:1", "123456789", "EX", "60"]),
                "-ERR ferrox: validate max_value_bytes: a value of 9 bytes, longer than 8",
            ),
            (
                cmd(&["LPUSH", "app:l", "a", "123456789"]),
                "-ERR ferrox: validate max_value_bytes: a value of 9 bytes, longer than 8",
            ),
            (
                cmd(&["SET", "app:1", "v"]),
                "-ERR ferrox: validate require_ttl: 'SET' without EX, PX, EXAT, PXAT or KEEPTTL",
            ),
            (
                cmd(&["SET", "app:1", "v", "EX", "3601"]),
                "-ERR ferrox: validate max_ttl_s: an expiry over 3600 s",
            ),
            (
                cmd(&["MSET", "app:1", "v"]),
                "-ERR ferrox: validate require_ttl: 'MSET' cannot set an expiry; use SET with EX",
            ),
            (
                cmd(&["EXPIRE", "app:1", "7200"]),
                "-ERR ferrox: validate max_ttl_s: an expiry over 3600 s",
            ),
        ] {
            net.send(c, &request);
            let got = String::from_utf8(net.take(c)).unwrap();
            assert_eq!(
                got.trim_end(),
                reply,
                "{}",
                String::from_utf8_lossy(&request)
            );
        }
        let logged: Vec<String> = net.servers.iter().flat_map(|s| s.log.clone()).collect();
        assert_eq!(
            logged.len(),
            2,
            "only the SET and the GET reached a server: {logged:?}"
        );
        let counters = &net.engine.pools().next().unwrap().counters;
        assert_eq!((counters.validation_refused, counters.acl_refused), (9, 0));
        // In a transaction, a refusal discards it as Redis would.
        net.send(c, &cmd(&["MULTI"]));
        net.send(c, &cmd(&["SET", "app:1", "v"]));
        net.send(c, &cmd(&["EXEC"]));
        let got = String::from_utf8(net.take(c)).unwrap();
        assert!(
            got.ends_with("-EXECABORT Transaction discarded because of previous errors.\r\n"),
            "{got}"
        );
    }

    #[test]
    fn memcached_requests_text_and_binary_are_held_to_the_pools_rules() {
        let (mut net, c) = with_client(PoolSpec {
            validate: rules(),
            ..memcache_spec(2)
        });
        net.send(c, b"set app:1 0 60 1\r\nv\r\n");
        net.send(c, b"set app:1 0 0 1\r\nv\r\n");
        net.send(c, b"set other 0 60 1\r\nv\r\n");
        net.send(c, b"set app:1 0 60 9\r\n123456789\r\n");
        net.send(c, b"set app:1 0 0 1 noreply\r\nv\r\n");
        net.send(c, b"get app:1 app:2 app:3 app:4\r\n");
        net.send(c, b"get app:1\r\n");
        assert_eq!(
            String::from_utf8(net.take(c)).unwrap(),
            "STORED\r\n\
             CLIENT_ERROR ferrox: validate require_ttl: a store without an expiry (exptime 0)\r\n\
             CLIENT_ERROR ferrox: validate key_patterns: key 'other' matches none of app:*\r\n\
             CLIENT_ERROR ferrox: validate max_value_bytes: a value of 9 bytes, longer than 8\r\n\
             CLIENT_ERROR ferrox: validate max_keys: 4 keys, at most 3\r\n\
             VALUE app:1 0 1\r\nv\r\nEND\r\n"
        );
        // Binary: the error as a binary response, status "invalid
        // arguments", the request's opaque.
        let set = binary_packet(0x11, &[0, 0, 0, 0, 0, 0, 0, 0], b"app:1", b"v", 42);
        net.send(c, &set);
        let responses = binary_responses(&net.take(c));
        assert_eq!(responses.len(), 1);
        assert_eq!((responses[0].1, responses[0].2), (0x04, 42));
        assert!(String::from_utf8_lossy(&responses[0].4).contains("validate require_ttl"));
    }
}

/// Sliding-window rate limits, as clients meet them.
mod rate_limits {
    use ferrox_config::{RateBy, RateLimit};

    use super::*;

    fn limit(
        by: RateBy,
        commands: &[&str],
        requests: Option<u64>,
        bytes: Option<usize>,
    ) -> RateLimit {
        RateLimit {
            by,
            commands: commands.iter().map(|c| c.to_string()).collect(),
            requests,
            bytes,
            per_ms: 1000,
        }
    }

    #[test]
    fn a_client_over_its_limit_is_refused_until_the_span_passes() {
        let (mut net, c) = with_client(PoolSpec {
            rate_limits: vec![
                limit(RateBy::Client, &[], Some(3), None),
                limit(RateBy::Command, &["SET"], Some(1), None),
            ],
            ..spec(2)
        });
        let d = net.client();
        net.send(c, &cmd(&["SET", "a", "1"]));
        net.send(c, &cmd(&["SET", "b", "1"]));
        net.send(c, &cmd(&["GET", "a"]));
        net.send(c, &cmd(&["GET", "a"]));
        net.send(c, &cmd(&["GET", "a"]));
        assert_eq!(
            String::from_utf8(net.take(c)).unwrap(),
            "+OK\r\n\
             -ERR ferrox: rate limit exceeded (by command SET: 1 requests per 1000 ms)\r\n\
             $1\r\n1\r\n\
             $1\r\n1\r\n\
             -ERR ferrox: rate limit exceeded (by client: 3 requests per 1000 ms)\r\n",
            "a refused request counts nowhere: the client's window holds 3"
        );
        // Another client has its own window (but shares SET's).
        net.send(d, &cmd(&["GET", "a"]));
        net.send(d, &cmd(&["SET", "c", "1"]));
        assert_eq!(
            String::from_utf8(net.take(d)).unwrap(),
            "$1\r\n1\r\n-ERR ferrox: rate limit exceeded (by command SET: 1 requests per 1000 ms)\r\n"
        );
        // A span later, admitted again.
        net.advance(1_200_000);
        net.send(c, &cmd(&["GET", "a"]));
        assert_eq!(net.take(c), b"$1\r\n1\r\n");
        assert_eq!(net.engine.pools().next().unwrap().counters.rate_limited, 3);
    }

    #[test]
    fn reply_bytes_count_and_memcached_clients_get_server_error() {
        let (mut net, c) = with_client(PoolSpec {
            rate_limits: vec![limit(RateBy::Key, &[], None, Some(120))],
            ..memcache_spec(1)
        });
        // 30 bytes of request, then a reply of 30 + value.
        net.send(
            c,
            b"set k 0 0 40\r\n0123456789012345678901234567890123456789\r\n",
        );
        net.send(c, b"get k\r\n");
        net.send(c, b"get k\r\n");
        let got = String::from_utf8(net.take(c)).unwrap();
        assert!(got.starts_with("STORED\r\nVALUE k 0 40\r\n"), "{got}");
        assert!(
            got.ends_with("SERVER_ERROR rate limit exceeded (by key: 120 bytes per 1000 ms)\r\n"),
            "the set (54), the get (7) and its reply (59) used the span's 120 bytes: {got}"
        );
        // Other keys are counted apart.
        net.send(c, b"get other\r\n");
        assert_eq!(net.take(c), b"END\r\n");
    }
}

/// Overload watermarks: past one, work is refused at once, never queued
/// without bound.
mod overload {
    use ferrox_config::Overload;

    use super::*;

    #[test]
    fn requests_past_the_in_flight_watermark_are_refused_at_once() {
        // 'a' lives on server 1, which never answers.
        let (mut net, c) = muted(
            PoolSpec {
                timeout: None,
                ..spec(2)
            },
            1,
        );
        net.engine.set_overload(Overload {
            max_in_flight: Some(2),
            ..Overload::default()
        });
        let d = net.client();
        net.send(c, &cmd(&["GET", "a"]));
        net.send(c, &cmd(&["GET", "a"]));
        // A third request on any connection: refused, not queued.
        net.send(d, &cmd(&["GET", "b"]));
        assert_eq!(net.take(d), b"-ERR ferrox: overloaded\r\n");
        assert_eq!(net.servers[1].log.len(), 2);
        assert!(net.servers[0].log.is_empty());
        assert_eq!(net.engine.load().0, 2);
        let pool = net.engine.pools().next().unwrap();
        assert_eq!(pool.counters.overload_refused, 1);
        // Once the client goes, its requests no longer count.
        net.engine.handle_gone(net.client_tag(c), c, net.now);
        assert_eq!(net.engine.load().0, 0);
        net.send(d, &cmd(&["GET", "b"]));
        assert_eq!(net.take(d), b"$-1\r\n");
    }

    #[test]
    fn an_idle_session_gives_back_what_a_burst_grew() {
        let (mut net, c) = with_client(spec(2));
        for server in &mut net.servers {
            server.data.insert(b"big".to_vec(), vec![b'x'; 10_000]);
        }
        let idle = net.engine.session_buffers();
        net.send(c, &cmd(&["GET", "big"]).repeat(16));
        assert_eq!(net.take(c).len(), 16 * (10_000 + 10));
        let burst = net.engine.session_buffers();
        assert!(burst > 100_000, "{burst}");
        // Once idle for a trim period, it holds little again.
        net.advance(super::super::TRIM_EVERY);
        let after = net.engine.session_buffers();
        assert!(
            after <= idle + 16 * 1024,
            "{idle} idle, {after} after the burst"
        );
        // And serves the same as before.
        net.send(c, &cmd(&["GET", "big"]));
        assert_eq!(net.take(c).len(), 10_000 + 10);
    }

    #[test]
    fn a_full_server_queue_and_the_connection_watermark_refuse_too() {
        let (mut net, c) = muted(
            PoolSpec {
                timeout: None,
                ..memcache_spec(2)
            },
            1,
        );
        net.engine.set_overload(Overload {
            max_backend_queue: Some(1),
            max_connections: Some(1),
            ..Overload::default()
        });
        // 'a' on server 1 (muted): the second request finds its queue full.
        net.send(c, b"get a\r\nget a\r\n");
        let tag = net.client_tag(c);
        assert_eq!(
            net.engine.pools().next().unwrap().counters.overload_refused,
            1
        );
        assert_eq!(net.servers[1].log.len(), 1);
        // A second client connection is refused.
        assert_eq!(net.engine.accept(0, 99), None);
        net.engine.handle_gone(tag, c, net.now);
        assert!(net.engine.accept(0, 100).is_some());
    }

    #[test]
    fn replies_held_for_clients_past_the_buffer_watermark_refuse_new_requests() {
        let (mut net, c) = muted(
            PoolSpec {
                timeout: None,
                ..spec(2)
            },
            1,
        );
        net.engine.set_overload(Overload {
            max_client_buffer_memory: Some(4),
            ..Overload::default()
        });
        net.servers[0]
            .data
            .insert(b"b".to_vec(), b"held back".to_vec());
        // 'b' is answered but held behind 'a', which never is.
        net.send(c, &cmd(&["GET", "a"]));
        net.send(c, &cmd(&["GET", "b"]));
        let d = net.client();
        // Measured once per 10 ms.
        net.advance(20_000);
        net.send(d, &cmd(&["PING"]));
        assert_eq!(net.take(d), b"-ERR ferrox: overloaded\r\n");
        assert!(net.engine.load().1 >= 15, "{:?}", net.engine.load());
    }
}

/// Replicas: reads by the read policy, writes to the primary, and the
/// reads of a replica that dies sent again rather than failed.
mod replicas {
    use ferrox_config::ReadPolicy;

    use super::reconnecting::kill;
    use super::*;

    /// Two shards (a key's first byte, even: shard 0, odd: shard 1) and a
    /// replica of shard 0 (server 2), read by `policy`; a client.
    fn replica_net(policy: ReadPolicy) -> (Net, Handle) {
        let mut spec = PoolSpec {
            read_policy: policy,
            placement: Box::new(FirstByte(vec![true; 2])),
            ..spec(3)
        };
        spec.servers[2].role = Role::Replica(0);
        spec.servers[2].name = "s0/replica".into();
        let mut net = Net::new(spec);
        net.servers[2]
            .data
            .insert(b"b".to_vec(), b"from-replica".to_vec());
        let c = net.client();
        (net, c)
    }

    fn pool_counters(net: &Net) -> PoolCounters {
        net.engine.pools().next().unwrap().counters.clone()
    }

    #[test]
    fn reads_go_to_a_replica_and_writes_to_the_primary() {
        let (mut net, c) = replica_net(ReadPolicy::PreferReplica);
        net.send(c, &cmd(&["SET", "b", "from-primary"]));
        assert_eq!(net.take(c), b"+OK\r\n");
        assert_eq!(net.servers[0].data[&b"b"[..]], b"from-primary");
        assert!(!net.servers[2].log.contains(&"SET".to_string()));
        net.send(c, &cmd(&["GET", "b"]));
        assert_eq!(net.take(c), b"$12\r\nfrom-replica\r\n");
        // Split per shard: shard 0's piece from the replica.
        net.send(c, &cmd(&["SET", "a", "1"]));
        net.send(c, &cmd(&["MGET", "b", "a"]));
        assert_eq!(
            net.take(c),
            b"+OK\r\n*2\r\n$12\r\nfrom-replica\r\n$1\r\n1\r\n"
        );
        // A write that reads (INCR) is a write.
        net.send(c, &cmd(&["INCR", "n"]));
        assert_eq!(net.take(c), b":1\r\n");
        assert!(net.servers[0].data.contains_key(&b"n"[..]));
        // The primary policy reads the primary.
        let (mut net, c) = replica_net(ReadPolicy::Primary);
        net.send(c, &cmd(&["GET", "b"]));
        assert_eq!(net.take(c), b"$-1\r\n");
        assert!(net.servers[2].log.is_empty(), "never connected");
    }

    #[test]
    fn a_replica_that_dies_costs_no_reads() {
        let (mut net, c) = replica_net(ReadPolicy::PreferReplica);
        net.send(c, &cmd(&["SET", "b", "from-primary"]));
        net.take(c);
        // Two reads wait on the replica when it is killed.
        net.servers[2].hold = true;
        net.send(c, &cmd(&["GET", "b"]));
        net.send(c, &cmd(&["GET", "b"]));
        assert!(net.take_peek(c).is_empty());
        kill(&mut net, 2);
        let primary = b"$12\r\nfrom-primary\r\n";
        assert_eq!(net.take(c), [&primary[..], primary].concat());
        assert_eq!(pool_counters(&net).replica_retries, 2);
        assert_eq!(pool_counters(&net).errors, 0);
        // Left out of reads: the next goes to the primary at once.
        assert!(!net.engine.is_live(0, 2));
        net.send(c, &cmd(&["GET", "b"]));
        assert_eq!(net.take(c), primary);
        // Back after the retry time, it takes reads again.
        net.servers[2].down = false;
        net.servers[2].hold = false;
        net.advance(1_000_001);
        assert!(net.engine.is_live(0, 2));
        net.send(c, &cmd(&["GET", "b"]));
        assert_eq!(net.take(c), b"$12\r\nfrom-replica\r\n");
    }

    #[test]
    fn the_replica_policy_fails_reads_when_no_replica_is_up() {
        let (mut net, c) = replica_net(ReadPolicy::Replica);
        net.send(c, &cmd(&["GET", "b"]));
        assert_eq!(net.take(c), b"$12\r\nfrom-replica\r\n");
        // Held out by the health checks (bit 2: the replica).
        net.engine.hold_out(0, 0b100);
        net.send(c, &cmd(&["GET", "b"]));
        assert_eq!(
            net.take(c),
            b"-ERR ferrox: no replica of server s0 is up\r\n"
        );
        // Writes, and shards without replicas, are not its business.
        net.send(c, &cmd(&["SET", "b", "x"]));
        assert_eq!(net.take(c), b"+OK\r\n");
    }

    #[test]
    fn the_any_policy_spreads_sessions_over_the_primary_and_its_replicas() {
        let (mut net, first) = replica_net(ReadPolicy::Any);
        net.servers[0]
            .data
            .insert(b"b".to_vec(), b"from-primary".to_vec());
        let mut seen = std::collections::BTreeSet::new();
        let mut clients = vec![first];
        clients.extend((0..3).map(|_| net.client()));
        for c in clients {
            for _ in 0..3 {
                net.send(c, &cmd(&["GET", "b"]));
            }
            let replies = net.take(c);
            // One session keeps to one server.
            assert_eq!(replies.len() % 3, 0);
            let one = &replies[..replies.len() / 3];
            assert_eq!(replies, one.repeat(3));
            seen.insert(one.to_vec());
        }
        assert_eq!(seen.len(), 2, "both the primary and the replica read");
    }

    #[test]
    fn fan_outs_and_placement_see_only_the_shards() {
        let (mut net, c) = replica_net(ReadPolicy::PreferReplica);
        // Its replica held out, shard 0 still takes its keys.
        net.engine.hold_out(0, 0b100);
        net.send(c, &cmd(&["SET", "b", "1"]));
        assert_eq!(net.take(c), b"+OK\r\n");
        assert_eq!(net.servers[0].data[&b"b"[..]], b"1");
        net.engine.hold_out(0, 0);
        // SCAN walks the two shards (a replica's answer would repeat
        // shard 0's keys).
        net.send(c, &cmd(&["SET", "a", "1"]));
        net.take(c);
        let mut cursor = "0".to_string();
        let mut rounds = 0;
        loop {
            net.send(c, &cmd(&["SCAN", &cursor]));
            let reply = String::from_utf8(net.take(c)).unwrap();
            rounds += 1;
            cursor = reply.split("\r\n").nth(2).unwrap().to_string();
            if cursor == "0" {
                break;
            }
        }
        assert_eq!(rounds, 2);
    }
}

/// Shards named by their Sentinel master: primaries and replicas learnt
/// from a fake sentinel, and a failover followed.
mod sentinel_pools {
    use ferrox_config::ReadPolicy;

    use super::*;

    /// Two shards named "ma" and "mb", their primaries unknown, the
    /// sentinel fake 4; read by `policy`.
    fn sentinel_spec(policy: ReadPolicy) -> PoolSpec {
        let unknown = std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0);
        let mut spec = PoolSpec {
            read_policy: policy,
            sentinels: vec!["10.0.0.1:7004".parse().unwrap()],
            masters: vec!["ma".into(), "mb".into()],
            timeout: Some(1_000_000),
            ..spec(2)
        };
        for server in &mut spec.servers {
            server.addr = unknown;
        }
        spec
    }

    /// Shards "ma" (fake 0, replica fake 2) and "mb" (fake 1), fake 3 a
    /// spare, the sentinel fake 4; read by `policy`.
    fn sentinel_net(policy: ReadPolicy) -> (Net, Handle) {
        sentinel_net_of(sentinel_spec(policy))
    }

    fn sentinel_net_of(spec: PoolSpec) -> (Net, Handle) {
        let mut net = Net::new(spec);
        while net.servers.len() < 5 {
            net.servers.push(FakeServer::default());
        }
        let mut masters = BTreeMap::new();
        masters.insert("ma".to_string(), (0, vec![2]));
        masters.insert("mb".to_string(), (1, vec![]));
        net.servers[4].sentinel = Some(masters);
        net.servers[2]
            .data
            .insert(b"b".to_vec(), b"from-replica".to_vec());
        let c = net.client();
        (net, c)
    }

    fn set_primary(net: &mut Net, master: &str, server: usize) {
        let masters = net.servers[4].sentinel.as_mut().unwrap();
        masters.get_mut(master).unwrap().0 = server;
    }

    /// A net whose sentinel wants `AUTH [user] s3cret`, and a pool that
    /// logs in with `login`.
    fn guarded_sentinel(user: Option<&str>, login: Option<Credentials>) -> (Net, Handle) {
        let spec = PoolSpec {
            sentinel_auth: login,
            ..sentinel_spec(ReadPolicy::Primary)
        };
        let (mut net, c) = sentinel_net_of(spec);
        net.servers[4].password = Some(b"s3cret".to_vec());
        net.servers[4].user = user.map(|u| u.as_bytes().to_vec());
        (net, c)
    }

    fn login(user: Option<&str>, password: &str) -> Option<Credentials> {
        Some(Credentials {
            user: user.map(|u| u.as_bytes().to_vec()),
            password: password.as_bytes().to_vec(),
        })
    }

    #[test]
    fn a_sentinel_with_a_password_is_logged_into_first() {
        for user in [None, Some("watcher")] {
            let (mut net, c) = guarded_sentinel(user, login(user, "s3cret"));
            net.advance(1);
            net.send(c, &cmd(&["SET", "b", "1"]));
            assert_eq!(net.take(c), b"+OK\r\n", "as {user:?}");
            assert_eq!(net.servers[0].data[&b"b"[..]], b"1");
            // Each connection to the sentinel (the queries', the
            // subscription's) logged in before its first command.
            let log = &net.servers[4].log;
            assert!(log.iter().filter(|c| *c == "AUTH").count() >= 2, "{log:?}");
            assert_eq!(log[0], "AUTH", "{log:?}");
            assert!(!net.servers[0].log.contains(&"AUTH".to_string()));
        }
    }

    #[test]
    fn a_sentinel_refusing_the_login_names_no_primary() {
        for login in [None, login(None, "wrong"), login(Some("watcher"), "s3cret")] {
            let (mut net, c) = guarded_sentinel(None, login.clone());
            net.advance(1);
            net.advance(1_000_000);
            net.send(c, &cmd(&["SET", "b", "1"]));
            assert_eq!(
                net.take(c),
                b"-ERR ferrox: no primary of master ma is known yet (asking Sentinel)\r\n",
                "{login:?}"
            );
            assert!(net.servers[0].data.is_empty());
        }
    }

    #[test]
    fn primaries_and_replicas_come_from_sentinel_and_follow_a_failover() {
        let (mut net, c) = sentinel_net(ReadPolicy::PreferReplica);
        // Before Sentinel has answered, the shard's requests fail clearly.
        net.send(c, &cmd(&["SET", "b", "1"]));
        assert_eq!(
            net.take(c),
            b"-ERR ferrox: no primary of master ma is known yet (asking Sentinel)\r\n"
        );
        net.advance(1);
        net.send(c, &cmd(&["SET", "b", "1"]));
        net.send(c, &cmd(&["SET", "a", "2"]));
        assert_eq!(net.take(c), b"+OK\r\n+OK\r\n");
        assert_eq!(net.servers[0].data[&b"b"[..]], b"1");
        assert_eq!(net.servers[1].data[&b"a"[..]], b"2");
        // The replica Sentinel reports takes the reads.
        net.send(c, &cmd(&["GET", "b"]));
        assert_eq!(net.take(c), b"$12\r\nfrom-replica\r\n");
        // A failover: Sentinel names fake 3 at its next refresh; writes
        // go there, placement unchanged.
        set_primary(&mut net, "ma", 3);
        net.advance(1_000_000);
        net.send(c, &cmd(&["SET", "b", "3"]));
        assert_eq!(net.take(c), b"+OK\r\n");
        assert_eq!(net.servers[3].data[&b"b"[..]], b"3");
        assert_eq!(net.servers[0].data[&b"b"[..]], b"1");
        // A +switch-master on the subscription applies at once.
        set_primary(&mut net, "ma", 0);
        // The subscription was opened first.
        let subscription = net
            .conns
            .iter()
            .filter_map(|(h, conn)| match conn {
                Conn::Backend { tag, server: 4, .. } => Some((*h, *tag)),
                _ => None,
            })
            .min_by_key(|(h, _)| *h)
            .map(|(_, tag)| tag)
            .unwrap();
        let text = "ma 10.0.0.1 7003 10.0.0.1 7000";
        let mut message = Vec::new();
        resp::write_bulk_array(
            &mut message,
            [&b"message"[..], b"+switch-master", text.as_bytes()],
        );
        assert_eq!(
            net.engine.handle_input(subscription, &message, net.now),
            message.len()
        );
        net.pump();
        net.send(c, &cmd(&["SET", "b", "4"]));
        assert_eq!(net.take(c), b"+OK\r\n");
        assert_eq!(net.servers[0].data[&b"b"[..]], b"4");
        // A replica Sentinel stops reporting is left out: reads go to the
        // primary.
        net.servers[4]
            .sentinel
            .as_mut()
            .unwrap()
            .get_mut("ma")
            .unwrap()
            .1
            .clear();
        net.advance(1_000_000);
        net.send(c, &cmd(&["GET", "b"]));
        assert_eq!(net.take(c), b"$1\r\n4\r\n");
    }

    #[test]
    fn a_reload_with_the_same_masters_keeps_what_sentinel_said() {
        let (mut net, c) = sentinel_net(ReadPolicy::Primary);
        net.advance(1);
        net.engine
            .reconfigure(vec![sentinel_spec(ReadPolicy::Primary)]);
        net.send(c, &cmd(&["SET", "b", "1"]));
        assert_eq!(net.take(c), b"+OK\r\n", "the primary is still known");
        assert_eq!(net.servers[0].data[&b"b"[..]], b"1");
    }
}
