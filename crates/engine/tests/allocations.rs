//! Once warmed up, the engine allocates nothing per request: a counting
//! global allocator watches every engine call while a client pipelines
//! single-key, split multi-key and local commands (RESP and memcached) to
//! two servers, through pools with validation rules and rate limits, and
//! through a pool with compression and a hot-key cache (hits, an MGET
//! split between the cache and a server, values compressed).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ferrox_engine::testing::pool_spec;
use ferrox_engine::{Action, Engine, Handle, Micros, Placement, PoolSpec, Protocol, Tag};
use ferrox_proto::{memcache, resp};

#[allow(unsafe_code)]
mod counting {
    use super::*;

    /// Counts allocations made on this thread while counting is on.
    pub struct Counting;

    thread_local! {
        pub static ON: Cell<bool> = const { Cell::new(false) };
        pub static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    // SAFETY: every call is passed to the system allocator unchanged; the
    // counters are thread-local cells, which do not allocate.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if ON.with(Cell::get) {
                COUNT.with(|c| c.set(c.get() + 1));
            }
            // SAFETY: the caller's contract is the system allocator's.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `alloc` above, i.e. from `System`.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if ON.with(Cell::get) {
                COUNT.with(|c| c.set(c.get() + 1));
            }
            // SAFETY: `ptr` came from `System` with `layout`.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

use counting::{COUNT, ON};

/// Runs `f` counting its allocations.
fn counted<R>(f: impl FnOnce() -> R) -> R {
    ON.with(|on| on.set(true));
    let r = f();
    ON.with(|on| on.set(false));
    r
}

#[derive(Debug)]
struct FirstByte;

impl Placement for FirstByte {
    fn server_for(&self, key: &[u8], _: u32) -> Option<usize> {
        Some(key.first().copied().unwrap_or(0) as usize % 2)
    }

    fn set_live(&mut self, _: &[bool]) {}
}

/// A pool of two servers with the access-layer checks on, so that they
/// are counted too: validation and three rate limits (never reached).
fn pool(protocol: Protocol, base_port: u16) -> PoolSpec {
    use ferrox_config::{RateBy, RateLimit, Validate};
    let limit = |by, bytes| RateLimit {
        by,
        commands: Vec::new(),
        requests: Some(1 << 40),
        bytes,
        per_ms: 1000,
    };
    PoolSpec {
        timeout: Some(1_000_000),
        validate: Validate {
            key_patterns: vec!["?".into()],
            max_key_bytes: Some(64),
            max_value_bytes: Some(1024),
            max_keys: Some(10),
            ..Validate::default()
        },
        rate_limits: vec![
            limit(RateBy::Client, None),
            limit(RateBy::Key, Some(1 << 50)),
            limit(RateBy::Command, None),
        ],
        ..pool_spec(protocol, 2, base_port, Box::new(FirstByte))
    }
}

/// A Redis pool of two servers that compresses values and caches hot keys.
fn featured_pool(base_port: u16) -> PoolSpec {
    PoolSpec {
        timeout: Some(1_000_000),
        compression: Some(ferrox_config::Compression {
            min_size: 64,
            ..Default::default()
        }),
        hot_key_cache: Some(ferrox_config::HotKeyCache {
            min_rate: 1,
            memory: 1 << 20,
            max_staleness_ms: None,
        }),
        ..pool_spec(Protocol::Redis, 2, base_port, Box::new(FirstByte))
    }
}

/// Canned server replies: answers each request in `input` by protocol.
fn serve(memcache: bool, input: &[u8], out: &mut Vec<u8>) -> usize {
    let mut used = 0;
    if memcache {
        let mut req = memcache::Request::new();
        while let Ok(Some(len)) =
            memcache::parse_request(&input[used..], &Default::default(), &mut req)
        {
            let keys = req.key_ranges().len();
            used += len;
            if req.command == memcache::Command::Set {
                out.extend_from_slice(b"STORED\r\n");
            } else {
                for _ in 0..keys {
                    out.extend_from_slice(b"VALUE k 0 5\r\nvalue\r\n");
                }
                out.extend_from_slice(b"END\r\n");
            }
        }
    } else {
        let mut args = Vec::new();
        while let Ok(Some(len)) =
            resp::parse_request(&input[used..], &Default::default(), &mut args)
        {
            let name = &input[used + args[0].start..used + args[0].end];
            match name {
                b"MGET" => {
                    out.extend_from_slice(format!("*{}\r\n", args.len() - 1).as_bytes());
                    for _ in 1..args.len() {
                        out.extend_from_slice(b"$5\r\nvalue\r\n");
                    }
                }
                b"SET" => out.extend_from_slice(b"+OK\r\n"),
                _ => out.extend_from_slice(b"$5\r\nvalue\r\n"),
            }
            used += len;
        }
    }
    used
}

#[test]
fn no_allocation_per_request_after_warm_up() {
    let mut engine = Engine::new(
        vec![
            pool(Protocol::Redis, 7000),
            pool(Protocol::Memcache, 8000),
            featured_pool(6000),
        ],
        1,
    );
    let redis_client = engine.accept(0, 1).unwrap();
    let memcache_client = engine.accept(1, 2).unwrap();
    let featured_client = engine.accept(2, 3).unwrap();
    let compressible = "0123456789abcdef".repeat(16);
    let featured_pipeline: Vec<u8> = [
        "*2\r\n$3\r\nGET\r\n$1\r\nc\r\n".to_string(),
        "*2\r\n$3\r\nGET\r\n$1\r\nc\r\n".to_string(),
        "*3\r\n$4\r\nMGET\r\n$1\r\nc\r\n$1\r\nd\r\n".to_string(),
        format!("*3\r\n$3\r\nSET\r\n$1\r\ne\r\n$256\r\n{compressible}\r\n"),
        "*2\r\n$3\r\nGET\r\n$1\r\ne\r\n".to_string(),
    ]
    .concat()
    .into_bytes();
    let redis_pipeline: Vec<u8> = [
        "*2\r\n$3\r\nGET\r\n$1\r\na\r\n",
        "*2\r\n$3\r\nGET\r\n$1\r\nb\r\n",
        "*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$1\r\nb\r\n",
        "*3\r\n$3\r\nSET\r\n$1\r\na\r\n$5\r\nvalue\r\n",
        "*1\r\n$4\r\nPING\r\n",
    ]
    .concat()
    .into_bytes();
    let memcache_pipeline = b"get a\r\nget a b\r\nset b 0 0 5\r\nvalue\r\n".to_vec();
    // Backend connections: handle -> (tag, memcache?, bytes sent to it).
    let mut backends: Vec<(Handle, Tag, bool, Vec<u8>)> = Vec::new();
    let mut next_handle: Handle = 100;
    let mut client_bytes = 0usize;
    let mut replies = Vec::new();
    let now: Micros = 1;

    let mut rounds = |engine: &mut Engine, count_from: usize, rounds: usize| -> u64 {
        COUNT.with(|c| c.set(0));
        for round in 0..rounds {
            let counting = round >= count_from;
            let step = |f: &mut dyn FnMut()| {
                if counting {
                    counted(f)
                } else {
                    f()
                }
            };
            step(&mut || {
                engine.handle_input(redis_client, &redis_pipeline, now);
                engine.handle_input(memcache_client, &memcache_pipeline, now);
                engine.handle_input(featured_client, &featured_pipeline, now);
            });
            loop {
                let mut action = None;
                step(&mut || action = engine.poll_action());
                let Some(action) = action else { break };
                match action {
                    Action::Connect { tag, addr } => {
                        let handle = next_handle;
                        next_handle += 1;
                        backends.push((handle, tag, addr.port() >= 8000, Vec::new()));
                        engine.bind(tag, handle);
                        engine.handle_connected(tag, now);
                    }
                    Action::Send(handle) if handle <= 3 => {
                        let tag =
                            [redis_client, memcache_client, featured_client][handle as usize - 1];
                        step(&mut || {
                            let n = engine.output(tag).len();
                            client_bytes += n;
                            engine.output_acked(tag, n);
                        });
                    }
                    Action::Send(handle) => {
                        let backend = backends.iter_mut().find(|b| b.0 == handle).unwrap();
                        let tag = backend.1;
                        step(&mut || {
                            let out = engine.output(tag);
                            let n = out.len();
                            backend.3.extend_from_slice(out);
                            engine.output_acked(tag, n);
                        });
                        replies.clear();
                        let used = serve(backend.2, &backend.3, &mut replies);
                        backend.3.drain(..used);
                        step(&mut || {
                            assert_eq!(engine.handle_input(tag, &replies, now), replies.len());
                        });
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        COUNT.with(Cell::get)
    };

    // Warm up: buffers, FIFOs and slots grow to their working size.
    let warm = rounds(&mut engine, 0, 50);
    assert!(warm > 0, "the counter sees the warm-up growth");
    let allocations = rounds(&mut engine, 0, 1_000);
    assert_eq!(engine.stats().errors, 0);
    // The featured pool's first round stops after its first GET, a read
    // on the tracking connection that the rest waits for (and the harness
    // does not offer the rest again).
    assert!(engine.stats().requests >= 1_050 * 13 - 4);
    let featured = engine.pools().nth(2).unwrap().counters.clone();
    assert!(featured.cache_hits >= 3_000, "{featured:?}");
    assert!(featured.compressed_values >= 1_000, "{featured:?}");
    assert!(client_bytes > 0);
    assert_eq!(
        allocations, 0,
        "the engine allocated {allocations} times in 1,000 rounds of 8 requests"
    );
}
