//! The whole request path through the engine, without a network: a
//! client's request in, the request out to its server, the server's reply
//! in, the client's reply out. Per request: a GET to one server, and an
//! MGET of 8 keys split over 4 servers and merged.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferrox_engine::testing::pool_spec;
use ferrox_engine::{Action, Engine, Placement, PoolSpec, Protocol, Tag};

/// Sends all of `tag`'s output (as a runtime with room would).
fn drain(engine: &mut Engine, tag: Tag) -> usize {
    let n = engine.output(tag).len();
    engine.output_acked(tag, n);
    n
}

/// Places a key by its last byte.
#[derive(Debug)]
struct LastByte(usize);

impl Placement for LastByte {
    fn server_for(&self, key: &[u8], _: u32) -> Option<usize> {
        Some(key.last().copied().unwrap_or(0) as usize % self.0)
    }

    fn set_live(&mut self, _: &[bool]) {}
}

fn pool(servers: usize) -> PoolSpec {
    pool_spec(Protocol::Redis, servers, 7000, Box::new(LastByte(servers)))
}

/// `pool(1)` with the access-layer checks `bench/policy.sh` turns on: a
/// user with ACL rules (its client authenticated), validation, and two
/// rate limits (by client, and by command counting bytes) never reached.
fn policy_pool() -> PoolSpec {
    use ferrox_config::{RateBy, RateLimit, Validate};
    use ferrox_engine::acl::Acl;
    use ferrox_engine::UserSpec;
    let limit = |by, commands: &[&str], bytes| RateLimit {
        by,
        commands: commands.iter().map(|c| c.to_string()).collect(),
        requests: Some(100_000_000),
        bytes,
        per_ms: 1000,
    };
    PoolSpec {
        users: vec![UserSpec {
            name: "app".into(),
            passwords: vec![b"secret".to_vec()],
            acl: Box::new(Acl::compile("+@read +@write +@connection -@dangerous ~key:*").unwrap()),
        }],
        validate: Validate {
            key_patterns: vec!["key:*".into()],
            max_key_bytes: Some(64),
            max_value_bytes: Some(1024),
            max_keys: Some(100),
            ..Validate::default()
        },
        rate_limits: vec![
            limit(RateBy::Client, &[], None),
            limit(RateBy::Command, &["SET"], Some(100 << 30)),
        ],
        ..pool(1)
    }
}

/// An engine with one client whose backend connections are up; returns
/// the client's tag and each server connection's tag.
fn connected(servers: usize) -> (Engine, Tag, Vec<Tag>) {
    connected_to(pool(servers), servers, b"")
}

/// [`connected`] for `spec` (of `servers` servers), the client having
/// sent `hello` first.
fn connected_to(spec: PoolSpec, servers: usize, hello: &[u8]) -> (Engine, Tag, Vec<Tag>) {
    let mut engine = Engine::new(vec![spec], 1);
    let client = engine.accept(0, 1).unwrap();
    engine.handle_input(client, hello, 0);
    // One request per server opens its connection.
    let mut warm = Vec::new();
    for s in 0..servers {
        warm.extend_from_slice(format!("*2\r\n$3\r\nGET\r\n$5\r\nkey:{s}\r\n").as_bytes());
    }
    engine.handle_input(client, &warm, 0);
    let mut backends = vec![None; servers];
    let mut next = 100;
    while let Some(action) = engine.poll_action() {
        if let Action::Connect { tag, addr } = action {
            engine.bind(tag, next);
            engine.handle_connected(tag, 0);
            backends[(addr.port() - 7000) as usize] = Some(tag);
            next += 1;
        }
    }
    let backends: Vec<Tag> = backends.into_iter().map(Option::unwrap).collect();
    for &b in &backends {
        drain(&mut engine, b);
        engine.handle_input(b, b"$-1\r\n", 0);
    }
    drain(&mut engine, client);
    while engine.poll_action().is_some() {}
    (engine, client, backends)
}

fn request_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));

    let (mut engine, client, backends) = connected(1);
    let get = b"*2\r\n$3\r\nGET\r\n$16\r\nkey:000000012345\r\n";
    let value = b"$5\r\nhello\r\n";
    group.bench_function("GET, one server", |b| {
        b.iter(|| {
            engine.handle_input(client, black_box(get), 0);
            drain(&mut engine, backends[0]);
            engine.handle_input(backends[0], black_box(value), 0);
            black_box(drain(&mut engine, client));
            while engine.poll_action().is_some() {}
        })
    });

    let set = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:000000012345\r\n$3\r\nxxx\r\n";
    let auth = b"*3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n$6\r\nsecret\r\n";
    for (name, spec, hello) in [
        ("SET, one server", pool(1), &b""[..]),
        (
            "SET, one server, user, validation and rate limits",
            policy_pool(),
            &auth[..],
        ),
    ] {
        let (mut engine, client, backends) = connected_to(spec, 1, hello);
        group.bench_function(name, |b| {
            b.iter(|| {
                engine.handle_input(client, black_box(set), 0);
                drain(&mut engine, backends[0]);
                engine.handle_input(backends[0], black_box(b"+OK\r\n"), 0);
                black_box(drain(&mut engine, client));
                while engine.poll_action().is_some() {}
            })
        });
    }

    let (mut engine, client, backends) = connected(4);
    let mut mget = b"*9\r\n$4\r\nMGET\r\n".to_vec();
    for k in 0..8 {
        mget.extend_from_slice(format!("$5\r\nkey:{k}\r\n").as_bytes());
    }
    let piece = b"*2\r\n$5\r\nhello\r\n$-1\r\n";
    group.bench_function("MGET 8 keys over 4 servers", |b| {
        b.iter(|| {
            engine.handle_input(client, black_box(&mget), 0);
            for &server in &backends {
                drain(&mut engine, server);
                engine.handle_input(server, black_box(piece), 0);
            }
            black_box(drain(&mut engine, client));
            while engine.poll_action().is_some() {}
        })
    });
    group.finish();
}

/// A GET of a large value, its reply sent a socket buffer (8 KiB) at a
/// time, as the runtime sends it; and, in the same run, the same sends
/// done the way output was drained before (`Vec::drain` from the front,
/// which moves what is left on every send).
fn large_replies(c: &mut Criterion) {
    const SOCKET: usize = 8 << 10;
    let mut group = c.benchmark_group("large reply");
    group.sample_size(10);
    for (name, size) in [("1 MiB", 1usize << 20), ("16 MiB", 16 << 20)] {
        group.throughput(Throughput::Bytes(size as u64));
        let (mut engine, client, backends) = connected(1);
        let get = b"*2\r\n$3\r\nGET\r\n$16\r\nkey:000000012345\r\n";
        let mut value = format!("${size}\r\n").into_bytes();
        value.resize(value.len() + size, b'v');
        value.extend_from_slice(b"\r\n");
        group.bench_function(format!("GET {name}, sent 8 KiB at a time"), |b| {
            b.iter(|| {
                engine.handle_input(client, black_box(get), 0);
                drain(&mut engine, backends[0]);
                engine.handle_input(backends[0], black_box(&value), 0);
                loop {
                    let n = engine.output(client).len().min(SOCKET);
                    if n == 0 {
                        break;
                    }
                    engine.output_acked(client, n);
                }
                while engine.poll_action().is_some() {}
            })
        });
        group.bench_function(
            format!("{name} drained from the front of a Vec, 8 KiB at a time"),
            |b| {
                let mut out = Vec::with_capacity(value.len());
                b.iter(|| {
                    out.extend_from_slice(&value);
                    while !out.is_empty() {
                        let n = out.len().min(SOCKET);
                        black_box(&out[..n]);
                        out.drain(..n);
                    }
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, request_path, large_replies);
criterion_main!(benches);
