//! Any bytes: `reply_len` never panics and never reports more than it got.
#![no_main]

use ferrox_proto::resp::{reply_len, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_depth: 8,
        ..Limits::default()
    };
    if let Ok(Some(len)) = reply_len(data, &limits) {
        assert!(len > 0 && len <= data.len());
    }
});
