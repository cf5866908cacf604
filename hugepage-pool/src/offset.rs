//! Offsets: the only way anything in a region refers to anything else.

use std::fmt;

/// Index of a segment inside a region.
pub type SegmentId = u16;

/// A position in a region: a segment and a byte inside it.
///
/// Stored in shared memory as a plain `u64` (segment in the top 16 bits,
/// byte offset in the low 48), so it means the same in every process that
/// maps the region and in every later binary.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct Offset(u64);

impl Offset {
    const BYTE_BITS: u32 = 48;
    const BYTE_MASK: u64 = (1 << Self::BYTE_BITS) - 1;

    /// The offset that points nowhere (list terminators, empty slots).
    pub const NULL: Offset = Offset(u64::MAX);

    /// The offset of byte `byte` of segment `segment`.
    pub const fn new(segment: SegmentId, byte: u64) -> Offset {
        debug_assert!(byte <= Self::BYTE_MASK);
        Offset(((segment as u64) << Self::BYTE_BITS) | (byte & Self::BYTE_MASK))
    }

    /// Rebuilds an offset from its stored form.
    pub const fn from_raw(raw: u64) -> Offset {
        Offset(raw)
    }

    /// The stored form, as it goes into shared memory or a message.
    pub const fn to_raw(self) -> u64 {
        self.0
    }

    pub const fn is_null(self) -> bool {
        self.0 == u64::MAX
    }

    pub const fn segment(self) -> SegmentId {
        (self.0 >> Self::BYTE_BITS) as SegmentId
    }

    pub const fn byte(self) -> u64 {
        self.0 & Self::BYTE_MASK
    }

    /// The offset `delta` bytes further in the same segment.
    pub const fn add(self, delta: u64) -> Offset {
        Offset::new(self.segment(), self.byte() + delta)
    }
}

impl fmt::Debug for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_null() {
            f.write_str("Offset(NULL)")
        } else {
            write!(f, "Offset({}:{:#x})", self.segment(), self.byte())
        }
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_and_byte_round_trip() {
        let off = Offset::new(7, 0x1234_5678);
        assert_eq!(off.segment(), 7);
        assert_eq!(off.byte(), 0x1234_5678);
        assert_eq!(Offset::from_raw(off.to_raw()), off);
        assert_eq!(off.add(8).byte(), 0x1234_5680);
        assert!(!off.is_null());
        assert!(Offset::NULL.is_null());
    }
}
