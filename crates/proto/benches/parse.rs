//! Request parsing and reply framing, per message: RESP and memcached.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferrox_proto::{memcache, resp};

fn resp_paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("resp");
    group.throughput(Throughput::Elements(1));
    let limits = resp::Limits::default();
    let mut args = Vec::with_capacity(16);
    let get = b"*2\r\n$3\r\nGET\r\n$16\r\nkey:000000012345\r\n";
    group.bench_function("parse GET", |b| {
        b.iter(|| resp::parse_request(black_box(get), &limits, &mut args))
    });
    let set = [
        &b"*3\r\n$3\r\nSET\r\n$16\r\nkey:000000012345\r\n$1024\r\n"[..],
        &[b'x'; 1024],
        b"\r\n",
    ]
    .concat();
    group.bench_function("parse SET 1 KiB", |b| {
        b.iter(|| resp::parse_request(black_box(&set), &limits, &mut args))
    });
    let reply = b"*3\r\n$5\r\nhello\r\n$-1\r\n:42\r\n";
    group.bench_function("reply_len array of 3", |b| {
        b.iter(|| resp::reply_len(black_box(reply), &limits))
    });
    group.finish();
}

fn memcache_paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("memcache");
    group.throughput(Throughput::Elements(1));
    let limits = memcache::Limits::default();
    let mut req = memcache::Request::new();
    let get = b"get key:000000012345\r\n";
    group.bench_function("parse get", |b| {
        b.iter(|| memcache::parse_request(black_box(get), &limits, &mut req))
    });
    let set = b"set key:000000012345 0 0 5\r\nhello\r\n";
    group.bench_function("parse set", |b| {
        b.iter(|| memcache::parse_request(black_box(set), &limits, &mut req))
    });
    let reply = b"VALUE key:000000012345 0 5\r\nhello\r\nEND\r\n";
    group.bench_function("reply_len retrieval", |b| {
        b.iter(|| memcache::reply_len(black_box(reply), memcache::ReplyKind::Retrieval, &limits))
    });
    group.finish();
}

criterion_group!(benches, resp_paths, memcache_paths);
criterion_main!(benches);
