//! Any bytes: `parse_request` never panics, and what it reports as used
//! lies inside the input, with every argument inside what was used.
#![no_main]

use ferrox_proto::resp::{parse_request, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_bulk: 1 << 16,
        max_array: 1 << 10,
        max_depth: 8,
        max_inline: 1 << 12,
    };
    let mut args = Vec::new();
    let mut rest = data;
    while let Ok(Some(used)) = parse_request(rest, &limits, &mut args) {
        assert!(used > 0 && used <= rest.len());
        assert!(args.iter().all(|a| a.end <= used));
        rest = &rest[used..];
    }
});
