//! Any line: `parse_request` never panics, refuses with a reason, and what
//! it accepts reads back from its own line unchanged.
#![no_main]

use ferrox_control::admin::{parse_request, request_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match parse_request(line) {
        Ok(request) => assert_eq!(parse_request(&request_line(&request)), Ok(request)),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
