//! Any text: `parse_nutcracker` never panics, every diagnostic points at a line
//! of the text, and what it accepts is a usable configuration.
#![no_main]

use ferrox_config::{parse_nutcracker, Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text, parse_nutcracker(text, "fuzz.yml"));
});

fn check(text: &str, result: Result<Config, ConfigError>) {
    let lines = text.split('\n').count();
    match result {
        Ok(config) => {
            assert!(!config.pools.is_empty());
            for pool in &config.pools {
                assert!(!pool.servers.is_empty() && pool.server_connections > 0);
                assert!(pool.servers.iter().all(|s| s.weight > 0));
            }
        }
        Err(e) => {
            assert!(!e.errors.is_empty());
            assert!(e.errors.iter().all(|d| d.line >= 1 && d.line <= lines));
        }
    }
}
