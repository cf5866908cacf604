//! twemproxy's twelve key hash functions, bit for bit.
//!
//! Several of them are not the textbook function of the same name, and the
//! differences decide placement, so they are kept:
//!
//! - twemproxy reads key bytes through C's `char`, which is signed on
//!   x86-64: in `one_at_a_time`, the four FNV variants and `hsieh`'s 3-byte
//!   tail a byte >= 0x80 enters sign-extended (0x80 counts as 0xffffff80).
//!   The reference is twemproxy on x86-64, where Debian's package runs;
//!   on a platform with unsigned `char` (aarch64) twemproxy itself places
//!   such keys differently.
//! - `crc16` is CRC-16/XMODEM kept in a 32-bit register that is never
//!   masked: the low 16 bits are the CRC, the high 16 bits are what the
//!   shifts carried up, and both feed the distribution.
//! - `crc32` is libmemcached's: bits 16..31 of the CRC-32, masked to 15
//!   bits (0..=32767). `crc32a` is the real CRC-32.
//! - `fnv1a_64` is a 32-bit FNV-1a started from, and multiplied by, the
//!   low 32 bits of the 64-bit FNV constants; `fnv1_64` is a true 64-bit
//!   FNV-1 truncated to 32 bits.
//! - `murmur` is MurmurHash2 seeded with `0xdeadbeef * len`; `jenkins` is
//!   lookup3's `hashlittle` with initial value 13; `md5` is the first four
//!   digest bytes read little-endian.
//!
//! The empty key never reaches these in twemproxy (it is given hash 0
//! before hashing, see `Table::hash_key`); here each still returns what
//! its C code returns for length 0.

use super::md5;

/// One of twemproxy's key hash functions (`hash:` in a pool's config).
// Variant names follow the config names, `fnv1a_64` included.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashFn {
    /// Jenkins' one-at-a-time hash (`one_at_a_time`).
    OneAtATime,
    /// The first 32 bits of MD5, little-endian (`md5`).
    Md5,
    /// CRC-16/XMODEM in an unmasked 32-bit register (`crc16`).
    Crc16,
    /// libmemcached's 15-bit CRC-32 variant (`crc32`).
    Crc32,
    /// The standard CRC-32 (`crc32a`).
    Crc32a,
    /// 64-bit FNV-1, low 32 bits (`fnv1_64`).
    Fnv1_64,
    /// twemproxy's 32-bit FNV-1a with 64-bit constants truncated (`fnv1a_64`).
    Fnv1a_64,
    /// 32-bit FNV-1 (`fnv1_32`).
    Fnv1_32,
    /// 32-bit FNV-1a (`fnv1a_32`).
    Fnv1a_32,
    /// Paul Hsieh's SuperFastHash (`hsieh`).
    Hsieh,
    /// MurmurHash2 seeded with the key length (`murmur`).
    Murmur,
    /// Bob Jenkins' lookup3 `hashlittle` (`jenkins`).
    Jenkins,
}

impl HashFn {
    /// All twelve, in twemproxy's order.
    pub const ALL: [HashFn; 12] = [
        HashFn::OneAtATime,
        HashFn::Md5,
        HashFn::Crc16,
        HashFn::Crc32,
        HashFn::Crc32a,
        HashFn::Fnv1_64,
        HashFn::Fnv1a_64,
        HashFn::Fnv1_32,
        HashFn::Fnv1a_32,
        HashFn::Hsieh,
        HashFn::Murmur,
        HashFn::Jenkins,
    ];

    /// The function twemproxy's config calls `name` (`fnv1a_64`, ...).
    pub fn from_name(name: &str) -> Option<HashFn> {
        HashFn::ALL.into_iter().find(|h| h.name() == name)
    }

    /// The name twemproxy's config uses for this function.
    pub const fn name(self) -> &'static str {
        match self {
            HashFn::OneAtATime => "one_at_a_time",
            HashFn::Md5 => "md5",
            HashFn::Crc16 => "crc16",
            HashFn::Crc32 => "crc32",
            HashFn::Crc32a => "crc32a",
            HashFn::Fnv1_64 => "fnv1_64",
            HashFn::Fnv1a_64 => "fnv1a_64",
            HashFn::Fnv1_32 => "fnv1_32",
            HashFn::Fnv1a_32 => "fnv1a_32",
            HashFn::Hsieh => "hsieh",
            HashFn::Murmur => "murmur",
            HashFn::Jenkins => "jenkins",
        }
    }

    /// What twemproxy's function of this name returns for `key`.
    pub fn hash(self, key: &[u8]) -> u32 {
        match self {
            HashFn::OneAtATime => one_at_a_time(key),
            HashFn::Md5 => {
                let d = md5::digest(key);
                u32::from_le_bytes([d[0], d[1], d[2], d[3]])
            }
            HashFn::Crc16 => crc16(key),
            HashFn::Crc32 => (!crc32_register(key) >> 16) & 0x7fff,
            HashFn::Crc32a => !crc32_register(key),
            HashFn::Fnv1_64 => fnv1_64(key),
            HashFn::Fnv1a_64 => fnv1a(key, FNV_64_INIT as u32, FNV_64_PRIME as u32),
            HashFn::Fnv1_32 => fnv1_32(key),
            HashFn::Fnv1a_32 => fnv1a(key, FNV_32_INIT, FNV_32_PRIME),
            HashFn::Hsieh => hsieh(key),
            HashFn::Murmur => murmur(key),
            HashFn::Jenkins => jenkins(key),
        }
    }
}

/// A key byte as C's signed `char` converts it to a 32-bit unsigned.
fn signed(byte: u8) -> u32 {
    byte as i8 as i32 as u32
}

fn one_at_a_time(key: &[u8]) -> u32 {
    let mut h = 0u32;
    for &b in key {
        h = h.wrapping_add(signed(b));
        h = h.wrapping_add(h << 10);
        h ^= h >> 6;
    }
    h = h.wrapping_add(h << 3);
    h ^= h >> 11;
    h.wrapping_add(h << 15)
}

/// CRC-16/XMODEM's table (polynomial 0x1021), shared with Redis
/// Cluster's key slots.
pub(crate) const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn crc16(key: &[u8]) -> u32 {
    key.iter().fold(0u32, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[((crc >> 8) ^ b as u32) as usize & 0xff] as u32
    })
}

const CRC32_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// The reflected CRC-32 register after `key`, before the final inversion.
fn crc32_register(key: &[u8]) -> u32 {
    key.iter().fold(u32::MAX, |crc, &b| {
        (crc >> 8) ^ CRC32_TABLE[(crc ^ b as u32) as usize & 0xff]
    })
}

const FNV_64_INIT: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_64_PRIME: u64 = 0x0000_0100_0000_01b3;
const FNV_32_INIT: u32 = 0x811c_9dc5;
const FNV_32_PRIME: u32 = 0x0100_0193;

fn fnv1_64(key: &[u8]) -> u32 {
    let mut h = FNV_64_INIT;
    for &b in key {
        h = h.wrapping_mul(FNV_64_PRIME);
        h ^= b as i8 as i64 as u64;
    }
    h as u32
}

fn fnv1_32(key: &[u8]) -> u32 {
    let mut h = FNV_32_INIT;
    for &b in key {
        h = h.wrapping_mul(FNV_32_PRIME);
        h ^= signed(b);
    }
    h
}

fn fnv1a(key: &[u8], init: u32, prime: u32) -> u32 {
    let mut h = init;
    for &b in key {
        h ^= signed(b);
        h = h.wrapping_mul(prime);
    }
    h
}

fn hsieh(key: &[u8]) -> u32 {
    if key.is_empty() {
        return 0;
    }
    let get16 = |s: &[u8]| u32::from(s[0]) | u32::from(s[1]) << 8;
    let mut h = 0u32;
    let mut words = key.chunks_exact(4);
    for w in &mut words {
        h = h.wrapping_add(get16(w));
        let tmp = (get16(&w[2..]) << 11) ^ h;
        h = (h << 16) ^ tmp;
        h = h.wrapping_add(h >> 11);
    }
    match *words.remainder() {
        [b0, b1, b2] => {
            h = h.wrapping_add(get16(&[b0, b1]));
            h ^= h << 16;
            h ^= signed(b2) << 18;
            h = h.wrapping_add(h >> 11);
        }
        [b0, b1] => {
            h = h.wrapping_add(get16(&[b0, b1]));
            h ^= h << 11;
            h = h.wrapping_add(h >> 17);
        }
        [b0] => {
            h = h.wrapping_add(u32::from(b0));
            h ^= h << 10;
            h = h.wrapping_add(h >> 1);
        }
        _ => {}
    }
    h ^= h << 3;
    h = h.wrapping_add(h >> 5);
    h ^= h << 4;
    h = h.wrapping_add(h >> 17);
    h ^= h << 25;
    h.wrapping_add(h >> 6)
}

fn murmur(key: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let len = key.len() as u32;
    let mut h = 0xdead_beefu32.wrapping_mul(len) ^ len;
    let mut words = key.chunks_exact(4);
    for w in &mut words {
        let mut k = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

fn jenkins(key: &[u8]) -> u32 {
    let init = 0xdead_beefu32
        .wrapping_add(key.len() as u32)
        .wrapping_add(13);
    let (mut a, mut b, mut c) = (init, init, init);
    if key.is_empty() {
        return c;
    }
    let word = |s: &[u8]| {
        s.iter()
            .enumerate()
            .fold(0u32, |w, (i, &byte)| w | u32::from(byte) << (8 * i))
    };
    // Every block but the last goes through `mix`; the last, 1 to 12
    // bytes, through `final`.
    let mut rest = key;
    while rest.len() > 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        (a, b, c) = mix(a, b, c);
        rest = &rest[12..];
    }
    a = a.wrapping_add(word(&rest[..rest.len().min(4)]));
    if rest.len() > 4 {
        b = b.wrapping_add(word(&rest[4..rest.len().min(8)]));
    }
    if rest.len() > 8 {
        c = c.wrapping_add(word(&rest[8..]));
    }
    final_mix(a, b, c)
}

/// lookup3's `mix`: six rounds of `x -= z; x ^= z <<< r; z += y`, the
/// triple turned one place each round: (a, b, c), (b, c, a), (c, a, b), and
/// after six rounds back to (a, b, c).
fn mix(a: u32, b: u32, c: u32) -> (u32, u32, u32) {
    let (mut x, mut y, mut z) = (a, b, c);
    for r in [4, 6, 8, 16, 19, 4] {
        x = x.wrapping_sub(z) ^ z.rotate_left(r);
        z = z.wrapping_add(y);
        (x, y, z) = (y, z, x);
    }
    (x, y, z)
}

/// lookup3's `final`: seven rounds of `x ^= y; x -= y <<< r`, where each
/// round's `x` is the next round's `y`: c, a, b, c, a, b, c in turn.
fn final_mix(a: u32, b: u32, c: u32) -> u32 {
    let (mut x, mut y, mut z) = (c, b, a);
    for r in [14, 11, 25, 16, 4, 14, 24] {
        x = (x ^ y).wrapping_sub(y.rotate_left(r));
        (x, y, z) = (z, x, y);
    }
    // The last round changed c, now in `y`.
    y
}
