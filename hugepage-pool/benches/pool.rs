//! Chunk pool micro-benchmarks: the per-request allocation path.
//! `cargo bench -p hugepage-pool --bench pool`
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hugepage_pool::pool::{ClassConfig, Node, Pool, PoolConfig};
use hugepage_pool::{Region, RegionOptions};

fn pool(name: &str) -> Pool {
    let config = PoolConfig {
        classes: vec![
            ClassConfig {
                chunk_size: 256,
                chunks: 4096,
            },
            ClassConfig {
                chunk_size: 2048,
                chunks: 1024,
            },
        ],
    };
    // Real shared memory (hugepages when the machine has them), as in production.
    let options = RegionOptions {
        size: config.bytes() + (1 << 20),
        ..RegionOptions::default()
    };
    let region = Region::create(&format!("bench-{name}-{}", std::process::id()), &options).unwrap();
    Pool::create(&region, "pool", &config).unwrap()
}

fn alloc_free(c: &mut Criterion) {
    let pool = pool("alloc");
    let mut core = pool.core(0).unwrap();
    let mut group = c.benchmark_group("pool");
    group.throughput(Throughput::Elements(1));
    group.bench_function("alloc+free 256B chunk", |b| {
        b.iter(|| {
            let chunk = core.alloc(black_box(0)).unwrap();
            core.free(black_box(chunk));
        })
    });
    group.bench_function("alloc+free x64 (cache refill/give-back)", |b| {
        let mut held = Vec::with_capacity(64);
        b.iter(|| {
            for _ in 0..64 {
                held.push(core.alloc(0).unwrap());
            }
            for chunk in held.drain(..) {
                core.free(chunk);
            }
        })
    });
    let data = vec![7u8; 16 << 10];
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("node append 16 KiB in 2 KiB chunks + free", |b| {
        b.iter(|| {
            let mut node = Node::new(1);
            core.append(&mut node, black_box(&data)).unwrap();
            core.free_node(node);
        })
    });
    group.finish();
}

criterion_group!(benches, alloc_free);
criterion_main!(benches);
