//! Key placement costs: each hash function on a 16-byte key, and a whole
//! lookup (hash plus distribution) per distribution and pool size.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferrox_route::{Distribution, HashFn, Server, Table};

fn pool(n: usize) -> Vec<Server> {
    (0..n)
        .map(|i| Server::new(format!("10.0.{}.{}:6379", i / 250, i % 250 + 1), 1))
        .collect()
}

/// Distinct keys per lookup bench, a power of two so cycling through them
/// costs a mask.
const KEYS: usize = 1024;

/// Distinct 16-byte keys, so lookups do not all take one cached path.
fn keys() -> Vec<[u8; 16]> {
    (0..KEYS as u32)
        .map(|i| {
            let mut key = *b"user:0000000000a";
            key[5..15].copy_from_slice(format!("{:010}", i.wrapping_mul(2_654_435_761)).as_bytes());
            key
        })
        .collect()
}

fn hash_functions(c: &mut Criterion) {
    let mut group = c.benchmark_group("route/hash");
    group.throughput(Throughput::Bytes(16));
    let key = b"user:1234567890a";
    for hash in HashFn::ALL {
        group.bench_function(hash.name(), |b| b.iter(|| hash.hash(black_box(key))));
    }
    group.finish();
}

fn lookups(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("route/server_for");
    group.throughput(Throughput::Elements(1));
    for distribution in [
        Distribution::Ketama,
        Distribution::Modula,
        Distribution::Jump,
    ] {
        for n in [4, 64] {
            let servers = pool(n);
            let table = Table::build(
                HashFn::Fnv1a_64,
                distribution,
                None,
                &servers,
                &vec![true; n],
            )
            .expect("valid pool");
            let id = BenchmarkId::new(format!("{}/fnv1a_64", distribution.name()), n);
            group.bench_with_input(id, &table, |b, table| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % KEYS;
                    table.server_for(black_box(&keys[i]), 0)
                })
            });
        }
    }
    group.finish();
}

fn builds(c: &mut Criterion) {
    let mut group = c.benchmark_group("route/build");
    for n in [4, 64] {
        let servers = pool(n);
        let live = vec![true; n];
        group.bench_with_input(BenchmarkId::new("ketama", n), &servers, |b, servers| {
            b.iter(|| Table::build(HashFn::Md5, Distribution::Ketama, None, servers, &live))
        });
    }
    group.finish();
}

criterion_group!(benches, hash_functions, lookups, builds);
criterion_main!(benches);
