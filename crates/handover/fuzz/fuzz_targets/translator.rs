//! Any frame: translation never panics, and translating a TCP segment
//! forth and back restores it (the checksum up to one's-complement ±0).
#![no_main]

use ferrox_handover::{segment, xlate};
use libfuzzer_sys::fuzz_target;

/// Whether `a` and `b` are the same frame, their TCP checksums compared as
/// one's-complement numbers (0x0000 and 0xffff are both zero).
fn same(a: &[u8], b: &[u8]) -> bool {
    let Some(bounds) = segment::bounds(a) else {
        return a == b;
    };
    let at = bounds.tcp + 16;
    let (x, y) = (
        u16::from_be_bytes([a[at], a[at + 1]]),
        u16::from_be_bytes([b[at], b[at + 1]]),
    );
    a[..at] == b[..at] && a[at + 2..] == b[at + 2..] && (x == y || (x | y == 0xffff && x & y == 0))
}

fuzz_target!(|input: (u32, Vec<u8>)| {
    let (delta, mut frame) = input;
    let before = frame.clone();
    if xlate::egress(&mut frame, delta) {
        xlate::egress(&mut frame, delta.wrapping_neg());
        assert!(same(&frame, &before));
    }
    let before = frame.clone();
    if xlate::ingress(&mut frame, delta) {
        xlate::ingress(&mut frame, delta.wrapping_neg());
        assert!(same(&frame, &before));
    }
});
