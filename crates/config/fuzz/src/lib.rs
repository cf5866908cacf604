//! What every configuration reader promises, whatever text it is given:
//! it never panics, what it accepts is a usable configuration, and what
//! it refuses comes with diagnostics that point at lines of the text.

use ferrox_config::{Config, ConfigError};

/// Reads `data`, when it is text, with `read`, checks the promises, and
/// returns the configuration when it was accepted.
pub fn read_checked(
    data: &[u8],
    read: impl FnOnce(&str) -> Result<Config, ConfigError>,
) -> Option<Config> {
    let text = std::str::from_utf8(data).ok()?;
    let lines = text.split('\n').count();
    match read(text) {
        Ok(config) => {
            assert!(!config.pools.is_empty());
            for pool in &config.pools {
                assert!(!pool.servers.is_empty() && pool.server_connections > 0);
                assert!(pool.servers.iter().all(|s| s.weight > 0));
            }
            Some(config)
        }
        Err(e) => {
            assert!(!e.errors.is_empty());
            assert!(e.errors.iter().all(|d| d.line >= 1 && d.line <= lines));
            None
        }
    }
}
