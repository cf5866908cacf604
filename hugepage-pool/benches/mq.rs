//! Queue benchmarks: SPSC throughput against crossbeam's ArrayQueue and
//! std's sync_channel in the same run, and the eventfd wake-up round trip.
//! `cargo bench -p hugepage-pool --bench mq` (across processes: the
//! `ferrox-shm` tool's own bench).
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use crossbeam::queue::ArrayQueue;
use hugepage_pool::mq::{self, Consumer, Producer, Sleep};
use hugepage_pool::{Region, RegionOptions};

const MSG: usize = 64;
/// Queue depth in messages for every contender: 64 KiB of 64-byte messages
/// (72 bytes each with the ring's record header, so ferrox gets 128 KiB).
const DEPTH: usize = 1024;

fn region(tag: &str) -> Arc<Region> {
    let options = RegionOptions {
        size: 8 << 20,
        ..RegionOptions::default()
    };
    Region::create(&format!("bench-{tag}-{}", std::process::id()), &options).unwrap()
}

/// Moves `n` 64-byte messages from this thread to a consumer thread.
fn ferrox_spsc(region: &Arc<Region>, n: u64) -> Duration {
    let mut rx = Consumer::attach(region, "q").unwrap();
    let mut tx = Producer::attach(region, "q").unwrap();
    let consumer = std::thread::spawn(move || {
        let mut got = 0;
        let mut sum = 0u64;
        while got < n {
            if let Some(b) = rx.pop(|_, p| p[0]) {
                sum += b as u64;
                got += 1;
            } else {
                std::hint::spin_loop();
            }
        }
        sum
    });
    let start = Instant::now();
    let msg = [1u8; MSG];
    for _ in 0..n {
        while tx.push(1, &msg).is_err() {
            std::hint::spin_loop();
        }
    }
    consumer.join().unwrap();
    start.elapsed()
}

fn array_queue(n: u64) -> Duration {
    let q = Arc::new(ArrayQueue::<[u8; MSG]>::new(DEPTH));
    let rx = q.clone();
    let consumer = std::thread::spawn(move || {
        let mut got = 0;
        let mut sum = 0u64;
        while got < n {
            if let Some(m) = rx.pop() {
                sum += m[0] as u64;
                got += 1;
            } else {
                std::hint::spin_loop();
            }
        }
        sum
    });
    let start = Instant::now();
    for _ in 0..n {
        let mut msg = [1u8; MSG];
        while let Err(back) = q.push(msg) {
            msg = back;
            std::hint::spin_loop();
        }
    }
    consumer.join().unwrap();
    start.elapsed()
}

fn std_channel(n: u64) -> Duration {
    let (tx, rx) = std::sync::mpsc::sync_channel::<[u8; MSG]>(DEPTH);
    let consumer =
        std::thread::spawn(move || rx.iter().take(n as usize).map(|m| m[0] as u64).sum::<u64>());
    let start = Instant::now();
    for _ in 0..n {
        tx.send([1u8; MSG]).unwrap();
    }
    consumer.join().unwrap();
    start.elapsed()
}

fn spsc(c: &mut Criterion) {
    let region = region("spsc");
    mq::create_ring(&region, "q", (DEPTH * 128) as u64).unwrap();
    let mut group = c.benchmark_group("spsc 64B cross-thread");
    group
        .throughput(Throughput::Elements(1))
        .measurement_time(Duration::from_secs(4));
    group.bench_function("ferrox ring", |b| {
        b.iter_custom(|n| ferrox_spsc(&region, n))
    });
    group.bench_function("crossbeam ArrayQueue", |b| b.iter_custom(array_queue));
    group.bench_function("std sync_channel", |b| b.iter_custom(std_channel));
    group.finish();
}

/// Ping-pong between two threads that both sleep on their eventfd between
/// messages: half the round trip is one wake-up latency.
fn wakeup(c: &mut Criterion) {
    let region = region("wake");
    mq::create_ring(&region, "ping", 4096).unwrap();
    mq::create_ring(&region, "pong", 4096).unwrap();
    let mut group = c.benchmark_group("eventfd wake-up");
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("round trip, both sides asleep (= 2 wake-ups)", |b| {
        b.iter_custom(|n| {
            let ready = Arc::new(std::sync::Barrier::new(2));
            let echo = {
                let region = region.clone();
                let ready = ready.clone();
                std::thread::spawn(move || {
                    let mut rx = Consumer::attach(&region, "ping").unwrap();
                    let mut tx = Producer::attach(&region, "pong").unwrap();
                    ready.wait();
                    let mut seen = 0;
                    while seen < n {
                        match rx.pop(|tag, _| tag) {
                            Some(_) => {
                                seen += 1;
                                tx.push(1, b"pong").unwrap();
                            }
                            None => {
                                rx.wait(Duration::from_secs(1)).unwrap();
                            }
                        }
                    }
                })
            };
            ready.wait();
            let mut tx = Producer::attach(&region, "ping").unwrap();
            let mut rx = Consumer::attach(&region, "pong").unwrap();
            let start = Instant::now();
            for _ in 0..n {
                tx.push(1, b"ping").unwrap();
                while rx.pop(|_, _| ()).is_none() {
                    rx.wait(Duration::from_secs(1)).unwrap();
                }
            }
            let elapsed = start.elapsed();
            drop((tx, rx));
            echo.join().unwrap();
            elapsed
        })
    });
    group.finish();
}

criterion_group!(benches, spsc, wakeup);
criterion_main!(benches);
