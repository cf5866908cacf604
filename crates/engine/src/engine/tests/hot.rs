//! The hot-key cache through the engine: hot keys answered locally,
//! filled over the tracking connection, dropped by the server's
//! invalidations, by writes through the proxy, and when tracking is lost.

use super::*;

fn caching(protocol: Protocol) -> PoolSpec {
    PoolSpec {
        protocol,
        hot_key_cache: Some(ferrox_config::HotKeyCache {
            min_rate: 10,
            memory: 1 << 20,
            max_staleness_ms: None,
        }),
        ..spec(2)
    }
}

fn counters(net: &Net) -> PoolCounters {
    net.engine.pools().next().unwrap().counters.clone()
}

/// GETs `key` `n` times, one at a time; every reply.
fn get_n(net: &mut Net, c: Handle, key: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            net.send(c, &cmd(&["GET", key]));
            net.take(c)
        })
        .collect()
}

fn gets_served(net: &Net, server: usize) -> usize {
    net.servers[server]
        .log
        .iter()
        .filter(|c| *c == "GET")
        .count()
}

#[test]
fn a_hot_key_is_answered_by_the_proxy_until_the_server_says_it_changed() {
    let (mut net, c) = with_client(caching(Protocol::Redis));
    let s = (b'k' % 2) as usize;
    net.servers[s].data.insert(b"k".to_vec(), b"v1".to_vec());
    // Cold reads go to the server; the key turns hot at 10 reads.
    let replies = get_n(&mut net, c, "k", 100);
    assert!(replies.iter().all(|r| r == b"$2\r\nv1\r\n"));
    let served = gets_served(&net, s);
    assert!(served < 15, "the server saw {served} of 100 GETs");
    // The fill came over a tracking connection.
    assert_eq!(net.servers[s].tracking.len(), 1);
    let before = counters(&net);
    assert!(before.cache_hits >= 85, "{before:?}");
    // A client that bypasses the proxy writes: the server's push drops
    // the entry before the next read.
    net.servers[s].set_directly(b"k", b"v2");
    net.deliver_pushes(s);
    assert_eq!(get_n(&mut net, c, "k", 1), [b"$2\r\nv2\r\n".to_vec()]);
    assert_eq!(counters(&net).cache_invalidations_server, 1);
    // Cached again, and served from the cache.
    let served = gets_served(&net, s);
    assert!(get_n(&mut net, c, "k", 20)
        .iter()
        .all(|r| r == b"$2\r\nv2\r\n"));
    assert_eq!(gets_served(&net, s), served);
}

#[test]
fn a_write_through_the_proxy_is_read_back_by_the_same_client_at_once() {
    let (mut net, c) = with_client(caching(Protocol::Redis));
    let s = (b'k' % 2) as usize;
    net.servers[s].data.insert(b"k".to_vec(), b"old".to_vec());
    get_n(&mut net, c, "k", 50);
    // Pipelined: the SET and the GET behind it. The entry is dropped when
    // the SET is read, so the GET reaches the server after it.
    net.servers[s].hold = true;
    let mut both = cmd(&["SET", "k", "new"]);
    both.extend(cmd(&["GET", "k"]));
    net.send(c, &both);
    net.servers[s].hold = false;
    net.pump();
    assert_eq!(net.take(c), b"+OK\r\n$3\r\nnew\r\n");
    assert!(counters(&net).cache_invalidations_write >= 1);
}

#[test]
fn a_write_behind_a_fill_read_waits_for_it() {
    let (mut net, c) = with_client(caching(Protocol::Redis));
    let s = (b'k' % 2) as usize;
    net.servers[s].data.insert(b"k".to_vec(), b"v1".to_vec());
    // Hot, not cached: the next GET goes on the tracking connection. A SET
    // pipelined behind it must not reach the server first on the
    // session's usual connection.
    get_n(&mut net, c, "k", 9);
    net.servers[s].hold = true;
    let mut both = cmd(&["GET", "k"]);
    let get_len = both.len();
    both.extend(cmd(&["SET", "k", "v2"]));
    let tag = net.client_tag(c);
    let used = net.engine.handle_input(tag, &both, net.now);
    assert_eq!(used, get_len, "the SET waits while the read is in flight");
    net.pump();
    net.servers[s].hold = false;
    net.pump();
    // Woken: the runtime offers the rest again.
    let used = net.engine.handle_input(tag, &both[get_len..], net.now);
    assert_eq!(used, both.len() - get_len);
    net.pump();
    assert_eq!(net.take(c), b"$2\r\nv1\r\n+OK\r\n");
    assert_eq!(get_n(&mut net, c, "k", 1), [b"$2\r\nv2\r\n".to_vec()]);
}

#[test]
fn a_read_answered_after_an_invalidation_does_not_fill_the_cache() {
    let (mut net, c) = with_client(caching(Protocol::Redis));
    let s = (b'k' % 2) as usize;
    net.servers[s].data.insert(b"k".to_vec(), b"v1".to_vec());
    // Hot, not cached yet, and no tracking connection yet: the next read
    // is a miss, sent on a new tracking connection for a fill.
    get_n(&mut net, c, "k", 9);
    net.servers[s].hold = true;
    net.send(c, &cmd(&["GET", "k"]));
    let (handle, tag) = net
        .conns
        .iter()
        .find_map(|(h, conn)| match conn {
            Conn::Backend {
                tag, server, inbox, ..
            } if *server == s && !inbox.is_empty() => Some((*h, *tag)),
            _ => None,
        })
        .expect("the read waits in the tracking connection's inbox");
    // The server answers the read; then a client that bypasses the proxy
    // changes the key, and the invalidation reaches the proxy before the
    // read's reply does.
    let Some(Conn::Backend { inbox, .. }) = net.conns.get_mut(&handle) else {
        unreachable!()
    };
    let request = std::mem::take(inbox);
    let fake = &mut net.servers[s];
    fake.current = handle;
    let mut reply = Vec::new();
    fake.serve(&request, &mut reply);
    assert!(
        reply.ends_with(b"$2\r\nv1\r\n"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
    fake.set_directly(b"k", b"v2");
    let pushes = std::mem::take(&mut fake.pushes);
    assert_eq!(pushes.len(), 1);
    net.engine.handle_input(tag, &pushes[0].1, net.now);
    net.engine.handle_input(tag, &reply, net.now);
    net.servers[s].hold = false;
    net.pump();
    // That read is answered with what the server said then...
    assert_eq!(net.take(c), b"$2\r\nv1\r\n");
    // ...but its reply was not cached: the next read sees the change.
    assert_eq!(get_n(&mut net, c, "k", 1), [b"$2\r\nv2\r\n".to_vec()]);
}

#[test]
fn losing_the_tracking_connection_or_a_flush_drops_the_servers_entries() {
    let (mut net, c) = with_client(caching(Protocol::Redis));
    let s = (b'k' % 2) as usize;
    net.servers[s].data.insert(b"k".to_vec(), b"v1".to_vec());
    get_n(&mut net, c, "k", 30);
    assert!(counters(&net).cache_hits > 0);
    // FLUSHDB straight to the server: a push with no keys.
    net.servers[s].data.clear();
    net.servers[s].tracked.clear();
    for &handle in &net.servers[s].tracking.clone() {
        net.servers[s]
            .pushes
            .push((handle, b">2\r\n$10\r\ninvalidate\r\n_\r\n".to_vec()));
    }
    net.deliver_pushes(s);
    assert_eq!(counters(&net).cache_invalidations_lost, 1);
    assert_eq!(get_n(&mut net, c, "k", 1), [b"$-1\r\n".to_vec()]);
    // A nil is cached too, in the client's RESP version.
    get_n(&mut net, c, "k", 5);
    assert!(get_n(&mut net, c, "k", 5).iter().all(|r| r == b"$-1\r\n"));
    let tracking = net
        .conns
        .iter()
        .find(|(h, conn)| {
            matches!(conn, Conn::Backend { server, .. } if *server == s)
                && net.servers[s].tracking.contains(h)
        })
        .map(|(h, _)| *h)
        .expect("a tracking connection");
    // The tracking connection dies: the entries it vouched for go.
    net.act(Action::Abort(tracking));
    net.servers[s].data.insert(b"k".to_vec(), b"back".to_vec());
    assert_eq!(get_n(&mut net, c, "k", 1), [b"$4\r\nback\r\n".to_vec()]);
}

#[test]
fn memcached_hot_keys_live_at_most_their_staleness_bound() {
    let (mut net, c) = with_client(caching(Protocol::Memcache));
    let s = (b'k' % 2) as usize;
    net.send(c, b"set k 5 0 2\r\nv1\r\n");
    net.take(c);
    for _ in 0..40 {
        net.send(c, b"get k\r\n");
        assert_eq!(net.take(c), b"VALUE k 5 2\r\nv1\r\nEND\r\n");
    }
    let served = net.servers[s].log.iter().filter(|c| *c == "get").count();
    assert!(served < 15, "the server saw {served} of 40 gets");
    // Written around the proxy: stale until the bound (1 s) passes.
    net.servers[s].data.insert(b"k".to_vec(), b"v2".to_vec());
    net.send(c, b"get k\r\n");
    assert_eq!(net.take(c), b"VALUE k 5 2\r\nv1\r\nEND\r\n");
    net.advance(1_100_000);
    for _ in 0..20 {
        net.send(c, b"get k\r\n");
    }
    let replies = String::from_utf8(net.take(c)).unwrap();
    assert!(replies.starts_with("VALUE k 5 2\r\nv2\r\n"), "{replies}");
    // Written through the proxy: dropped at once.
    net.send(c, b"set k 5 0 2\r\nv3\r\nget k\r\n");
    assert_eq!(net.take(c), b"STORED\r\nVALUE k 5 2\r\nv3\r\nEND\r\n");
}

#[test]
fn hot_keys_are_listed_and_cool_down() {
    let (mut net, c) = with_client(caching(Protocol::Redis));
    get_n(&mut net, c, "k", 50);
    get_n(&mut net, c, "q", 2);
    let hot: Vec<(Vec<u8>, u32)> = net
        .engine
        .pools()
        .next()
        .unwrap()
        .hot_keys()
        .map(|(k, r)| (k.to_vec(), r))
        .collect();
    assert_eq!(hot.len(), 1);
    assert_eq!(hot[0].0, b"k");
    assert!(hot[0].1 >= 10);
    // Three quiet seconds: nothing is hot.
    for _ in 0..3 {
        net.advance(1_000_000);
        get_n(&mut net, c, "q", 1);
    }
    assert_eq!(net.engine.pools().next().unwrap().hot_keys().count(), 0);
}

#[test]
fn an_mget_takes_its_hot_keys_from_the_cache_and_asks_for_the_rest() {
    let (mut net, c) = with_client(caching(Protocol::Redis));
    for (key, value) in [("k", "v1"), ("a", "va"), ("b", "vb")] {
        let s = (key.as_bytes()[0] % 2) as usize;
        net.servers[s].data.insert(key.into(), value.into());
    }
    get_n(&mut net, c, "k", 30);
    let served: usize = (0..2).map(|s| gets_served(&net, s)).sum();
    let mget = |net: &mut Net| {
        net.send(c, &cmd(&["MGET", "a", "k", "b", "k", "zz"]));
        net.take(c)
    };
    assert_eq!(
        mget(&mut net),
        b"*5\r\n$2\r\nva\r\n$2\r\nv1\r\n$2\r\nvb\r\n$2\r\nv1\r\n$-1\r\n"
    );
    // Only the others were asked for.
    let k = (b'k' % 2) as usize;
    let mgets = net.servers[k].log.iter().filter(|c| *c == "MGET").count();
    let asked: usize = (0..2).map(|s| gets_served(&net, s)).sum();
    assert_eq!(asked, served);
    assert_eq!(
        mgets, 1,
        "a only is asked of k's server: {:?}",
        net.servers[k].log
    );
    // Every key cached: answered by the proxy alone.
    let before: Vec<usize> = net.servers.iter().map(|s| s.log.len()).collect();
    net.send(c, &cmd(&["MGET", "k", "k"]));
    assert_eq!(net.take(c), b"*2\r\n$2\r\nv1\r\n$2\r\nv1\r\n");
    let after: Vec<usize> = net.servers.iter().map(|s| s.log.len()).collect();
    assert_eq!(before, after);
}

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// SET through the proxy, pipelined with `gets` GETs of the key.
        Set {
            key: u8,
            value: u8,
            gets: u8,
        },
        /// GETs, one at a time.
        Get {
            key: u8,
            times: u8,
        },
        /// A client that bypasses the proxy.
        Direct {
            key: u8,
            value: u8,
        },
        Advance {
            ms: u16,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3, any::<u8>(), 0u8..3).prop_map(|(key, value, gets)| Op::Set {
                key,
                value,
                gets
            }),
            (0u8..3, 1u8..30).prop_map(|(key, times)| Op::Get { key, times }),
            (0u8..3, any::<u8>()).prop_map(|(key, value)| Op::Direct { key, value }),
            (0u16..1500).prop_map(|ms| Op::Advance { ms }),
        ]
    }

    proptest! {
        /// However reads, writes through the proxy, writes around it and
        /// time interleave, a read never sees a value older than the last
        /// write.
        #[test]
        fn the_cache_never_serves_a_value_older_than_the_last_write(
            ops in prop::collection::vec(op(), 1..60)
        ) {
            let (mut net, c) = with_client(caching(Protocol::Redis));
            let mut model: BTreeMap<u8, u8> = BTreeMap::new();
            let name = |key: u8| format!("key{key}");
            // Every key starts with 'k': one server holds them all.
            let server = (b'k' % 2) as usize;
            let expect = |model: &BTreeMap<u8, u8>, key: u8| match model.get(&key) {
                Some(v) => format!("$3\r\n{v:03}\r\n").into_bytes(),
                None => b"$-1\r\n".to_vec(),
            };
            for op in ops {
                match op {
                    Op::Set { key, value, gets } => {
                        // GETs before and after the SET, in one write.
                        let mut bytes = Vec::new();
                        let mut want = Vec::new();
                        for _ in 0..gets {
                            bytes.extend(cmd(&["GET", &name(key)]));
                            want.extend(expect(&model, key));
                        }
                        bytes.extend(cmd(&["SET", &name(key), &format!("{value:03}")]));
                        model.insert(key, value);
                        want.extend(b"+OK\r\n");
                        for _ in 0..gets {
                            bytes.extend(cmd(&["GET", &name(key)]));
                            want.extend(expect(&model, key));
                        }
                        // Offered again as the engine takes it.
                        let tag = net.client_tag(c);
                        let mut at = 0;
                        for _ in 0..100 {
                            at += net.engine.handle_input(tag, &bytes[at..], net.now);
                            net.pump();
                            if at == bytes.len() {
                                break;
                            }
                        }
                        prop_assert_eq!(at, bytes.len());
                        prop_assert_eq!(net.take(c), want);
                    }
                    Op::Get { key, times } => {
                        for _ in 0..times {
                            net.send(c, &cmd(&["GET", &name(key)]));
                            prop_assert_eq!(net.take(c), expect(&model, key));
                        }
                    }
                    Op::Direct { key, value } => {
                        let s = server;
                        net.servers[s].set_directly(name(key).as_bytes(), format!("{value:03}").as_bytes());
                        net.deliver_pushes(s);
                        model.insert(key, value);
                    }
                    Op::Advance { ms } => net.advance(u64::from(ms) * 1_000),
                }
            }
        }
    }
}

#[test]
fn a_write_through_one_core_drops_the_key_on_the_others() {
    for protocol in [Protocol::Redis, Protocol::Memcache] {
        let (mut a, ca) = with_client(caching(protocol));
        let (mut b, cb) = with_client(caching(protocol));
        a.engine.set_peers(true);
        b.engine.set_peers(true);
        let s = (b'k' % 2) as usize;
        let (set, get): (&[u8], &[u8]) = match protocol {
            Protocol::Redis => (
                b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv2\r\n",
                b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
            ),
            Protocol::Memcache => (b"set k 0 0 2\r\nv2\r\n", b"get k\r\n"),
        };
        b.servers[s].data.insert(b"k".to_vec(), b"v1".to_vec());
        for _ in 0..30 {
            b.send(cb, get);
        }
        b.take(cb);
        let log = |net: &Net| net.servers[s].log.len();
        let before = log(&b);
        b.send(cb, get);
        assert_eq!(log(&b), before, "{protocol:?}: cached on core b");
        // Core a takes a write of k: core b hears of it before its next
        // frames, and its next read goes to the server.
        a.send(ca, set);
        let mut messages = Vec::new();
        a.engine
            .take_peer_invalidations(|m| messages.push(m.to_vec()));
        assert_eq!(messages, [b"\0\0k".to_vec()], "{protocol:?}");
        for m in &messages {
            b.engine.handle_peer_invalidation(m);
        }
        b.take(cb);
        b.send(cb, get);
        assert_eq!(
            log(&b),
            before + 1,
            "{protocol:?}: read again from the server"
        );
        assert_eq!(counters(&b).cache_invalidations_write, 1, "{protocol:?}");
    }
}
