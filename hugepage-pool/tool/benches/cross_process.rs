//! A ring whose consumer is another process (the `ferrox-shm` tool),
//! found by name. `cargo bench -p ferrox-shm`
#![allow(clippy::disallowed_methods)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hugepage_pool::mq::{self, Consumer, Producer};
use hugepage_pool::{Region, RegionOptions};

/// A consumer in another process (the ferrox-shm tool), found by name.
fn cross_process(c: &mut Criterion) {
    let options = RegionOptions {
        size: 8 << 20,
        ..RegionOptions::default()
    };
    let region = Region::create(&format!("bench-xproc-{}", std::process::id()), &options).unwrap();
    mq::create_ring(&region, "q", 1 << 20).unwrap();
    let tool = env!("CARGO_BIN_EXE_ferrox-shm");
    let mut group = c.benchmark_group("cross-process");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .measurement_time(Duration::from_secs(6));
    group.bench_function(
        "ferrox ring, 8B messages, consumer in another process",
        |b| {
            b.iter_custom(|n| {
                let n = n.max(1);
                let mut child = Command::new(tool)
                    .args([
                        "consume",
                        "--region",
                        region.name(),
                        "--queue",
                        "q",
                        "--count",
                        &n.to_string(),
                    ])
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap();
                // Wait until the consumer holds its end, then time the stream.
                let mut tx = Producer::attach(&region, "q").unwrap();
                while Consumer::attach(&region, "q").is_ok() {
                    std::thread::sleep(Duration::from_micros(200));
                }
                let start = Instant::now();
                for seq in 0..n {
                    while tx.push(2, &seq.to_le_bytes()).is_err() {
                        std::hint::spin_loop();
                    }
                }
                drop(tx);
                assert!(child.wait().unwrap().success());
                start.elapsed()
            })
        },
    );
    group.finish();
}

criterion_group!(benches, cross_process);
criterion_main!(benches);
