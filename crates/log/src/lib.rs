//! The one logging setup of ferrox's binaries: events go to stderr,
//! filtered by `--log-level` or else `RUST_LOG` (default `info`), with ANSI
//! colours only when stderr is a terminal (journald and log files get
//! plain text), or as JSON lines when asked. The filter can be changed
//! while the process runs ([`set_level`]).

use std::io::IsTerminal;
use std::sync::OnceLock;

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
}

/// The handle that swaps the running filter.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the process-wide subscriber; call once, first thing in `main`.
/// A `level` that is not a valid filter falls back to `info`, with a
/// warning once logging runs.
pub fn init(options: Options) {
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
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(options.targets)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    if options.json {
        registry.with(fmt.json()).init();
    } else {
        registry.with(fmt).init();
    }
    if let Some(why) = refused {
        tracing::warn!("--log-level: {why}; logging at info");
    }
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
}
