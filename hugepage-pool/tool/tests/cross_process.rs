//! Several real processes attached to one region by name: rings, fan-ins,
//! chunks handed across, and the region growing under them.
#![allow(clippy::disallowed_methods)]

use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hugepage_pool::mq;
use hugepage_pool::pool::{ClassConfig, Pool, PoolConfig};
use hugepage_pool::{Backing, Region, RegionOptions};

const TOOL: &str = env!("CARGO_BIN_EXE_ferrox-shm");

fn unique(tag: &str) -> String {
    format!("x{}-{tag}", std::process::id())
}

/// Kills and reaps a child process if the test ends early.
struct Peer(Option<Child>);

impl Peer {
    fn spawn(args: &[&str]) -> Peer {
        let child = Command::new(TOOL)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Peer(Some(child))
    }

    fn running(&mut self) -> bool {
        self.0.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    fn finish(mut self) -> Output {
        let output = self.0.take().unwrap().wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "peer failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn summary(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Waits for `consumer` and checks that it received the values 0 to
/// `count - 1`, each once; returns its summary line.
fn received_all(consumer: Peer, count: u64) -> String {
    let line = summary(&consumer.finish());
    let sum: u64 = (0..count).sum();
    assert!(
        line.starts_with(&format!("received={count} sum={sum} ")),
        "{line}"
    );
    line
}

fn region(name: &str, size: u64, backing: Backing) -> Arc<Region> {
    Region::create(
        name,
        &RegionOptions {
            size,
            backing,
            ..RegionOptions::default()
        },
    )
    .unwrap()
}

/// The owner grows the region and the pool while a producer process and a
/// consumer process keep moving chunks through a ring; the producer can only
/// finish on memory that did not exist when it attached.
#[test]
fn the_region_grows_while_other_processes_produce_and_consume() {
    let name = unique("grow");
    let count: u64 = 60_000;
    let config = PoolConfig {
        classes: vec![ClassConfig {
            chunk_size: 256,
            chunks: 2000,
        }],
    };
    let region = region(&name, config.bytes() + (2 << 20), Backing::Auto);
    let pool = Pool::create(&region, "chunks", &config).unwrap();
    mq::create_ring(&region, "work", 64 << 10).unwrap();

    let n = count.to_string();
    let args = |role| {
        vec![
            role, "--region", &name, "--queue", "work", "--pool", "chunks", "--hold", "--count", &n,
        ]
    };
    let consumer = Peer::spawn(&[args("consume"), vec!["--core", "1"]].concat());
    let mut producer = Peer::spawn(&[args("produce"), vec!["--core", "0"]].concat());

    // The consumer holds every chunk, so the producer stalls once the
    // initial 2000 are out; only growth lets it go on.
    let deadline = Instant::now() + Duration::from_secs(60);
    while pool.stats().classes[0].free > 0 {
        assert!(
            Instant::now() < deadline,
            "producer never used up the initial chunks"
        );
        assert!(
            producer.running(),
            "producer finished without the grown memory"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    for _ in 0..2 {
        region.grow(8 << 20).unwrap();
        pool.add_chunks(0, 30_000).unwrap();
    }
    assert!(region.stats().segments.len() >= 3);

    producer.finish();
    let line = received_all(consumer, count);
    let max_segment: u16 = line.rsplit('=').next().unwrap().parse().unwrap();
    assert!(
        max_segment >= 1,
        "the consumer received chunks from a grown segment: {line}"
    );
    let stats = pool.stats().classes[0].clone();
    assert_eq!(stats.in_use, 0, "every chunk came back: {stats:?}");
    assert_eq!(stats.total, 62_000);
}

/// Inline messages between two other processes, the consumer sleeping on
/// its eventfd whenever the ring is empty and woken through pidfd_getfd.
#[test]
fn a_consumer_process_sleeps_and_is_woken_by_a_producer_process() {
    let name = unique("wake");
    let region = region(&name, 4 << 20, Backing::Shm);
    mq::create_ring(&region, "q", 4096).unwrap();
    let consumer = Peer::spawn(&[
        "consume", "--region", &name, "--queue", "q", "--count", "20000",
    ]);
    std::thread::sleep(Duration::from_millis(200)); // let it fall asleep first
    Peer::spawn(&[
        "produce", "--region", &name, "--queue", "q", "--count", "20000",
    ])
    .finish();
    received_all(consumer, 20_000);
}

#[test]
fn two_producer_processes_feed_one_fanin() {
    let name = unique("fanin");
    let region = region(&name, 4 << 20, Backing::Shm);
    mq::fanin::create(&region, "in", 2, 8192).unwrap();
    let consumer = Peer::spawn(&[
        "consume", "--region", &name, "--queue", "in", "--fanin", "--count", "20000",
    ]);
    let a = Peer::spawn(&[
        "produce", "--region", &name, "--queue", "in", "--fanin", "--count", "10000",
    ]);
    let b = Peer::spawn(&[
        "produce", "--region", &name, "--queue", "in", "--fanin", "--count", "10000", "--first",
        "10000",
    ]);
    a.finish();
    b.finish();
    received_all(consumer, 20_000);
}

#[test]
fn a_second_consumer_process_is_refused_while_the_first_lives() {
    let name = unique("busy");
    let region = region(&name, 4 << 20, Backing::Shm);
    mq::create_ring(&region, "q", 4096).unwrap();
    let _held = mq::Consumer::attach(&region, "q").unwrap();
    let output = Command::new(TOOL)
        .args(["consume", "--region", &name, "--queue", "q", "--count", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("consumer end") && err.contains(&std::process::id().to_string()),
        "{err}"
    );
}

#[test]
fn attaching_to_a_missing_region_fails_with_a_clear_error() {
    let output = Command::new(TOOL)
        .args(["show", &unique("nothing")])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("no region named"), "{err}");
}
