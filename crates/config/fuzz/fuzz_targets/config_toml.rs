//! Any text: `parse_toml` never panics, every diagnostic points at a line
//! of the text, and what it accepts is a usable configuration that
//! `emit_toml` writes back as text that reads to the same configuration
//! (what the control process publishes to the dataplane).
#![no_main]

use ferrox_config::{emit_toml, parse_toml};
use ferrox_config_fuzz::read_checked;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(config) = read_checked(data, |text| parse_toml(text, "fuzz.toml")) {
        let emitted = emit_toml(&config);
        assert_eq!(
            parse_toml(&emitted, "emitted.toml"),
            Ok(config),
            "{emitted}"
        );
    }
});
