//! `route` against twemproxy itself.
//!
//! `golden/route.txt` holds where nutcracker 0.5.0 put each of 573 keys in
//! 34 pools (every hash function with ketama and with modula, weights,
//! explicit server names, hash tags), recorded by `golden/route_gen.py`
//! through real redis-server backends. `golden/hash.txt` holds the twelve
//! hashes of the same keys from twemproxy's own C code, by
//! `golden/hash_gen.sh`. How to regenerate is in each file's header.

use ferrox_route::{Distribution, HashFn, Server, Table};

const ROUTE: &str = include_str!("golden/route.txt");
const HASH: &str = include_str!("golden/hash.txt");

fn unhex(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd hex {hex:?}");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

struct Pool {
    name: String,
    hash: HashFn,
    distribution: Distribution,
    hash_tag: Option<[u8; 2]>,
    servers: Vec<Server>,
    placed: Vec<usize>,
}

fn vectors() -> (Vec<Vec<u8>>, Vec<Pool>) {
    let mut keys = Vec::new();
    let mut pools: Vec<Pool> = Vec::new();
    for line in ROUTE.lines().filter(|l| !l.starts_with('#')) {
        let (kind, rest) = line.split_once(' ').expect("record kind");
        match kind {
            "key" => keys.push(unhex(rest)),
            "pool" => {
                let f: Vec<&str> = rest.split(' ').collect();
                let [name, hash, distribution, tag] = f[..] else {
                    panic!("pool line {line:?}")
                };
                pools.push(Pool {
                    name: name.to_owned(),
                    hash: HashFn::from_name(hash).expect("hash name"),
                    distribution: Distribution::from_name(distribution).expect("distribution"),
                    hash_tag: (tag != "-").then(|| unhex(tag).try_into().expect("two-byte tag")),
                    servers: Vec::new(),
                    placed: Vec::new(),
                });
            }
            "server" => {
                let pool = pools.last_mut().expect("server before pool");
                pool.servers.push(Server::parse(rest).expect("server line"));
            }
            "placed" => {
                let pool = pools.last_mut().expect("placed before pool");
                pool.placed = rest.bytes().map(|d| (d - b'0') as usize).collect();
            }
            _ => panic!("unknown record {line:?}"),
        }
    }
    (keys, pools)
}

#[test]
fn route_hashes_equal_twemproxys_c_code() {
    let mut checked = 0;
    for line in HASH.lines().filter(|l| !l.starts_with('#')) {
        let mut fields = line.split(' ');
        let key = unhex(fields.next().expect("key"));
        let expected: Vec<u32> = fields
            .map(|h| u32::from_str_radix(h, 16).expect("hash"))
            .collect();
        assert_eq!(expected.len(), HashFn::ALL.len(), "{line}");
        for (hash, want) in HashFn::ALL.into_iter().zip(expected) {
            assert_eq!(hash.hash(&key), want, "{} of {key:02x?}", hash.name());
            checked += 1;
        }
    }
    assert!(checked > 12 * 500, "only {checked} hashes checked");
}

#[test]
fn route_placement_equals_nutcracker() {
    let (keys, pools) = vectors();
    assert!(keys.len() > 500 && pools.len() > 30);
    for pool in &pools {
        assert_eq!(pool.placed.len(), keys.len(), "pool {}", pool.name);
        let live = vec![true; pool.servers.len()];
        let table = Table::build(
            pool.hash,
            pool.distribution,
            pool.hash_tag,
            &pool.servers,
            &live,
        )
        .expect("table");
        let wrong: Vec<_> = keys
            .iter()
            .zip(&pool.placed)
            .filter(|&(key, &want)| table.server_for(key, 0) != Some(want))
            .map(|(key, &want)| (String::from_utf8_lossy(key), want))
            .collect();
        assert!(
            wrong.is_empty(),
            "pool {}: {} of {} keys misplaced, first {:?}",
            pool.name,
            wrong.len(),
            keys.len(),
            &wrong[..wrong.len().min(3)]
        );
    }
}

#[test]
fn route_vectors_cover_every_hash_with_ketama_and_modula() {
    let (keys, pools) = vectors();
    for distribution in [Distribution::Ketama, Distribution::Modula] {
        for hash in HashFn::ALL {
            assert!(
                pools
                    .iter()
                    .any(|p| p.hash == hash && p.distribution == distribution),
                "no {} {} pool",
                hash.name(),
                distribution.name()
            );
        }
    }
    assert!(pools.iter().any(|p| p.hash_tag == Some(*b"{}")));
    assert!(pools.iter().any(|p| p.hash_tag == Some(*b"$$")));
    assert!(keys.iter().any(|k| k.is_empty()));
    assert!(keys.iter().any(|k| k.len() >= 1000));
}
