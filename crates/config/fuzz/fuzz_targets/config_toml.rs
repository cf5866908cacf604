//! Any text: `parse_toml` never panics, every diagnostic points at a line
//! of the text, and what it accepts is a usable configuration that
//! `emit_toml` writes back as text that reads to the same configuration
//! (what the control process publishes to the dataplane).
#![no_main]

use ferrox_config::{emit_toml, parse_toml, Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text, parse_toml(text, "fuzz.toml"));
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
            let emitted = emit_toml(&config);
            assert_eq!(parse_toml(&emitted, "emitted.toml"), Ok(config), "{emitted}");
        }
        Err(e) => {
            assert!(!e.errors.is_empty());
            assert!(e.errors.iter().all(|d| d.line >= 1 && d.line <= lines));
        }
    }
}
