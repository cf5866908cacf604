use super::*;

fn servers(specs: &[(&str, u32)]) -> Vec<Server> {
    specs.iter().map(|&(n, w)| Server::new(n, w)).collect()
}

fn table(hash: HashFn, distribution: Distribution, pool: &[Server], live: &[bool]) -> Table {
    Table::build(hash, distribution, None, pool, live).expect("valid pool")
}

fn all_live(pool: &[Server]) -> Vec<bool> {
    vec![true; pool.len()]
}

/// The table of `pool` with every server live.
fn live_table(hash: HashFn, distribution: Distribution, pool: &[Server]) -> Table {
    table(hash, distribution, pool, &all_live(pool))
}

fn keys(n: usize) -> impl Iterator<Item = Vec<u8>> {
    (0..n).map(|i| format!("key:{i}").into_bytes())
}

fn four() -> Vec<Server> {
    servers(&[
        ("10.0.0.1:6379", 1),
        ("10.0.0.2:6379", 1),
        ("10.0.0.3:6379", 1),
        ("10.0.0.4:6379", 1),
    ])
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// ---- hash functions

#[test]
fn md5_matches_rfc_1321() {
    let cases: [(&[u8], &str); 8] = [
        (b"", "d41d8cd98f00b204e9800998ecf8427e"),
        (b"a", "0cc175b9c0f1b6a831c399e269772661"),
        (b"abc", "900150983cd24fb0d6963f7d28e17f72"),
        (b"message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
        (
            b"abcdefghijklmnopqrstuvwxyz",
            "c3fcd3d76192e4007dfb496cca67e13b",
        ),
        (
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            "d174ab98d277d9f5a5611c2c9f419d9f",
        ),
        (
            b"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
            "57edf4a22be3c955ac49da2e2107b67a",
        ),
        // 56 bytes: the length no longer fits the first padding block.
        (
            b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
            "8215ef0796a20bcaaae116d3876c664a",
        ),
    ];
    for (input, digest) in cases {
        assert_eq!(md5::digest(input).to_vec(), hex(digest), "{input:?}");
    }
}

#[test]
fn textbook_check_values() {
    assert_eq!(HashFn::Crc32a.hash(b"123456789"), 0xcbf4_3926);
    // libmemcached's crc32: bits 16..31 of the CRC, 15 of them kept.
    assert_eq!(
        HashFn::Crc32.hash(b"123456789"),
        (0xcbf4_3926 >> 16) & 0x7fff
    );
    // CRC-16/XMODEM's check value in the low half; the high half is what
    // twemproxy's unmasked register carried up.
    assert_eq!(HashFn::Crc16.hash(b"123456789") & 0xffff, 0x31c3);
    assert_eq!(HashFn::Fnv1_32.hash(b"a"), 0x050c_5d7e);
    assert_eq!(HashFn::Fnv1a_32.hash(b"a"), 0xe40c_292c);
    assert_eq!(HashFn::Fnv1_32.hash(b"foobar"), 0x31f0_b262);
    assert_eq!(HashFn::Fnv1a_32.hash(b"foobar"), 0xbf9c_f968);
    assert_eq!(HashFn::Fnv1_64.hash(b"a"), 0xaf63_bd4c_8601_b7be_u64 as u32);
    assert_eq!(HashFn::OneAtATime.hash(b"a"), 0xca2e_9442);
    assert_eq!(HashFn::Md5.hash(b"abc"), 0x9850_0190);
}

/// Outputs of twemproxy 0.5.0's own C functions (x86-64), for keys with
/// bytes >= 0x80 where its signed `char` shows, and a few plain ones.
#[test]
fn twemproxy_c_values() {
    #[rustfmt::skip]
    let cases: [(&str, [u32; 12]); 8] = [
        ("313233343536373839", [0xc66b58c5, 0x94e7f925, 0x869031c3, 0x00004bf4, 0xcbf43926, 0x2bf916d6, 0x23c6cdfc, 0x24148816, 0xbb86b11c, 0xe4fc1670, 0xb7760690, 0x19777af6]),
        ("666f6f626172", [0xf952fde7, 0x22f65838, 0x9effb025, 0x00001ef6, 0x9ef61f95, 0xa4dda9c2, 0xf73967e8, 0x31f0b262, 0xbf9cf968, 0x07a5862c, 0xabecff17, 0x0fdd8b60]),
        ("68656c6c6f20776f726c64", [0x3e4a5a57, 0xbb3bb65e, 0xf2063be4, 0x00000d4a, 0x0d4a1185, 0xb1910e6f, 0x023cd2e7, 0x548da96f, 0xd58b3fa7, 0x4f799873, 0x5e19153b, 0x153343fb]),
        ("80", [0xc31d4e27, 0x7edd398d, 0x00009188, 0x00003fba, 0x3fba6cad, 0x79fe485f, 0x79fdec5f, 0xfaf3a29f, 0x04f3b29f, 0xd6f4cb32, 0x90556245, 0xb16fde48]),
        ("ff", [0xae65a494, 0xd44f5900, 0x00001ef0, 0x00007f00, 0xff000000, 0x79fe4820, 0x79fe466e, 0xfaf3a2e0, 0xf9f3a14e, 0x02a6dba8, 0xdb530a9c, 0xe1964da8]),
        ("61ff62", [0x402728b1, 0xb660b545, 0x7c26e340, 0x000006cc, 0x86cc8503, 0x945016bd, 0xfbd576b1, 0x996399dd, 0xcd09e011, 0x7154df9e, 0x5071dbf0, 0xa11b6706]),
        ("616263ff", [0x54616f4c, 0x694f26c0, 0x749d9ae4, 0x00000a5f, 0x8a5f87dd, 0x047bb00e, 0x11f8a9dc, 0x46218cee, 0x94cc221c, 0xfaabc597, 0xcc0de7e9, 0x3757b44e]),
        ("61626380ff", [0x14c43b57, 0xdba463c3, 0x9d15c064, 0x00002f4f, 0xaf4f94d7, 0x61d32ffc, 0x7634f4ca, 0x082fb7bc, 0x3caa816a, 0x3f8b3151, 0x3d180be4, 0xfd0b7c51]),
    ];
    for (key, expected) in cases {
        for (hash, want) in HashFn::ALL.into_iter().zip(expected) {
            assert_eq!(hash.hash(&hex(key)), want, "{} of {key}", hash.name());
        }
    }
}

#[test]
fn signed_char_quirk_differs_from_textbook_fnv1a() {
    let textbook = (0x811c_9dc5u32 ^ 0x80).wrapping_mul(0x0100_0193);
    assert_ne!(HashFn::Fnv1a_32.hash(&[0x80]), textbook);
    let sign_extended = (0x811c_9dc5u32 ^ 0xffff_ff80).wrapping_mul(0x0100_0193);
    assert_eq!(HashFn::Fnv1a_32.hash(&[0x80]), sign_extended);
}

#[test]
fn empty_input_as_the_c_code_returns_it() {
    let expected = [
        0,
        0xd98c_1dd4,
        0,
        0,
        0,
        0x8422_2325,
        0x8422_2325,
        0x811c_9dc5,
        0x811c_9dc5,
        0,
        0,
        0xdead_befc,
    ];
    for (hash, want) in HashFn::ALL.into_iter().zip(expected) {
        assert_eq!(hash.hash(b""), want, "{}", hash.name());
    }
}

#[test]
fn names_round_trip() {
    for hash in HashFn::ALL {
        assert_eq!(HashFn::from_name(hash.name()), Some(hash));
    }
    for distribution in Distribution::ALL {
        assert_eq!(
            Distribution::from_name(distribution.name()),
            Some(distribution)
        );
    }
    assert_eq!(HashFn::from_name("fnv1a-64"), None);
    assert_eq!(HashFn::from_name("FNV1A_64"), None);
    assert_eq!(Distribution::from_name("consistent"), None);
}

// ---- hash tags

#[test]
fn hashtag_rules() {
    let braces = *b"{}";
    let cases: [(&[u8], &[u8]); 10] = [
        (b"{user1000}.following", b"user1000"),
        (b"x{a}y{b}", b"a"),
        (b"{{a}}", b"{a"),
        (b"a}b{c}", b"c"),
        // No tag, an unterminated tag, or an empty one: the whole key.
        (b"plain", b"plain"),
        (b"abc{", b"abc{"),
        (b"a{bc", b"a{bc"),
        (b"{}abc", b"{}abc"),
        // Only the first opening counts, even if its tag is empty.
        (b"{}{a}", b"{}{a}"),
        (b"", b""),
    ];
    for (key, hashed) in cases {
        assert_eq!(
            hashtag(key, braces),
            hashed,
            "{:?}",
            String::from_utf8_lossy(key)
        );
    }
    let dollars = *b"$$";
    assert_eq!(hashtag(b"$tag$rest", dollars), b"tag");
    assert_eq!(hashtag(b"pre$tag$$x$", dollars), b"tag");
    assert_eq!(hashtag(b"$$tag$", dollars), b"$$tag$");
    assert_eq!(hashtag(b"tag$", dollars), b"tag$");
}

#[test]
fn hash_key_uses_the_tag_and_gives_the_empty_key_zero() {
    let pool = four();
    for hash in HashFn::ALL {
        let t = Table::build(
            hash,
            Distribution::Ketama,
            Some(*b"{}"),
            &pool,
            &all_live(&pool),
        )
        .unwrap();
        assert_eq!(t.hash_key(b""), 0, "{}", hash.name());
        assert_eq!(t.hash_key(b"{user1}:a"), hash.hash(b"user1"));
        assert_eq!(t.hash_key(b"{user1}:a"), t.hash_key(b"b:{user1}"));
        assert_eq!(t.hash_key(b"{}"), hash.hash(b"{}"));
        assert_eq!(t.server_for(b"{user1}:a", 0), t.server_for(b"user1", 0));
    }
}

// ---- server names

#[test]
fn server_names_as_twemproxy_makes_them() {
    let cases = [
        ("127.0.0.1:6379:1", "127.0.0.1:6379", 1),
        ("cache.local:6380:20", "cache.local:6380", 20),
        ("127.0.0.1:06379:1", "127.0.0.1:06379", 1),
        // libmemcached compatibility: no port in the name on 11211.
        ("127.0.0.1:11211:2", "127.0.0.1", 2),
        ("10.0.0.9:6379:3 cache-a", "cache-a", 3),
        ("10.0.0.9:11211:1 cache-b", "cache-b", 1),
        ("/var/run/redis.sock:1", "/var/run/redis.sock:", 1),
        ("/var/run/redis.sock:4 local", "local", 4),
    ];
    for (spec, name, weight) in cases {
        assert_eq!(Server::parse(spec), Ok(Server::new(name, weight)), "{spec}");
    }
}

#[test]
fn server_lines_twemproxy_refuses() {
    for (spec, reason) in [
        ("127.0.0.1:6379", "expected host:port:weight"),
        ("127.0.0.1", "expected host:port:weight or /path:weight"),
        ("127.0.0.1:6379:0", "zero weight"),
        ("127.0.0.1:6379:x", "invalid weight"),
        ("127.0.0.1:6379:", "invalid weight"),
        ("127.0.0.1:6379:-1", "invalid weight"),
        ("127.0.0.1:6379:99999999999", "invalid weight"),
        ("127.0.0.1:0:1", "invalid port"),
        ("127.0.0.1:65536:1", "invalid port"),
        ("127.0.0.1:6379:1 ", "empty name"),
        ("/tmp/a:b:1", "expected /path:weight"),
    ] {
        assert_eq!(
            Server::parse(spec),
            Err(RouteError::BadServer {
                spec: spec.to_owned(),
                reason
            })
        );
    }
}

// ---- building

#[test]
fn pools_twemproxy_refuses() {
    let build = |pool: &[Server], live: &[bool]| {
        Table::build(HashFn::Md5, Distribution::Ketama, None, pool, live).map(|_| ())
    };
    assert_eq!(build(&[], &[]), Err(RouteError::NoServers));
    assert_eq!(
        build(&four(), &[true; 3]),
        Err(RouteError::LiveMismatch {
            servers: 4,
            live: 3
        })
    );
    let zero = servers(&[("a", 1), ("b", 0)]);
    assert_eq!(build(&zero, &[true, true]), Err(RouteError::ZeroWeight(1)));
    let twins = servers(&[("a", 1), ("b", 1), ("a", 2)]);
    assert_eq!(
        build(&twins, &[true; 3]),
        Err(RouteError::DuplicateName(0, 2))
    );
    let heavy = servers(&[("a", u32::MAX), ("b", 1)]);
    assert_eq!(
        build(&heavy, &[true, true]),
        Err(RouteError::WeightOverflow)
    );
    let fits = servers(&[("a", u32::MAX - 1), ("b", 1)]);
    assert_eq!(build(&fits, &[true, true]), Ok(()));
}

#[test]
fn no_live_server_places_nothing() {
    let pool = four();
    for distribution in Distribution::ALL {
        let t = table(HashFn::Fnv1a_64, distribution, &pool, &[false; 4]);
        assert_eq!(t.server_for(b"k", 7), None, "{}", distribution.name());
    }
}

#[test]
fn one_server_takes_every_key() {
    let pool = servers(&[("only", 3)]);
    for distribution in Distribution::ALL {
        let t = table(HashFn::Murmur, distribution, &pool, &[true]);
        for key in keys(100).chain([Vec::new()]) {
            assert_eq!(t.server_for(&key, 12345), Some(0));
        }
    }
}

// ---- ketama

fn continuum(t: &Table) -> Vec<(u32, u32)> {
    match &t.placement {
        Some(Placement::Ketama(c)) => c.points().collect(),
        _ => panic!("not ketama"),
    }
}

#[test]
fn ketama_points_scale_with_weight() {
    let equal = four();
    let points = continuum(&live_table(HashFn::Md5, Distribution::Ketama, &equal));
    assert_eq!(points.len(), 4 * 160);
    let weighted = servers(&[("a", 1), ("b", 2), ("c", 3), ("d", 1)]);
    let points = continuum(&live_table(HashFn::Md5, Distribution::Ketama, &weighted));
    // floor(w / 7 * 40 * 4) * 4 points each: 22, 45, 68, 22 groups of 4.
    let count = |s: u32| points.iter().filter(|p| p.1 == s).count();
    assert_eq!([count(0), count(1), count(2), count(3)], [88, 180, 272, 88]);
    assert!(points.windows(2).all(|w| w[0].0 <= w[1].0));
}

#[test]
fn ketama_points_are_md5_of_name_dash_group() {
    let pool = servers(&[("cache-a", 1)]);
    let points = continuum(&table(HashFn::Md5, Distribution::Ketama, &pool, &[true]));
    let d = md5::digest(b"cache-a-0");
    for i in 0..4 {
        let value = u32::from_le_bytes([d[4 * i], d[4 * i + 1], d[4 * i + 2], d[4 * i + 3]]);
        assert!(points.contains(&(value, 0)));
    }
    let d = md5::digest(b"cache-a-39");
    let value = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
    assert!(points.contains(&(value, 0)));
}

#[test]
fn ketama_key_goes_to_the_first_point_at_or_after_its_hash_wrapping() {
    let pool = four();
    let t = live_table(HashFn::Md5, Distribution::Ketama, &pool);
    let points = continuum(&t);
    let Some(Placement::Ketama(c)) = &t.placement else {
        unreachable!()
    };
    let (first, last) = (points[0], points[points.len() - 1]);
    assert_eq!(c.pick(0, 0), first.1);
    assert_eq!(c.pick(first.0, 0), first.1);
    assert_eq!(c.pick(last.0, 0), last.1);
    assert_eq!(c.pick(last.0 + 1, 0), first.1, "wraps to the first point");
    assert_eq!(c.pick(u32::MAX, 0), first.1);
    for w in points.windows(2).take(50) {
        assert_eq!(c.pick(w[0].0 + 1, 0), w[1].1);
        assert_eq!(c.pick(w[1].0, 0), w[1].1);
    }
}

#[test]
fn ketama_truncates_long_names_as_twemproxy_does() {
    // "{name}-{i}" is cut to 272 bytes, so past that every group of a long
    // name hashes the same: 4 distinct points, each 40 times.
    let long = "n".repeat(280);
    let pool = vec![Server::new(long, 1)];
    let mut values: Vec<u32> = continuum(&table(HashFn::Md5, Distribution::Ketama, &pool, &[true]))
        .iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(values.len(), 160);
    values.dedup();
    assert_eq!(values.len(), 4);
}

/// Ejecting a server leaves the same table as a pool without it.
#[test]
fn ejection_equals_the_pool_without_the_server() {
    let pool = servers(&[("a:1", 1), ("b:1", 2), ("c:1", 3), ("d:1", 1)]);
    let live = [true, false, true, true];
    let without: Vec<Server> = [0, 2, 3].iter().map(|&i| pool[i].clone()).collect();
    for distribution in [
        Distribution::Ketama,
        Distribution::Modula,
        Distribution::Random,
    ] {
        for hash in HashFn::ALL {
            let ejected = table(hash, distribution, &pool, &live);
            let smaller = live_table(hash, distribution, &without);
            for (r, key) in keys(500).enumerate() {
                let expected = smaller.server_for(&key, r as u32).map(|i| [0, 2, 3][i]);
                assert_eq!(ejected.server_for(&key, r as u32), expected);
            }
        }
    }
}

/// The ketama tables of `pool` with every server live, and with `live`.
fn ketama_before_and_after(pool: &[Server], live: &[bool]) -> (Table, Table) {
    let before = live_table(HashFn::Fnv1a_64, Distribution::Ketama, pool);
    (
        before,
        table(HashFn::Fnv1a_64, Distribution::Ketama, pool, live),
    )
}

#[test]
fn ketama_ejection_moves_only_the_ejected_servers_keys() {
    let pool = four();
    let (full, ejected) = ketama_before_and_after(&pool, &[true, true, false, true]);
    let mut moved = 0;
    for key in keys(20_000) {
        let (before, after) = (full.server_for(&key, 0), ejected.server_for(&key, 0));
        assert_ne!(after, Some(2));
        if before != after {
            assert_eq!(before, Some(2), "a key moved between live servers");
            moved += 1;
        }
    }
    // About a quarter of the keys were on the ejected server.
    assert!((3_000..7_000).contains(&moved), "{moved} moved");
}

#[test]
fn ketama_ejection_with_unequal_weights_moves_few_other_keys() {
    // Point counts are recomputed for the new total weight and rounded
    // down, so a live server may gain or lose a group of points.
    let pool = servers(&[("a", 1), ("b", 2), ("c", 3), ("d", 1)]);
    let (full, ejected) = ketama_before_and_after(&pool, &[true, false, true, true]);
    let between_live = keys(20_000)
        .filter(|k| {
            let before = full.server_for(k, 0);
            before != Some(1) && before != ejected.server_for(k, 0)
        })
        .count();
    assert!(
        between_live < 600,
        "{between_live} keys moved between live servers"
    );
}

// ---- modula

#[test]
fn modula_slots_follow_twemproxys_name_order() {
    // twemproxy sorts servers by name length, then bytes: "a" (index 1)
    // takes slot 0, "bb" (index 2) slots 1-2, "ccc" (index 0) slot 3.
    let pool = servers(&[("ccc", 1), ("a", 1), ("bb", 2)]);
    let t = live_table(HashFn::Crc32a, Distribution::Modula, &pool);
    let by_slot = [1, 2, 2, 0];
    for key in keys(200) {
        let slot = (HashFn::Crc32a.hash(&key) % 4) as usize;
        assert_eq!(t.server_for(&key, 0), Some(by_slot[slot]));
    }
}

/// A server of weight 3 and one of weight 1 take about 3/4 and 1/4 of
/// the keys.
fn assert_spreads_by_weight(hash: HashFn, distribution: Distribution) {
    let pool = servers(&[("a", 1), ("b", 3)]);
    let t = live_table(hash, distribution, &pool);
    let on_b = keys(8000).filter(|k| t.server_for(k, 0) == Some(1)).count();
    assert!(
        (5_600..6_400).contains(&on_b),
        "{on_b} of 8000 on the 3/4 server"
    );
}

#[test]
fn modula_spreads_by_weight() {
    assert_spreads_by_weight(HashFn::Murmur, Distribution::Modula);
}

// ---- random

#[test]
fn random_picks_live_servers_evenly_whatever_their_weight() {
    let pool = servers(&[("a", 1), ("b", 10), ("c", 1), ("d", 1)]);
    let t = table(
        HashFn::Md5,
        Distribution::Random,
        &pool,
        &[true, true, false, true],
    );
    let mut counts = [0usize; 4];
    for r in 0..3000u32 {
        // The key is ignored; the caller's number decides.
        let s = t
            .server_for(b"same key", r.wrapping_mul(2_654_435_761))
            .unwrap();
        counts[s] += 1;
    }
    assert_eq!(counts[2], 0);
    for s in [0, 1, 3] {
        assert!((900..1100).contains(&counts[s]), "{counts:?}");
    }
}

// ---- jump

#[test]
fn jump_matches_the_papers_algorithm() {
    // From the paper's reference code, run with Python's integers and
    // doubles.
    let cases: [(u64, u32, u32); 8] = [
        (0, 1, 0),
        (0, 10, 0),
        (1, 10, 6),
        (0xdead_beef, 1000, 285),
        (0xffff_ffff, 7, 5),
        (123_456_789, 64, 34),
        (u64::MAX, 100_000, 18_311),
        (42, 1 << 31, 1_603_940_301),
    ];
    for (key, buckets, expected) in cases {
        assert_eq!(jump::bucket(key, buckets), expected, "{key} in {buckets}");
    }
}

#[test]
fn jump_moves_keys_only_to_a_new_bucket() {
    for n in 1..40u32 {
        let mut moved = 0u32;
        for key in 0..4000u64 {
            let key = key.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let (before, after) = (jump::bucket(key, n), jump::bucket(key, n + 1));
            assert!(before < n && after <= n);
            if before != after {
                assert_eq!(after, n);
                moved += 1;
            }
        }
        let expected = 4000 / (n + 1);
        assert!(
            moved.abs_diff(expected) < expected / 3 + 40,
            "n={n}: {moved} moved"
        );
    }
}

#[test]
fn jump_appending_a_server_moves_keys_only_onto_it() {
    let mut pool = four();
    let before = live_table(HashFn::Fnv1a_64, Distribution::Jump, &pool);
    // A name that sorts first in twemproxy's order: jump keeps config order.
    pool.push(Server::new("e", 1));
    let after = live_table(HashFn::Fnv1a_64, Distribution::Jump, &pool);
    let mut moved = 0;
    for key in keys(10_000) {
        let (b, a) = (before.server_for(&key, 0), after.server_for(&key, 0));
        if b != a {
            assert_eq!(a, Some(4));
            moved += 1;
        }
    }
    assert!((1_600..2_400).contains(&moved), "{moved} moved");
}

#[test]
fn jump_spreads_by_weight() {
    assert_spreads_by_weight(HashFn::Md5, Distribution::Jump);
}

// ---- any pool

mod any_pool {
    use super::{table, Distribution, HashFn, Server};
    use proptest::prelude::*;

    fn pools() -> impl Strategy<Value = (Vec<Server>, Vec<bool>)> {
        prop::collection::vec((1u32..20, any::<bool>()), 1..10).prop_map(|specs| {
            let servers = specs
                .iter()
                .enumerate()
                .map(|(i, &(w, _))| Server::new(format!("s{}", i * 7919 % 100), w))
                .collect();
            (servers, specs.iter().map(|&(_, live)| live).collect())
        })
    }

    proptest! {
        #[test]
        fn keys_land_on_live_servers_only(
            (pool, live) in pools(),
            hash in 0..12usize,
            key in prop::collection::vec(any::<u8>(), 0..40),
            random in any::<u32>(),
        ) {
            for distribution in Distribution::ALL {
                let t = table(HashFn::ALL[hash], distribution, &pool, &live);
                match t.server_for(&key, random) {
                    None => prop_assert!(!live.contains(&true)),
                    Some(i) => prop_assert!(live[i]),
                }
            }
        }
    }
}
