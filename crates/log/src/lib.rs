//! The one logging setup of ferrox's binaries: events go to stderr,
//! filtered by `RUST_LOG` (default `info`), with ANSI colours only when
//! stderr is a terminal (journald and log files get plain text), or as
//! JSON lines when asked.

use std::io::IsTerminal;

/// How a binary logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// One JSON object per line.
    pub json: bool,
    /// Show each event's module path.
    pub targets: bool,
}

/// Installs the process-wide subscriber; call once, first thing in `main`.
pub fn init(options: Options) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(options.targets)
        .with_ansi(std::io::stderr().is_terminal());
    if options.json {
        logs.json().init();
    } else {
        logs.init();
    }
}
