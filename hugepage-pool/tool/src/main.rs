//! `ferrox-shm`: inspect and exercise a ferrox shared-memory region.
//!
//! `show` prints a region's segments, directory and pool counters.
//! `produce` / `consume` attach to a ring or fan-in by name and move
//! sequence-numbered messages (optionally each carrying a pool chunk); they
//! are the peers of the cross-process tests and of `demo`, which runs the
//! whole thing across three processes while the region grows.
#![allow(clippy::disallowed_methods)] // a command-line tool may sleep

use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hugepage_pool::mq::{self, fanin, PushError, Sleep};
use hugepage_pool::pool::{ClassConfig, CoreCache, Pool, PoolConfig, PoolError};
use hugepage_pool::{Backing, Offset, Region, RegionOptions};

#[derive(Parser, Debug)]
#[command(version, about = "Inspect and exercise a ferrox shared-memory region")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print segments, directory and pool counters of a region.
    Show { region: String },
    /// Send COUNT sequence-numbered messages into a ring or fan-in.
    Produce(Peer),
    /// Receive COUNT messages, check order and content, print a summary.
    Consume(Peer),
    /// Create a region, then move messages and chunks between two other
    /// processes while the region grows.
    Demo {
        #[arg(long, default_value_t = 2_000_000)]
        messages: u64,
        #[arg(long, default_value = "auto", value_parser = parse_backing)]
        backing: Backing,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct Peer {
    #[arg(long)]
    region: String,
    /// Name of the ring (or, with --fanin, of the fan-in).
    #[arg(long)]
    queue: String,
    #[arg(long)]
    fanin: bool,
    #[arg(long)]
    count: u64,
    /// Attach to this pool and carry one chunk per message.
    #[arg(long)]
    pool: Option<String>,
    /// Core slot to claim in the pool.
    #[arg(long, default_value_t = 0)]
    core: usize,
    /// With --pool, the consumer keeps every chunk until the end (forces
    /// the pool to grow under a producer that needs more).
    #[arg(long)]
    hold: bool,
    /// Sequence numbers start here (several producers into one fan-in).
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

fn parse_backing(s: &str) -> std::result::Result<Backing, String> {
    match s {
        "auto" => Ok(Backing::Auto),
        "hugepages" => Ok(Backing::Hugepages),
        "shm" => Ok(Backing::Shm),
        _ => Err(format!("unknown backing {s:?} (auto, hugepages, shm)")),
    }
}

/// Tag of a message that carries a chunk offset.
const TAG_CHUNK: u32 = 1;
/// Tag of a message that carries its sequence number inline.
const TAG_INLINE: u32 = 2;

fn main() -> ExitCode {
    // Logging to stderr: nothing to open, so nothing can fail.
    let _ = ferrox_log::init(ferrox_log::Options::default());
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrox-shm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Show { region } => show(&Region::attach(&region, &RegionOptions::default())?),
        Cmd::Produce(peer) => produce(&peer),
        Cmd::Consume(peer) => consume(&peer).map(|summary| println!("{summary}")),
        Cmd::Demo { messages, backing } => demo(messages, backing),
    }
}

fn show(region: &Arc<Region>) -> Result<()> {
    let stats = region.stats();
    println!(
        "region {}  generation {}  {} segment(s)",
        stats.name,
        stats.generation,
        stats.segments.len()
    );
    for s in &stats.segments {
        let backing = if s.hugepages { "hugepages" } else { "shm" };
        println!(
            "  segment {:>2}  {:>10} bytes  {:>10} used  {backing}",
            s.id, s.size, s.used
        );
    }
    for entry in region.entries() {
        println!(
            "  {:<20} {:>14}  kind {:#010x} v{}",
            entry.name,
            entry.offset.to_string(),
            entry.kind,
            entry.version
        );
        if entry.kind == hugepage_pool::pool::KIND {
            for (class, c) in Pool::attach(region, &entry.name)?
                .stats()
                .classes
                .iter()
                .enumerate()
            {
                println!(
                    "      class {class}: {:>6}-byte chunks  total {:>8}  in use {:>8}  free {:>8}  high water {:>8}",
                    c.chunk_size, c.total, c.in_use, c.free, c.high_water
                );
            }
        }
    }
    Ok(())
}

fn attach(peer: &Peer) -> Result<(Arc<Region>, Option<CoreCache>)> {
    let region = Region::attach(&peer.region, &RegionOptions::default())?;
    let cache = match &peer.pool {
        Some(name) => Some(Pool::attach(&region, name)?.core(peer.core)?),
        None => None,
    };
    Ok((region, cache))
}

fn produce(peer: &Peer) -> Result<()> {
    let (region, mut cache) = attach(peer)?;
    let mut tx = if peer.fanin {
        fanin::producer(&region, &peer.queue)?
    } else {
        mq::Producer::attach(&region, &peer.queue)?
    };
    let deadline = Instant::now() + Duration::from_secs(peer.timeout);
    for seq in peer.first..peer.first + peer.count {
        let (tag, word) = match cache.as_mut() {
            Some(cache) => {
                let mut chunk = loop {
                    match cache.alloc(0) {
                        Ok(chunk) => break chunk,
                        // Out of chunks: wait for the consumer to free some or
                        // for the owner to grow the pool.
                        Err(PoolError::Exhausted { .. }) => wait(deadline, "a free chunk")?,
                        Err(e) => return Err(e.into()),
                    }
                };
                cache.pool().write(&mut chunk, &payload(seq))?;
                (TAG_CHUNK, cache.send(chunk).to_raw())
            }
            None => (TAG_INLINE, seq),
        };
        loop {
            match tx.push(tag, &word.to_le_bytes()) {
                Ok(()) => break,
                Err(PushError::Full) => wait(deadline, "room in the queue")?,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

fn wait(deadline: Instant, what: &str) -> Result<()> {
    if Instant::now() > deadline {
        bail!("timed out waiting for {what}");
    }
    std::thread::sleep(Duration::from_micros(50));
    Ok(())
}

/// The bytes message `seq` carries in its chunk.
fn payload(seq: u64) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[..8].copy_from_slice(&seq.to_le_bytes());
    p[8..16].copy_from_slice(&(!seq).to_le_bytes());
    p[16..].copy_from_slice(b"ferrox!!");
    p
}

/// What a consumer saw, printed as one line the tests parse.
#[derive(Debug, Default)]
struct Summary {
    received: u64,
    sum: u64,
    sleeps: u64,
    segments_seen: u16,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "received={} sum={} sleeps={} max_segment={}",
            self.received, self.sum, self.sleeps, self.segments_seen
        )
    }
}

fn consume(peer: &Peer) -> Result<Summary> {
    let (region, mut cache) = attach(peer)?;
    enum Rx {
        One(mq::Consumer),
        Many(fanin::Consumer),
    }
    let mut rx = if peer.fanin {
        Rx::Many(fanin::Consumer::attach(&region, &peer.queue)?)
    } else {
        Rx::One(mq::Consumer::attach(&region, &peer.queue)?)
    };
    let deadline = Instant::now() + Duration::from_secs(peer.timeout);
    let mut summary = Summary::default();
    let mut held = Vec::new();
    let mut next_inline = peer.first;
    let mut failure: Option<String> = None;
    while summary.received < peer.count {
        let handle = |tag: u32, bytes: &[u8]| {
            (
                tag,
                u64::from_le_bytes(bytes.try_into().unwrap_or_default()),
            )
        };
        let got = match &mut rx {
            Rx::One(c) => c.pop(handle),
            Rx::Many(c) => c.pop(handle),
        };
        let Some((tag, word)) = got else {
            if Instant::now() > deadline {
                bail!(
                    "timed out after {} of {} messages",
                    summary.received,
                    peer.count
                );
            }
            summary.sleeps += 1;
            match &mut rx {
                Rx::One(c) => c.wait(Duration::from_millis(100))?,
                Rx::Many(c) => c.wait(Duration::from_millis(100))?,
            };
            continue;
        };
        summary.received += 1;
        match (tag, cache.as_mut()) {
            (TAG_CHUNK, Some(cache)) => {
                let offset = Offset::from_raw(word);
                summary.segments_seen = summary.segments_seen.max(offset.segment());
                let chunk = cache.adopt(offset)?;
                let bytes = cache.pool().payload(&chunk);
                let seq = u64::from_le_bytes(bytes[..8].try_into()?);
                if bytes != payload(seq) {
                    failure.get_or_insert(format!("chunk {offset} carries a damaged payload"));
                }
                summary.sum = summary.sum.wrapping_add(seq);
                if peer.hold {
                    held.push(chunk);
                } else {
                    cache.free(chunk);
                }
            }
            (TAG_INLINE, None) => {
                if !peer.fanin && word != next_inline {
                    failure.get_or_insert(format!("expected message {next_inline}, got {word}"));
                }
                next_inline = word + 1;
                summary.sum = summary.sum.wrapping_add(word);
            }
            (tag, _) => bail!("unexpected message tag {tag}"),
        }
    }
    if let Some(cache) = cache.as_mut() {
        for chunk in held {
            cache.free(chunk);
        }
    }
    match failure {
        Some(f) => bail!("{f}"),
        None => Ok(summary),
    }
}

fn demo(messages: u64, backing: Backing) -> Result<()> {
    let name = format!("demo-{}", std::process::id());
    let start_chunks = 4096;
    let config = PoolConfig {
        classes: vec![ClassConfig {
            chunk_size: 256,
            chunks: start_chunks,
        }],
    };
    let options = RegionOptions {
        size: config.bytes() + (8 << 20),
        backing,
        ..RegionOptions::default()
    };
    let region = Region::create(&name, &options)?;
    let pool = Pool::create(&region, "chunks", &config)?;
    mq::create_ring(&region, "work", 1 << 20)?;
    println!("== created region {name}: chunk pool of {start_chunks} 256-byte chunks, 1 MiB ring");
    show(&region)?;

    let exe = std::env::current_exe().context("locating ferrox-shm")?;
    let peer = |role: &str, core: &str| {
        let mut cmd = Command::new(&exe);
        cmd.args([
            role, "--region", &name, "--queue", "work", "--pool", "chunks", "--core", core,
            "--hold",
        ])
        .args(["--count", &messages.to_string()]);
        cmd
    };
    let started = Instant::now();
    let consumer = peer("consume", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut producer = peer("produce", "0").spawn()?;
    println!(
        "\n== producer pid {} -> ring -> consumer pid {}; the consumer holds every chunk,",
        producer.id(),
        consumer.id()
    );
    println!("   so the producer runs dry after {start_chunks} messages until this process grows the region");
    let mut grown = 0u64;
    while producer.try_wait()?.is_none() {
        let stats = pool.stats();
        if stats.classes[0].free < 1024 && grown < messages {
            let add = (messages - grown).min(500_000) as u32;
            pool.add_chunks(0, add)?;
            grown += add as u64;
            let r = region.stats();
            println!(
                "   grew: +{add} chunks (region now {} segments, {} MiB); in use {}",
                r.segments.len(),
                r.size() >> 20,
                stats.classes[0].in_use
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let output = consumer.wait_with_output()?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!("consumer failed");
    }
    let summary = String::from_utf8_lossy(&output.stdout);
    let expected: u64 = (0..messages).sum();
    println!("\n== consumer: {}", summary.trim());
    if !summary.contains(&format!("received={messages} sum={expected} ")) {
        bail!("messages were lost or damaged (expected sum {expected})");
    }
    println!(
        "== {messages} messages with one chunk each in {:.2} s ({:.2} M msg/s), nothing lost",
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64() / 1e6
    );
    println!();
    show(&region)?;
    Ok(())
}
