use super::*;
use proptest::prelude::*;

fn small() -> PoolConfig {
    PoolConfig {
        classes: vec![
            ClassConfig {
                chunk_size: 128,
                chunks: 100,
            },
            ClassConfig {
                chunk_size: 1024,
                chunks: 10,
            },
        ],
    }
}

fn heap_pool(config: &PoolConfig) -> Pool {
    let region = Region::heap(config.bytes() + (64 << 10));
    Pool::create(&region, "pool", config).unwrap()
}

/// A [`small`] pool on the heap, and its core 0.
fn small_pool() -> (Pool, CoreCache) {
    let pool = heap_pool(&small());
    let core = pool.core(0).unwrap();
    (pool, core)
}

#[test]
fn alloc_and_free_keep_counts() {
    let (pool, mut core) = small_pool();
    let chunks: Vec<_> = (0..50).map(|_| core.alloc(0).unwrap()).collect();
    let stats = pool.stats();
    assert_eq!(stats.classes[0].total, 100);
    assert_eq!(stats.classes[0].in_use, 50);
    assert_eq!(stats.classes[0].free, 50);
    assert!(stats.classes[0].high_water >= 50);
    let offsets: std::collections::HashSet<_> = chunks.iter().map(|c| c.offset()).collect();
    assert_eq!(offsets.len(), 50, "no chunk is handed out twice");
    for c in chunks {
        core.free(c);
    }
    assert_eq!(pool.stats().classes[0].in_use, 0);
}

#[test]
fn exhaustion_is_an_error_and_recovers_after_free() {
    let (_pool, mut core) = small_pool();
    let held: Vec<_> = (0..10).map(|_| core.alloc(1).unwrap()).collect();
    let err = core.alloc(1).unwrap_err();
    assert!(
        matches!(
            err,
            PoolError::Exhausted {
                class: 1,
                chunk_size: 1024
            }
        ),
        "{err}"
    );
    for c in held {
        core.free(c);
    }
    let again = core.alloc(1).unwrap();
    core.free(again);
}

#[test]
fn payload_round_trips_and_respects_capacity() {
    let (pool, mut core) = small_pool();
    let mut chunk = core.alloc(0).unwrap();
    assert_eq!(
        pool.payload_mut(&mut chunk).len(),
        128 - CHUNK_HEADER as usize
    );
    pool.write(&mut chunk, b"hello").unwrap();
    assert_eq!(pool.payload(&chunk), b"hello");
    assert!(pool.write(&mut chunk, &[0; 200]).is_err());
    assert_eq!(
        pool.payload(&chunk),
        b"hello",
        "a failed write changes nothing"
    );
    core.free(chunk);
}

#[test]
fn chunks_freed_by_another_core_return_to_their_home() {
    let pool = heap_pool(&small());
    let mut a = pool.core(0).unwrap();
    let mut b = pool.core(1).unwrap();
    let chunk = a.alloc(0).unwrap();
    let home = chunk.offset();
    let sent = a.send(chunk);
    let adopted = b.adopt(sent).unwrap();
    assert!(
        matches!(b.adopt(sent), Err(PoolError::NotAChunk { .. })),
        "adopting twice is refused"
    );
    b.free(adopted);
    // Empty core 0's local cache; the remote-free stack is drained next.
    let drained: Vec<_> = (0..BATCH as usize - 1)
        .map(|_| a.alloc(0).unwrap())
        .collect();
    let back = a.alloc(0).unwrap();
    assert_eq!(
        back.offset(),
        home,
        "the chunk came back to core 0 through its remote-free stack"
    );
    for c in drained {
        a.free(c);
    }
    a.free(back);
    assert_eq!(pool.stats().classes[0].in_use, 0);
}

#[test]
fn adopt_refuses_offsets_that_are_not_chunks_in_transit() {
    let (_pool, mut core) = small_pool();
    let owned = core.alloc(0).unwrap();
    assert!(matches!(
        core.adopt(owned.offset()),
        Err(PoolError::NotAChunk {
            reason: "chunk is not in transit",
            ..
        })
    ));
    assert!(matches!(
        core.adopt(owned.offset().add(8)),
        Err(PoolError::NotAChunk { .. })
    ));
    assert!(core.adopt(Offset::new(0, 64)).is_err());
    assert!(core.adopt(Offset::new(9, 0)).is_err());
    core.free(owned);
}

#[test]
fn core_slots_are_exclusive_and_reusable() {
    let pool = heap_pool(&small());
    let core = pool.core(3).unwrap();
    assert!(matches!(
        pool.core(3),
        Err(PoolError::CoreBusy { core: 3, .. })
    ));
    assert!(matches!(
        pool.core(MAX_CORES),
        Err(PoolError::NoSuchCore(_))
    ));
    drop(core);
    assert!(pool.core(3).is_ok());
}

#[test]
fn nodes_chain_chunks_for_large_values() {
    let (pool, mut core) = small_pool();
    let mut node = Node::new(0);
    let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    core.append(&mut node, &data[..5]).unwrap();
    core.append(&mut node, &data[5..]).unwrap();
    assert_eq!(node.len(), 1000);
    let mut out = Vec::new();
    pool.read_node(&node, &mut out);
    assert_eq!(out, data);
    assert_eq!(
        pool.stats().classes[0].in_use,
        1000usize.div_ceil(112) as u64
    );
    core.free_node(node);
    assert_eq!(pool.stats().classes[0].in_use, 0);
}

#[test]
fn a_node_append_that_cannot_fit_changes_nothing() {
    let (pool, mut core) = small_pool();
    let mut node = Node::new(1);
    core.append(&mut node, &[1; 2000]).unwrap();
    let before = pool.stats();
    assert!(matches!(
        core.append(&mut node, &[2; 1_000_000]),
        Err(PoolError::Exhausted { .. })
    ));
    assert_eq!(node.len(), 2000);
    assert_eq!(
        pool.stats(),
        before,
        "the failed append returned every chunk it took"
    );
    let mut out = Vec::new();
    pool.read_node(&node, &mut out);
    assert_eq!(out, vec![1; 2000]);
    core.free_node(node);
}

#[test]
fn adding_chunks_grows_the_region_when_full() {
    let config = small();
    let region = Region::heap(config.bytes() + 4096);
    let pool = Pool::create(&region, "pool", &config).unwrap();
    pool.add_chunks(1, 5000).unwrap();
    assert_eq!(pool.stats().classes[1].total, 5010);
    assert_eq!(region.stats().segments.len(), 2);
    let mut core = pool.core(0).unwrap();
    let all: Vec<_> = (0..5010).map(|_| core.alloc(1).unwrap()).collect();
    assert!(core.alloc(1).is_err());
    for c in all {
        core.free(c);
    }
}

#[test]
fn bad_configs_are_refused() {
    let region = Region::heap(1 << 20);
    for classes in [
        vec![],
        vec![ClassConfig {
            chunk_size: 100,
            chunks: 1,
        }],
        vec![ClassConfig {
            chunk_size: 32,
            chunks: 1,
        }],
        vec![
            ClassConfig {
                chunk_size: 256,
                chunks: 1,
            },
            ClassConfig {
                chunk_size: 128,
                chunks: 1,
            },
        ],
    ] {
        assert!(matches!(
            Pool::create(&region, "p", &PoolConfig { classes }),
            Err(PoolError::Config(_))
        ));
    }
}

#[test]
fn attach_finds_the_pool_and_checks_its_header() {
    let config = small();
    let region = Region::heap(config.bytes() + 4096);
    let pool = Pool::create(&region, "pool", &config).unwrap();
    let again = Pool::attach(&region, "pool").unwrap();
    assert_eq!(again.stats(), pool.stats());
    assert!(Pool::attach(&region, "nope").is_err());
}

/// Longest generated sequence (Miri interprets every step: keep it short there).
const MAX_STEPS: usize = if cfg!(miri) { 40 } else { 300 };

#[derive(Debug, Clone)]
enum Op {
    Alloc { core: usize, class: usize },
    Free { index: usize },
    Pass { index: usize, to: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 0..2usize).prop_map(|(core, class)| Op::Alloc { core, class }),
        any::<usize>().prop_map(|index| Op::Free { index }),
        (any::<usize>(), 0..3usize).prop_map(|(index, to)| Op::Pass { index, to }),
    ]
}

proptest! {
    #![proptest_config(crate::testing::proptest_config())]

    /// Any sequence of allocs, frees and hand-overs between three cores
    /// never hands out a chunk twice, keeps contents intact, and ends with
    /// every chunk free again.
    #[test]
    fn alloc_free_sequences_keep_the_pool_consistent(ops in proptest::collection::vec(op(), 1..MAX_STEPS)) {
        let pool = heap_pool(&small());
        let mut cores: Vec<_> = (0..3).map(|c| pool.core(c).unwrap()).collect();
        let mut held: Vec<(usize, Chunk, u8)> = Vec::new();
        let mut stamp = 0u8;
        for op in ops {
            match op {
                Op::Alloc { core, class } => match cores[core].alloc(class) {
                    Ok(mut chunk) => {
                        stamp = stamp.wrapping_add(1);
                        pool.write(&mut chunk, &[stamp; 16]).unwrap();
                        held.push((core, chunk, stamp));
                    }
                    Err(PoolError::Exhausted { .. }) => {}
                    Err(e) => panic!("{e}"),
                },
                Op::Free { index } if !held.is_empty() => {
                    let (core, chunk, mark) = held.swap_remove(index % held.len());
                    prop_assert_eq!(pool.payload(&chunk), &[mark; 16][..]);
                    cores[core].free(chunk);
                }
                Op::Pass { index, to } if !held.is_empty() => {
                    let (core, chunk, mark) = held.swap_remove(index % held.len());
                    let raw = cores[core].send(chunk);
                    let chunk = cores[to].adopt(raw).unwrap();
                    held.push((to, chunk, mark));
                }
                _ => {}
            }
            let live: std::collections::HashSet<_> = held.iter().map(|(_, c, _)| c.offset()).collect();
            prop_assert_eq!(live.len(), held.len());
            let in_use: u64 = pool.stats().classes.iter().map(|c| c.in_use).sum();
            prop_assert_eq!(in_use, held.len() as u64);
        }
        for (core, chunk, _) in held {
            cores[core].free(chunk);
        }
        for class in pool.stats().classes {
            prop_assert_eq!(class.in_use, 0);
        }
    }
}
