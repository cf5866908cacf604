//! Configuration: ferrox TOML and twemproxy `nutcracker.yml`.
//!
//! Both formats become the same [`Config`]; the dataplane reads it at
//! start, the control process reads it again to validate a change before
//! reloading. Parsing takes the text and a file name for messages, and
//! never does I/O ([`load`] is the one convenience that reads a file).
//!
//! Every rejected input gives a [`Diagnostic`] naming the file, the line
//! and the reason, and all of them are collected before returning, so one
//! run shows every mistake (a TOML syntax error, which stops the TOML
//! reader, and unreadable YAML lines, which make meaning moot, are the
//! exceptions).
//!
//! - `toml`: ferrox's own format, `configs/ferrox.toml` documents it.
//! - `nutcracker`: twemproxy's YAML, read through `yaml`, a line-exact
//!   reader for the subset twemproxy accepts.
//! - `check`: the checks both share, including twemproxy's rules for
//!   server names and duplicates.

mod check;
mod emit;
mod model;
mod nutcracker;
mod toml;
mod yaml;

use std::fmt;
use std::path::Path;

pub use emit::emit_toml;
pub use model::{
    Compression, CompressionAlgorithm, Config, Distribution, HashFn, HotKeyCache, Limits, Overload,
    Pool, Protocol, RateBy, RateLimit, ReadPolicy, Server, User, Validate, ACL_CATEGORIES,
    DISTRIBUTIONS, HASHES, MAX_DEPTH, ZSTD_LEVELS,
};
pub use nutcracker::parse_nutcracker;
pub use toml::parse_toml;

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when the file as a whole is at fault (it cannot be read).
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        }
    }
}

/// Everything wrong with a configuration file, in line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    /// One diagnostic per line.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, d) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads `text` as twemproxy YAML when `file` ends in `.yml` or `.yaml`,
/// else as ferrox TOML.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let extension = Path::new(file).extension().and_then(|e| e.to_str());
    match extension {
        Some(e) if e.eq_ignore_ascii_case("yml") || e.eq_ignore_ascii_case("yaml") => {
            parse_nutcracker(text, file)
        }
        _ => parse_toml(text, file),
    }
}

/// Reads and parses the file at `path` (see [`parse`]).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &file),
        Err(e) => Err(ConfigError {
            errors: vec![Diagnostic {
                file,
                line: 0,
                message: format!("cannot read: {e}"),
            }],
        }),
    }
}

#[cfg(test)]
mod tests;

/// Whether every pool of `config` listens where a dataplane answering on
/// `address` can serve it: on that address, or on 0.0.0.0 (which means
/// it). Both processes check a configuration with this before they take
/// it; the error names `file`, the pool and the fix.
pub fn check_listen(
    config: &Config,
    address: std::net::Ipv4Addr,
    file: &str,
) -> Result<(), String> {
    for pool in &config.pools {
        let ip = *pool.listen.ip();
        if !ip.is_unspecified() && ip != address {
            return Err(format!(
                "{file}: pool {:?} listens on {}, but the dataplane's address is {address} (use it or 0.0.0.0)",
                pool.name, pool.listen
            ));
        }
    }
    Ok(())
}
