//! A [`Config`] written back out as ferrox TOML.
//!
//! The control process keeps the running configuration as a model, a
//! [`Config`], and applies single-step changes to it (a server added or
//! removed, a weight changed, a command blocked). The dataplane does not
//! take the model: the result is published to it as ferrox TOML text
//! through the control block, where the dataplane parses and validates it
//! as it would a file, and `ferroxctl config show` shows the same text.
//!
//! So the text must read back as exactly the configuration it was written
//! from, whichever file that came from, twemproxy YAML included:
//! `parse_toml(&emit_toml(&c), file) == Ok(c)` for every valid `c`. Hence:
//!
//! - servers are written as twemproxy writes them, `"address:port:weight"`,
//!   with the name after a space unless it is the one the address gives
//!   by default (`address:port`, or `address` for port 11211);
//! - settings that have no "off" value are left out when off (`timeout_ms`,
//!   `hash_tag`, `auth`), and `auth` and `db` are written for redis pools
//!   only, the only pools that may have them;
//! - strings are TOML basic strings, with quotes, backslashes, control
//!   characters and invisible or ambiguous spacing escaped, so that what is
//!   shown on a terminal is what is there;
//! - pool names that are not bare TOML keys are quoted;
//! - every limit is written, as a plain integer; a size beyond TOML's
//!   integers (more than `i64::MAX` bytes) is written as `"N B"`.
//!
//! Everything else is written too, defaults included, one key per line, so
//! that the text shows every setting in effect.

use std::fmt::Display;
use std::net::SocketAddrV4;

use super::model::{Config, Pool, Protocol, ReadPolicy, Server};

/// Renders `config` as ferrox TOML that [`parse_toml`](super::parse_toml)
/// reads back as `config` (when `config` is valid: a value the parsers
/// would refuse is written as it is, and refused when read).
pub fn emit_toml(config: &Config) -> String {
    let mut out = String::from("# ferrox configuration\n\n[limits]\n");
    let limits = &config.limits;
    entry(&mut out, "max_bulk", size(limits.max_bulk));
    entry(&mut out, "max_array", limits.max_array);
    entry(&mut out, "max_depth", limits.max_depth);
    entry(&mut out, "max_inline", size(limits.max_inline));
    entry(&mut out, "max_pipeline", limits.max_pipeline);
    entry(&mut out, "max_key", size(limits.max_key));
    entry(&mut out, "max_value", size(limits.max_value));
    entry(&mut out, "max_request", size(limits.max_request));
    let o = &config.overload;
    if !o.is_off() {
        out.push_str("\n[overload]\n");
        for (name, value) in [
            ("max_in_flight", o.max_in_flight),
            ("max_client_buffer_memory", o.max_client_buffer_memory),
            ("max_backend_queue", o.max_backend_queue),
            ("max_connections", o.max_connections),
        ] {
            if let Some(n) = value {
                entry(&mut out, name, size(n));
            }
        }
    }
    for pool in &config.pools {
        out.push('\n');
        emit_pool(&mut out, pool);
    }
    for user in &config.users {
        out.push_str("\n[[users]]\n");
        entry(&mut out, "name", string(&user.name));
        let passwords: Vec<String> = user.passwords.iter().map(|p| string(p)).collect();
        entry(
            &mut out,
            "passwords",
            format_args!("[{}]", passwords.join(", ")),
        );
        let pools: Vec<String> = user.pools.iter().map(|p| string(p)).collect();
        entry(&mut out, "pools", format_args!("[{}]", pools.join(", ")));
        entry(&mut out, "acl", string(&user.acl));
    }
    out
}

fn emit_pool(out: &mut String, pool: &Pool) {
    out.push_str("[pools.");
    out.push_str(&key(&pool.name));
    out.push_str("]\n");
    entry(out, "listen", string(&pool.listen.to_string()));
    let protocol = match pool.protocol {
        Protocol::Redis => "redis",
        Protocol::Memcache => "memcache",
    };
    entry(out, "protocol", string(protocol));
    entry(out, "hash", string(pool.hash.name()));
    entry(out, "distribution", string(pool.distribution.name()));
    if let Some(tag) = pool.hash_tag {
        // Valid tags are ASCII, one char per byte.
        let tag: String = tag.iter().map(|&b| char::from(b)).collect();
        entry(out, "hash_tag", string(&tag));
    }
    if let Some(timeout) = pool.timeout_ms {
        entry(out, "timeout_ms", timeout);
    }
    entry(out, "backlog", pool.backlog);
    entry(out, "client_connections", pool.client_connections);
    entry(out, "preconnect", pool.preconnect);
    entry(out, "tcp_keepalive", pool.tcp_keepalive);
    if pool.protocol == Protocol::Redis {
        if let Some(auth) = &pool.auth {
            entry(out, "auth", string(auth));
        }
        if let Some(password) = &pool.server_auth {
            entry(out, "server_auth", string(password));
        }
        if let Some(user) = &pool.server_user {
            entry(out, "server_user", string(user));
        }
        entry(out, "db", pool.db);
    }
    entry(out, "server_connections", pool.server_connections);
    entry(out, "auto_eject_hosts", pool.auto_eject_hosts);
    entry(out, "server_retry_timeout_ms", pool.server_retry_timeout_ms);
    entry(out, "server_failure_limit", pool.server_failure_limit);
    let commands: Vec<String> = pool.blocked_commands.iter().map(|c| string(c)).collect();
    entry(
        out,
        "blocked_commands",
        format_args!("[{}]", commands.join(", ")),
    );
    if pool.read_policy != ReadPolicy::Primary {
        entry(out, "read_policy", string(pool.read_policy.name()));
    }
    if !pool.sentinels.is_empty() {
        entry(out, "sentinels", addresses(&pool.sentinels));
    }
    if let Some(password) = &pool.sentinel_auth {
        entry(out, "sentinel_auth", string(password));
    }
    if let Some(user) = &pool.sentinel_user {
        entry(out, "sentinel_user", string(user));
    }
    if pool.servers.is_empty() {
        out.push_str("servers = []\n");
    } else {
        out.push_str("servers = [\n");
        for s in &pool.servers {
            out.push_str("    ");
            out.push_str(&server(s));
            out.push_str(",\n");
        }
        out.push_str("]\n");
    }
    let v = &pool.validate;
    if !v.is_off() {
        emit_validate(out, pool);
    }
    if let Some(c) = &pool.compression {
        out.push_str("[pools.");
        out.push_str(&key(&pool.name));
        out.push_str(".compression]\n");
        entry(out, "algorithm", string(c.algorithm.name()));
        entry(out, "min_size", size(c.min_size));
        entry(out, "level", c.level);
        let patterns: Vec<String> = c.keys.iter().map(|p| string(p)).collect();
        entry(out, "keys", format_args!("[{}]", patterns.join(", ")));
        entry(out, "flag_bit", c.flag_bit);
    }
    if let Some(h) = &pool.hot_key_cache {
        out.push_str("[pools.");
        out.push_str(&key(&pool.name));
        out.push_str(".hot_key_cache]\n");
        entry(out, "min_rate", h.min_rate);
        entry(out, "memory", size(h.memory));
        if let Some(ms) = h.max_staleness_ms {
            entry(out, "max_staleness_ms", ms);
        }
    }
    for limit in &pool.rate_limits {
        out.push_str("[[pools.");
        out.push_str(&key(&pool.name));
        out.push_str(".rate_limits]]\n");
        entry(out, "by", string(limit.by.name()));
        let commands: Vec<String> = limit.commands.iter().map(|c| string(c)).collect();
        entry(out, "commands", format_args!("[{}]", commands.join(", ")));
        if let Some(n) = limit.requests {
            entry(out, "requests", n);
        }
        if let Some(n) = limit.bytes {
            entry(out, "bytes", size(n));
        }
        entry(out, "per_ms", limit.per_ms);
    }
}

fn emit_validate(out: &mut String, pool: &Pool) {
    let v = &pool.validate;
    out.push_str("[pools.");
    out.push_str(&key(&pool.name));
    out.push_str(".validate]\n");
    let patterns: Vec<String> = v.key_patterns.iter().map(|p| string(p)).collect();
    entry(
        out,
        "key_patterns",
        format_args!("[{}]", patterns.join(", ")),
    );
    for (name, value) in [
        ("max_key_bytes", v.max_key_bytes),
        ("max_value_bytes", v.max_value_bytes),
        ("max_keys", v.max_keys),
    ] {
        if let Some(n) = value {
            entry(out, name, size(n));
        }
    }
    entry(out, "require_ttl", v.require_ttl);
    if let Some(ttl) = v.max_ttl_s {
        entry(out, "max_ttl_s", ttl);
    }
}

fn entry(out: &mut String, key: &str, value: impl Display) {
    out.push_str(key);
    out.push_str(" = ");
    out.push_str(&value.to_string());
    out.push('\n');
}

/// A size limit: an integer when TOML has one that large, else `"N B"`.
fn size(n: usize) -> String {
    if i64::try_from(n).is_ok() {
        n.to_string()
    } else {
        string(&format!("{n} B"))
    }
}

/// `"address:port:weight"`, and ` name` unless the address gives it. A name
/// the string form cannot carry (empty, or with spaces: both invalid) is
/// written in the table form, to be refused there with its reason.
fn server(s: &Server) -> String {
    let spec = format!("{}:{}", s.addr, s.weight);
    if let Some(master) = &s.master {
        format!(
            "{{ master = {}, weight = {}, name = {} }}",
            string(master),
            s.weight,
            string(&s.name)
        )
    } else if !s.replicas.is_empty() {
        format!(
            "{{ addr = {}, weight = {}, name = {}, replicas = {} }}",
            string(&s.addr.to_string()),
            s.weight,
            string(&s.name),
            addresses(&s.replicas)
        )
    } else if s.name == default_name(s.addr) {
        string(&spec)
    } else if !s.name.is_empty() && !s.name.contains(char::is_whitespace) {
        string(&format!("{spec} {}", s.name))
    } else {
        format!(
            "{{ addr = {}, weight = {}, name = {} }}",
            string(&s.addr.to_string()),
            s.weight,
            string(&s.name)
        )
    }
}

/// `["a.b.c.d:port", ...]`.
fn addresses(addrs: &[SocketAddrV4]) -> String {
    let addrs: Vec<String> = addrs.iter().map(|a| string(&a.to_string())).collect();
    format!("[{}]", addrs.join(", "))
}

/// twemproxy's name for a server given without one, as `check` derives it
/// from the address written in canonical form.
fn default_name(addr: SocketAddrV4) -> String {
    if addr.port() == 11211 {
        addr.ip().to_string()
    } else {
        addr.to_string()
    }
}

/// A table key: bare when TOML allows it, else quoted.
fn key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        name.to_owned()
    } else {
        string(name)
    }
}

/// A TOML basic string. Beyond what TOML requires (quote, backslash,
/// control characters), spacing other than a plain space and the
/// invisible formatting characters are escaped too, so that a terminal
/// shows every character that is there and nothing that is not.
fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if needs_escape(c) => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Control characters, whitespace other than ' ', and the zero-width and
/// bidirectional formatting characters; all are in the BMP, so `\uXXXX`
/// holds them.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || (c.is_whitespace() && c != ' ')
        || matches!(
            c,
            '\u{ad}'
                | '\u{34f}'
                | '\u{61c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::super::model::{
        Compression, CompressionAlgorithm, Distribution, HashFn, HotKeyCache, Limits, Overload,
        RateBy, RateLimit, User, Validate, DISTRIBUTIONS, HASHES, MAX_DEPTH, ZSTD_LEVELS,
    };
    use super::super::parse_toml;
    use super::*;

    use crate::tests::{server as named, toml_ok, yml_ok, FERROX_TOML, NUTCRACKER_YML};

    const DEMO_TOML: &str = include_str!("../../../configs/demo.toml");

    /// Asserts that `config` survives being written and read back, showing
    /// the text when it does not.
    fn assert_round_trip(config: &Config) {
        let text = emit_toml(config);
        match parse_toml(&text, "emitted.toml") {
            Ok(back) => assert_eq!(&back, config, "read back differently:\n{text}"),
            Err(e) => panic!("emitted text does not parse:\n{e}\n--- text ---\n{text}"),
        }
    }

    #[test]
    fn ferrox_toml_round_trips() {
        assert_round_trip(&toml_ok(FERROX_TOML));
    }

    #[test]
    fn demo_round_trips() {
        assert_round_trip(&toml_ok(DEMO_TOML));
    }

    #[test]
    fn nutcracker_round_trips() {
        assert_round_trip(&yml_ok(NUTCRACKER_YML));
    }

    #[test]
    fn text_is_readable() {
        let mut pool = Pool::new("cache", "0.0.0.0:6379".parse().unwrap(), Protocol::Redis);
        pool.hash_tag = Some(*b"{}");
        pool.timeout_ms = Some(400);
        pool.auth = Some("se\"cr\\et\n".into());
        pool.blocked_commands = vec!["FLUSHALL".into(), "KEYS".into()];
        pool.servers = vec![
            named("198.18.0.1:7001", 1, "198.18.0.1:7001"),
            named("198.18.0.1:7002", 3, "beta"),
        ];
        let mut sessions = Pool::new(
            "web sessions",
            "10.0.0.1:11211".parse().unwrap(),
            Protocol::Memcache,
        );
        sessions.servers = vec![
            named("198.18.0.3:11211", 1, "198.18.0.3"),
            named("198.18.0.4:11211", 1, "198.18.0.4:11211"),
        ];
        let config = Config {
            pools: vec![pool, sessions],
            limits: Limits::default(),
            users: Vec::new(),
            overload: Overload::default(),
        };
        let expected = r#"# ferrox configuration

[limits]
max_bulk = 536870912
max_array = 1048576
max_depth = 32
max_inline = 65536
max_pipeline = 1024
max_key = 65536
max_value = 536870912
max_request = 1073741824

[pools.cache]
listen = "0.0.0.0:6379"
protocol = "redis"
hash = "fnv1a_64"
distribution = "ketama"
hash_tag = "{}"
timeout_ms = 400
backlog = 512
client_connections = 0
preconnect = false
tcp_keepalive = false
auth = "se\"cr\\et\n"
db = 0
server_connections = 1
auto_eject_hosts = false
server_retry_timeout_ms = 30000
server_failure_limit = 2
blocked_commands = ["FLUSHALL", "KEYS"]
servers = [
    "198.18.0.1:7001:1",
    "198.18.0.1:7002:3 beta",
]

[pools."web sessions"]
listen = "10.0.0.1:11211"
protocol = "memcache"
hash = "fnv1a_64"
distribution = "ketama"
backlog = 512
client_connections = 0
preconnect = false
tcp_keepalive = false
server_connections = 1
auto_eject_hosts = false
server_retry_timeout_ms = 30000
server_failure_limit = 2
blocked_commands = []
servers = [
    "198.18.0.3:11211:1",
    "198.18.0.4:11211:1 198.18.0.4:11211",
]
"#;
        assert_eq!(emit_toml(&config), expected);
        assert_round_trip(&config);
    }

    /// What twemproxy's format allows and ferrox TOML writes differently:
    /// names given that equal (or nearly equal) the default, ports written
    /// with leading zeros, `timeout: 0`, escapes in quoted values.
    #[test]
    fn twemproxy_quirks_round_trip() {
        let yml = r#"weird.pool name:
  listen: 127.0.0.1:6380
  redis: true
  hash_tag: "\x01:"
  redis_auth: "p\"a\\ss\tw\u00e9rd\x7f\u2028 #not a comment"
  redis_db: 7
  timeout: 0
  server_retry_timeout: 9223372036854775807
  servers:
    - 10.0.0.1:11211:1
    - 10.0.0.2:11211:2 10.0.0.2:11211
    - 10.0.0.3:7000:3 10.0.0.3:7000
    - 10.0.0.4:07001:1
    - 10.0.0.5:7000:1 10.0.0.9
    - 10.0.0.6:11211:1 10.0.0.6
"quo\"ted":
  listen: 127.0.0.1:11211
  timeout: 250
  servers:
    - 10.0.0.7:11211:4 "#;
        let yml = format!("{yml}caf\u{e9}\n");
        let config = yml_ok(&yml);
        let cache = &config.pools[0];
        assert_eq!(cache.name, "weird.pool name");
        assert_eq!(cache.hash_tag, Some([1, b':']));
        assert_eq!(cache.timeout_ms, None);
        assert_eq!(
            cache.auth.as_deref(),
            Some("p\"a\\ss\tw\u{e9}rd\x7f\u{2028} #not a comment")
        );
        let names: Vec<&str> = cache.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "10.0.0.1",
                "10.0.0.2:11211",
                "10.0.0.3:7000",
                "10.0.0.4:07001",
                "10.0.0.9",
                "10.0.0.6",
            ]
        );
        assert_eq!(config.pools[1].name, "quo\"ted");
        assert_eq!(config.pools[1].servers[0].name, "caf\u{e9}");
        let text = emit_toml(&config);
        assert!(text.contains("[pools.\"weird.pool name\"]\n"), "{text}");
        assert!(text.contains("[pools.\"quo\\\"ted\"]\n"), "{text}");
        assert!(
            text.contains("auth = \"p\\\"a\\\\ss\\tw\u{e9}rd\\u007F\\u2028 #not a comment\"\n"),
            "{text}"
        );
        assert!(text.contains("hash_tag = \"\\u0001:\"\n"), "{text}");
        assert!(text.contains("\"10.0.0.1:11211:1\",\n"), "{text}");
        assert!(
            text.contains("\"10.0.0.4:7001:1 10.0.0.4:07001\",\n"),
            "{text}"
        );
        assert!(text.contains("\"10.0.0.6:11211:1\",\n"), "{text}");
        assert!(!text.contains("timeout_ms = 0"), "{text}");
        assert_round_trip(&config);
    }

    #[test]
    fn sizes_beyond_toml_integers_are_strings() {
        let mut config = toml_ok(DEMO_TOML);
        config.limits.max_bulk = usize::MAX;
        config.limits.max_value = usize::MAX;
        config.limits.max_inline = i64::MAX as usize + 1;
        let text = emit_toml(&config);
        assert!(
            text.contains(&format!("max_bulk = \"{} B\"\n", usize::MAX)),
            "{text}"
        );
        assert_round_trip(&config);
    }

    /// The largest integer TOML holds.
    const MAX_INT: u64 = i64::MAX as u64;

    fn max_usize() -> usize {
        usize::try_from(MAX_INT).unwrap_or(usize::MAX)
    }

    /// Text from a broad set of characters: printable ASCII, control
    /// characters, quotes and backslashes, invisible and spacing
    /// characters, and any char at all.
    fn text() -> impl Strategy<Value = String> {
        let special = prop::sample::select(vec![
            '"',
            '\\',
            '\'',
            '\x7f',
            '\u{85}',
            '\u{a0}',
            '\u{ad}',
            '\u{2028}',
            '\u{202e}',
            '\u{200b}',
            '\u{feff}',
            '\u{e9}',
            '\u{1f600}',
            '\u{10ffff}',
            '#',
            '=',
            '[',
            '.',
        ]);
        prop::collection::vec(
            prop_oneof![
                4 => (0x20u8..0x7f).prop_map(char::from),
                1 => (0u8..0x20).prop_map(char::from),
                2 => special,
                2 => any::<char>(),
            ],
            1..16,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    /// A valid server name: one word, no spaces of any kind.
    fn word() -> impl Strategy<Value = String> {
        text()
            .prop_map(|t| t.chars().filter(|c| !c.is_whitespace()).collect::<String>())
            .prop_filter("a name is not empty", |n| !n.is_empty())
    }

    fn ip() -> impl Strategy<Value = Ipv4Addr> {
        any::<u32>().prop_map(Ipv4Addr::from)
    }

    fn server() -> impl Strategy<Value = Server> {
        let port = prop_oneof![Just(11211u16), 1..=u16::MAX];
        (ip(), port, 1..=u32::MAX, 0..3u8, word()).prop_map(|(ip, port, weight, how, word)| {
            let addr = SocketAddrV4::new(ip, port);
            let name = match how {
                // Unnamed.
                0 => default_name(addr),
                // Named like the other default form.
                1 if port == 11211 => addr.to_string(),
                1 => ip.to_string(),
                _ => word,
            };
            Server::new(addr, weight, name)
        })
    }

    fn servers() -> impl Strategy<Value = Vec<Server>> {
        prop::collection::vec(server(), 1..=5).prop_filter("server names differ", |servers| {
            let mut names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
            names.sort_unstable();
            names.windows(2).all(|w| w[0] != w[1])
        })
    }

    fn pool_name() -> impl Strategy<Value = String> {
        prop_oneof!["[A-Za-z0-9_-]{1,12}", text()]
    }

    fn pool() -> impl Strategy<Value = Pool> {
        let identity = (
            pool_name(),
            prop_oneof![Just(Ipv4Addr::UNSPECIFIED), ip()],
            1..=u16::MAX,
            any::<bool>(),
            prop::sample::select(HASHES.to_vec()),
            prop::sample::select(DISTRIBUTIONS.to_vec()),
        );
        let options = (
            prop::option::of(prop::array::uniform2(0u8..0x80)),
            prop::option::of(1..=MAX_INT),
            any::<u32>(),
            any::<u32>(),
            any::<bool>(),
            any::<bool>(),
            prop::option::of(text()),
            any::<u32>(),
        );
        let servers_options = (
            1..=u32::MAX,
            any::<bool>(),
            0..=MAX_INT,
            any::<u32>(),
            prop::collection::vec("[!-~]{1,10}", 0..5),
            servers(),
        );
        (identity, options, servers_options).prop_map(
            |(
                (name, ip, port, redis, hash, distribution),
                (hash_tag, timeout, backlog, clients, preconnect, keepalive, auth, db),
                (connections, eject, retry, failures, commands, servers),
            )| {
                let protocol = if redis {
                    Protocol::Redis
                } else {
                    Protocol::Memcache
                };
                let mut blocked_commands = Vec::new();
                for command in commands {
                    let command = command.to_ascii_uppercase();
                    if !blocked_commands.contains(&command) {
                        blocked_commands.push(command);
                    }
                }
                let pool = Pool::new(name, SocketAddrV4::new(ip, port), protocol);
                let distribution =
                    Distribution::from_name(distribution).expect("one of DISTRIBUTIONS");
                // A cluster pool speaks Redis, on database 0, ejecting nothing.
                let cluster = distribution == Distribution::RedisCluster;
                let (distribution, db, eject) = match (cluster, redis) {
                    (true, true) => (distribution, 0, false),
                    (true, false) => (Distribution::Ketama, db, eject),
                    (false, _) => (distribution, db, eject),
                };
                Pool {
                    hash: HashFn::from_name(hash).expect("one of HASHES"),
                    distribution,
                    hash_tag,
                    timeout_ms: timeout,
                    backlog,
                    client_connections: clients,
                    preconnect,
                    tcp_keepalive: keepalive,
                    // Only Redis pools have these.
                    auth: if redis { auth } else { None },
                    db: if redis { db } else { 0 },
                    server_connections: connections,
                    auto_eject_hosts: eject,
                    server_retry_timeout_ms: retry,
                    server_failure_limit: failures,
                    blocked_commands,
                    servers,
                    ..pool
                }
            },
        )
    }

    /// Any size, small ones more often.
    fn any_size() -> impl Strategy<Value = usize> {
        prop_oneof![1..=1usize << 32, 1..=usize::MAX]
    }

    fn limits() -> impl Strategy<Value = Limits> {
        (
            (any_size(), any_size()),
            1..=max_usize(),
            1..=MAX_DEPTH,
            any_size(),
            1..=max_usize(),
            any_size(),
            any_size(),
        )
            .prop_map(
                |(
                    (a, b),
                    max_array,
                    max_depth,
                    max_inline,
                    max_pipeline,
                    max_value,
                    max_request,
                )| Limits {
                    max_bulk: a.max(b),
                    max_array,
                    max_depth,
                    max_inline,
                    max_pipeline,
                    max_key: a.min(b),
                    max_value,
                    max_request,
                },
            )
    }

    fn config() -> impl Strategy<Value = Config> {
        let pools = prop::collection::vec(pool(), 1..=3).prop_filter(
            "pool names and listening ports differ",
            |pools| {
                pools.iter().enumerate().all(|(i, p)| {
                    pools[..i]
                        .iter()
                        .all(|q| q.name != p.name && q.listen.port() != p.listen.port())
                })
            },
        );
        let users = prop::collection::vec(
            (
                "[a-z][a-z0-9_-]{0,8}",
                prop::collection::vec(".{1,12}", 1..=2),
                any::<bool>(),
                prop::sample::select(vec![
                    "",
                    "+@read ~report:*",
                    "allcommands allkeys -@dangerous -flushdb",
                    "nocommands +get +set ~a* ~b:{x}* resetkeys ~c",
                ]),
            ),
            0..=3,
        );
        let validate = (
            prop::collection::vec("[a-z:*?]{1,6}", 0..=2),
            prop::option::of(1usize..1 << 20),
            prop::option::of(1usize..1 << 40),
            prop::option::of(1usize..1000),
            any::<bool>(),
            prop::option::of(1u64..1 << 40),
        )
            .prop_map(
                |(
                    key_patterns,
                    max_key_bytes,
                    max_value_bytes,
                    max_keys,
                    require_ttl,
                    max_ttl_s,
                )| {
                    Validate {
                        key_patterns,
                        max_key_bytes,
                        max_value_bytes,
                        max_keys,
                        require_ttl,
                        max_ttl_s,
                    }
                },
            );
        let validates = prop::collection::vec(validate, 3);
        let compression = prop::option::of(
            (
                prop::sample::select(CompressionAlgorithm::ALL.to_vec()),
                0usize..1 << 20,
                ZSTD_LEVELS,
                prop::collection::vec("[a-z:*?]{1,6}", 0..=2),
                0u8..32,
            )
                .prop_map(|((_, algorithm), min_size, level, keys, flag_bit)| {
                    Compression {
                        algorithm,
                        min_size,
                        level,
                        keys,
                        flag_bit,
                    }
                }),
        );
        let hot_key_cache = prop::option::of(
            (
                1u32..1 << 20,
                1usize..1 << 40,
                prop::option::of(1u64..1 << 40),
            )
                .prop_map(|(min_rate, memory, max_staleness_ms)| HotKeyCache {
                    min_rate,
                    memory,
                    max_staleness_ms,
                }),
        );
        let validates = (
            validates,
            prop::collection::vec((compression, hot_key_cache), 3),
        );
        let rate_limit = (
            prop::sample::select(RateBy::ALL.to_vec()),
            prop::collection::vec(prop::sample::select(vec!["GET", "SET", "MGET"]), 0..=2),
            prop::option::of(1u64..1 << 40),
            prop::option::of(1usize..1 << 40),
            1u64..100_000,
        )
            .prop_map(|((_, by), commands, requests, bytes, per_ms)| {
                let mut commands: Vec<String> = commands.into_iter().map(String::from).collect();
                commands.dedup();
                RateLimit {
                    by,
                    commands,
                    requests: requests.or(bytes.is_none().then_some(1)),
                    bytes,
                    per_ms,
                }
            });
        let rate_limits = prop::collection::vec(prop::collection::vec(rate_limit, 0..=2), 3);
        let overload = (
            prop::option::of(1usize..1 << 30),
            prop::option::of(1usize..1 << 40),
            prop::option::of(1usize..1 << 20),
            prop::option::of(1usize..1 << 20),
        );
        (pools, limits(), users, validates, rate_limits, overload).prop_map(
            |(mut pools, limits, users, (validates, features), rate_limits, overload)| {
                for (((pool, validate), limits), (compression, hot_key_cache)) in pools
                    .iter_mut()
                    .zip(validates)
                    .zip(rate_limits)
                    .zip(features)
                {
                    pool.validate = validate;
                    pool.rate_limits = limits;
                    pool.compression = compression;
                    let cluster = pool.distribution == Distribution::RedisCluster;
                    pool.hot_key_cache = hot_key_cache.filter(|_| !cluster);
                }
                let redis: Vec<String> = pools
                    .iter()
                    .filter(|p| p.protocol == Protocol::Redis)
                    .map(|p| p.name.clone())
                    .collect();
                let mut seen = Vec::new();
                let users = users
                    .into_iter()
                    .filter(|(name, ..)| {
                        name != "default" && !seen.contains(name) && {
                            seen.push(name.clone());
                            true
                        }
                    })
                    .map(|(name, passwords, all_pools, acl)| User {
                        name,
                        passwords,
                        pools: if all_pools { Vec::new() } else { redis.clone() },
                        acl: acl.into(),
                        line: 0,
                    })
                    .collect();
                Config {
                    pools,
                    limits,
                    users,
                    overload: Overload {
                        max_in_flight: overload.0,
                        max_client_buffer_memory: overload.1,
                        max_backend_queue: overload.2,
                        max_connections: overload.3,
                    },
                }
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_valid_config_round_trips(config in config()) {
            let text = emit_toml(&config);
            match parse_toml(&text, "emitted.toml") {
                Ok(back) => prop_assert_eq!(back, config, "read back differently:\n{}", text),
                Err(e) => prop_assert!(false, "emitted text does not parse:\n{}\n--- text ---\n{}", e, text),
            }
        }
    }
}
