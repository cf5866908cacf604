//! Any text: `parse_nutcracker` never panics, every diagnostic points at a line
//! of the text, and what it accepts is a usable configuration.
#![no_main]

use ferrox_config::parse_nutcracker;
use ferrox_config_fuzz::read_checked;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    read_checked(data, |text| parse_nutcracker(text, "fuzz.yml"));
});
