//! The dataplane's side of a hot handover between processes.
//!
//! The old process drains and exports every client connection (each core
//! its own, [`crate::net::stack::Stack::export`]), writes them to the
//! handover file, closes its port and exits with [`EXIT_HANDED_OVER`]. The
//! new one, started in standby (EAL up, port not yet opened) by the
//! control process, is told to go once the old one has exited: it opens
//! the port, and each core restores the records whose flow it owns before
//! it reads its first frame. Should the new one fail before it has
//! restored them, the control process starts the old binary again, which
//! finds the same file and restores it: that is the rollback.
//!
//! The file is written once by a process that then exits, and read once
//! by its successor, so it needs no atomics: it is written to a temporary
//! name and renamed into place (a reader sees all of it or nothing), and
//! removed by the process that restored it. Its contents are the
//! versioned records of [`ferrox_handover::record`] and their streams.
//!
//! The control process and the dataplane talk over two inherited pipes:
//! the dataplane reports `standby` and `committed …` lines on
//! `FERROX_NOTIFY_FD`, and reads `go` on `FERROX_GO_FD` (end of file: the
//! upgrade was called off).

use std::io::{BufRead, Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use ferrox_block::{Block, Step};

use crate::ffi::RxBurst;
use crate::net::stack::Export;
use crate::port::{Port, BURST};

/// The exit status of a dataplane that handed its connections over.
pub const EXIT_HANDED_OVER: i32 = 75;

/// The file's first bytes, and the layout version after them.
const MAGIC: &[u8; 8] = b"FXHOVER1";
const LAYOUT: u16 = 1;
const HEADER: usize = 38;

/// What the successor must share with the exporter for the connections to
/// carry over: the peers keep sending to this MAC and address, in
/// segments up to the MSS this MTU announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub mac: [u8; 6],
    pub address: [u8; 4],
    pub mtu: u16,
}

/// Writes `exports` (one per core) to `path`, whole or not at all.
pub fn write(path: &Path, facts: Facts, exports: &[Export]) -> Result<usize> {
    let mut all = Export::default();
    for export in exports {
        all.extend(export);
    }
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&LAYOUT.to_be_bytes());
    header.extend_from_slice(&facts.mac);
    header.extend_from_slice(&facts.address);
    header.extend_from_slice(&facts.mtu.to_be_bytes());
    header.extend_from_slice(&(all.records.len() as u64).to_be_bytes());
    header.extend_from_slice(&(all.streams.len() as u64).to_be_bytes());
    debug_assert_eq!(header.len(), HEADER);
    let tmp = path.with_extension("tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for part in [&header, &all.records, &all.streams] {
        file.write_all(part)?;
    }
    // No fsync: the reader is the next process on this machine, which the
    // rename alone makes see all of it or nothing; should the machine go
    // down, the connections the file describes are gone anyway. (An fsync
    // here sat inside the blackout.)
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(all.len())
}

/// Reads a handover file: `None` when there is none.
pub fn read(path: &Path) -> Result<Option<(Facts, Export)>> {
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut file) => file.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    parse(&bytes)
        .map(Some)
        .with_context(|| format!("handover file {}", path.display()))
}

fn parse(bytes: &[u8]) -> Result<(Facts, Export)> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        bail!("not a handover file");
    }
    let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("eight bytes"));
    let layout = u16::from_be_bytes([bytes[8], bytes[9]]);
    if layout != LAYOUT {
        bail!("layout {layout}; this binary reads {LAYOUT}");
    }
    let facts = Facts {
        mac: bytes[10..16].try_into().expect("six bytes"),
        address: bytes[16..20].try_into().expect("four bytes"),
        mtu: u16::from_be_bytes([bytes[20], bytes[21]]),
    };
    let (records, streams) = (u64_at(22) as usize, u64_at(30) as usize);
    let body = &bytes[HEADER..];
    if records.checked_add(streams) != Some(body.len()) {
        bail!(
            "{} bytes after the header, {records} + {streams} announced",
            body.len()
        );
    }
    let export = Export {
        records: body[..records].to_vec(),
        streams: body[records..].to_vec(),
    };
    Ok((facts, export))
}

/// The pipe an environment variable names, opened through `/proc` (no
/// file descriptor is taken over by hand).
fn inherited(var: &str, write: bool) -> Option<std::fs::File> {
    let fd: u32 = std::env::var(var).ok()?.parse().ok()?;
    std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open(format!("/proc/self/fd/{fd}"))
        .map_err(|e| tracing::warn!("{var}={fd}: {e}"))
        .ok()
}

/// Tells the control process `text`, a line on `FERROX_NOTIFY_FD` (like
/// stdout, one channel per process); nothing without one.
pub fn notify(text: &str) {
    static PIPE: std::sync::OnceLock<std::sync::Mutex<Option<std::fs::File>>> =
        std::sync::OnceLock::new();
    let pipe = PIPE.get_or_init(|| std::sync::Mutex::new(inherited("FERROX_NOTIFY_FD", true)));
    if let Some(file) = pipe.lock().expect("not poisoned").as_mut() {
        let _ = writeln!(file, "{text}");
    }
}

/// The control process's `go` (`FERROX_GO_FD`), read on a thread of its
/// own so that a standby process can tend its port meanwhile. `false`
/// means the upgrade was called off (end of file) or there is no pipe.
#[derive(Debug)]
pub struct GoSignal {
    answer: std::sync::mpsc::Receiver<bool>,
    got: std::cell::Cell<Option<bool>>,
}

impl GoSignal {
    pub fn listen() -> GoSignal {
        let (send, answer) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let go = inherited("FERROX_GO_FD", false).is_some_and(|file| {
                let mut line = String::new();
                matches!(std::io::BufReader::new(file).read_line(&mut line), Ok(n) if n > 0 && line.trim() == "go")
            });
            let _ = send.send(go);
        });
        GoSignal {
            answer,
            got: std::cell::Cell::new(None),
        }
    }

    fn poll(&self) -> Option<bool> {
        if self.got.get().is_none() {
            match self.answer.try_recv() {
                Ok(go) => self.got.set(Some(go)),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => self.got.set(Some(false)),
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
        }
        self.got.get()
    }

    /// Whether the answer (go, or called off) came.
    pub fn arrived(&self) -> bool {
        self.poll().is_some()
    }

    /// Waits for the answer: go or not.
    pub fn wait(&self) -> bool {
        if let Some(go) = self.poll() {
            return go;
        }
        let go = self.answer.recv().unwrap_or(false);
        self.got.set(Some(go));
        go
    }
}

/// A standby successor that opened its port beside its predecessor's
/// (af_packet: each socket gets a copy of every frame) reads and drops
/// what arrives while the predecessor still serves it, until the board
/// says the predecessor froze (or the control process answered); from
/// then on frames wait in the port's ring for the restored connections.
/// Returns the frames dropped. A start-up step, before any core runs.
pub fn discard_until_frozen(port: &mut Port, board: Option<&Block>, go: &GoSignal) -> u64 {
    let Some(board) = board else {
        return 0;
    };
    board.stamp(Step::Overlapping);
    let mut rx = RxBurst::<BURST>::default();
    let mut queues = port.queues();
    let mut discarded = 0u64;
    while !board.stamped(Step::Frozen) && !go.arrived() {
        let mut received = 0;
        for queue in &mut queues {
            received += queue.rx_burst(&mut rx);
            rx.clear();
        }
        discarded += received as u64;
        if received == 0 {
            // A short nap: the predecessor polls on the same machine. What
            // arrives meanwhile is its to serve until it freezes.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
    }
    // From here on frames stay in the ring; the predecessor's cores read
    // their queues once more after seeing this.
    board.stamp(Step::Listening);
    discarded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_round_trips_and_a_damaged_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("ferrox-handover-test-{}", std::process::id()));
        let facts = Facts {
            mac: [2, 0, 0, 0, 0, 1],
            address: [198, 18, 0, 2],
            mtu: 1500,
        };
        let one = Export {
            records: Vec::new(),
            streams: Vec::new(),
        };
        assert_eq!(write(&dir, facts, &[one.clone(), one]).unwrap(), 0);
        let (read_facts, export) = read(&dir).unwrap().unwrap();
        assert_eq!(read_facts, facts);
        assert!(export.is_empty());
        let mut bytes = std::fs::read(&dir).unwrap();
        bytes.push(0);
        assert!(parse(&bytes).is_err(), "a byte too many");
        bytes[8] = 9;
        assert!(parse(&bytes).unwrap_err().to_string().contains("layout"));
        std::fs::remove_file(&dir).unwrap();
        assert!(read(&dir).unwrap().is_none());
    }
}
