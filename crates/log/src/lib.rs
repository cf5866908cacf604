//! The one logging setup of ferrox's binaries: events go to stderr, or
//! to a file (`--log-file`, appended to, opened again by [`reopen`] after
//! logrotate moved it), filtered by `--log-level` or else `RUST_LOG`
//! (default `info`), with ANSI colours only when stderr is a terminal
//! (journald and log files get plain text), or as JSON lines when asked.
//! The filter can be changed while the process runs ([`set_level`]).

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{OnceLock, RwLock, RwLockReadGuard};

use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// How a binary logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// One JSON object per line.
    pub json: bool,
    /// Show each event's module path.
    pub targets: bool,
    /// The filter to start with (`info`, `debug`, `warn,ferrox_dataplane=debug`,
    /// …); `None`: `RUST_LOG`, else `info`.
    pub level: Option<String>,
    /// Append to this file instead of writing to stderr.
    pub file: Option<PathBuf>,
}

/// The log file, and the path to open again.
#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: RwLock<File>,
}

static LOG_FILE: OnceLock<LogFile> = OnceLock::new();

fn open_append(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Each event's writer: the current file, held for the event's one write
/// (a reopen waits for it, so no event is split between two files).
#[derive(Debug, Clone, Copy)]
struct FileWriter(&'static LogFile);

struct FileGuard(RwLockReadGuard<'static, File>);

impl Write for FileGuard {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        (&*self.0).flush()
    }
}

impl<'a> MakeWriter<'a> for FileWriter {
    type Writer = FileGuard;

    fn make_writer(&'a self) -> FileGuard {
        // A writer that panicked mid-event left the file as it was.
        FileGuard(self.0.file.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Opens the log file again at its path (after logrotate moved the old
/// one away); `Ok(None)` when the process logs to stderr.
pub fn reopen() -> std::io::Result<Option<&'static Path>> {
    let Some(log) = LOG_FILE.get() else {
        return Ok(None);
    };
    let file = open_append(&log.path)?;
    *log.file.write().unwrap_or_else(|e| e.into_inner()) = file;
    Ok(Some(&log.path))
}

/// The handle that swaps the running filter.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the process-wide subscriber; call once, first thing in `main`.
/// A `level` that is not a valid filter falls back to `info`, with a
/// warning once logging runs. Fails only when the log file cannot be
/// opened.
pub fn init(options: Options) -> std::io::Result<()> {
    let (filter, refused) = match &options.level {
        Some(level) => match parse(level) {
            Ok(filter) => (filter, None),
            Err(why) => (EnvFilter::new("info"), Some(why)),
        },
        None => (
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
            None,
        ),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let _ = FILTER.set(handle);
    let writer = match &options.file {
        Some(path) => {
            let file = open_append(path)?;
            let log = LOG_FILE.get_or_init(|| LogFile {
                path: path.clone(),
                file: RwLock::new(file),
            });
            BoxMakeWriter::new(FileWriter(log))
        }
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(options.targets)
        .with_ansi(options.file.is_none() && std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    if options.json {
        registry.with(fmt.json()).init();
    } else {
        registry.with(fmt).init();
    }
    if let Some(why) = refused {
        tracing::warn!("--log-level: {why}; logging at info");
    }
    Ok(())
}

/// A filter from `level` (`RUST_LOG`'s syntax), or why it is not one.
fn parse(level: &str) -> Result<EnvFilter, String> {
    let level = level.trim();
    if level.is_empty() {
        return Err("an empty log level".into());
    }
    EnvFilter::try_new(level).map_err(|e| format!("{level:?} is not a log level or filter: {e}"))
}

/// Checks `level` as [`set_level`] would, changing nothing.
pub fn check_level(level: &str) -> Result<(), String> {
    parse(level).map(|_| ())
}

/// Replaces the running filter with `level`; refused (and nothing
/// changes) when it is not a filter, or before [`init`].
pub fn set_level(level: &str) -> Result<(), String> {
    let filter = parse(level)?;
    let handle = FILTER.get().ok_or("logging is not set up")?;
    handle.reload(filter).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_filters_are_checked() {
        assert!(check_level("debug").is_ok());
        assert!(check_level("warn,ferrox_dataplane=debug").is_ok());
        assert!(check_level(" info ").is_ok());
        assert!(check_level("").is_err());
        assert!(check_level("ferrox=verbose").is_err());
    }

    #[test]
    fn events_go_to_the_file_and_to_a_new_one_after_a_reopen() {
        let dir = std::env::temp_dir().join(format!("ferrox-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ferrox.log");
        init(Options {
            file: Some(path.clone()),
            level: Some("info".into()),
            ..Options::default()
        })
        .unwrap();
        tracing::info!("before the rotation");
        // logrotate's move, then the signal's reopen.
        std::fs::rename(&path, dir.join("ferrox.log.1")).unwrap();
        tracing::info!("still to the moved file");
        assert_eq!(reopen().unwrap(), Some(path.as_path()));
        tracing::info!("after the rotation");
        let old = std::fs::read_to_string(dir.join("ferrox.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(old.contains("before the rotation") && old.contains("still to the moved file"));
        assert!(new.contains("after the rotation") && !new.contains("before"));
        // Plain text: no colour codes in a file.
        assert!(!old.contains('\x1b') && !new.contains('\x1b'));
    }
}
