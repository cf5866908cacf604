use super::*;
use proptest::prelude::*;
use std::net::SocketAddrV4;

pub(crate) const FERROX_TOML: &str = include_str!("../../../configs/ferrox.toml");
pub(crate) const NUTCRACKER_YML: &str = include_str!("../../../configs/nutcracker.yml");

pub(crate) fn toml_ok(text: &str) -> Config {
    parse_toml(text, "x.toml").unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn yml_ok(text: &str) -> Config {
    parse_nutcracker(text, "x.yml").unwrap_or_else(|e| panic!("{e}"))
}

/// Every diagnostic as it is printed.
fn errors(result: Result<Config, ConfigError>) -> Vec<String> {
    match result {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

fn toml_errors(text: &str) -> Vec<String> {
    errors(parse_toml(text, "x.toml"))
}

fn yml_errors(text: &str) -> Vec<String> {
    errors(parse_nutcracker(text, "x.yml"))
}

fn addr(text: &str) -> SocketAddrV4 {
    text.parse().unwrap()
}

pub(crate) fn server(address: &str, weight: u32, name: &str) -> Server {
    Server::new(addr(address), weight, name)
}

/// The pool of the `every_key` tests, which set every key of a pool.
fn every_key_pool() -> Pool {
    Pool {
        name: "cache".into(),
        listen: addr("198.18.0.10:6380"),
        protocol: Protocol::Redis,
        hash: HashFn::from_name("murmur").unwrap(),
        distribution: Distribution::from_name("jump").unwrap(),
        hash_tag: Some(*b"{}"),
        timeout_ms: Some(400),
        backlog: 1024,
        client_connections: 10000,
        preconnect: true,
        tcp_keepalive: true,
        auth: Some("s3cret".into()),
        server_auth: None,
        server_user: None,
        db: 3,
        server_connections: 2,
        auto_eject_hosts: true,
        server_retry_timeout_ms: 2000,
        server_failure_limit: 5,
        blocked_commands: vec!["FLUSHALL".into(), "KEYS".into()],
        servers: vec![{
            let mut s = server("198.18.0.1:7001", 2, "alpha");
            s.replicas = vec![addr("198.18.0.1:7101")];
            s
        }],
        validate: Default::default(),
        rate_limits: Vec::new(),
        read_policy: ReadPolicy::PreferReplica,
        sentinels: Vec::new(),
        sentinel_auth: None,
        sentinel_user: None,
        compression: Some(Compression {
            algorithm: CompressionAlgorithm::Zstd,
            min_size: 512,
            level: 3,
            keys: vec!["doc:*".into()],
            flag_bit: 29,
        }),
        hot_key_cache: Some(HotKeyCache {
            min_rate: 200,
            memory: 8 << 20,
            max_staleness_ms: Some(500),
        }),
    }
}

/// A valid pool on lines 1-4, for error tests to add lines to from 5 on.
const POOL: &str = "[pools.a]
listen = \"0.0.0.0:6379\"
protocol = \"redis\"
servers = [\"198.18.0.1:7001:1\"]
";

/// A redis pool table, four lines from `[pools.NAME]` to `servers =
/// SERVERS` (which may run over more lines).
fn redis_pool(name: &str, listen: &str, servers: &str) -> String {
    format!("[pools.{name}]\nlisten = \"{listen}\"\nprotocol = \"redis\"\nservers = {servers}\n")
}

const ONE_SERVER: &str = r#"["198.18.0.1:7001:1"]"#;

/// The same in YAML, lines 1-4; keys added from line 5 are in the pool.
const YML_POOL: &str = "a:
  listen: 0.0.0.0:6379
  servers:
    - 198.18.0.1:7001:1
";

mod toml_format {
    use super::*;

    #[test]
    fn every_key() {
        let config = toml_ok(
            r#"
[limits]
max_bulk = "1 MiB"
max_array = 100
max_depth = 8
max_inline = 4096
max_pipeline = 16
max_key = "250 B"
max_value = "1 GiB"
max_request = "2 GiB"

[pools.cache]
listen = "198.18.0.10:6380"
protocol = "redis"
hash = "murmur"
distribution = "jump"
hash_tag = "{}"
timeout_ms = 400
backlog = 1024
client_connections = 10000
preconnect = true
tcp_keepalive = true
auth = "s3cret"
db = 3
server_connections = 2
auto_eject_hosts = true
server_retry_timeout_ms = 2000
server_failure_limit = 5
blocked_commands = ["flushall", "Keys", "FLUSHALL"]
read_policy = "prefer_replica"
servers = [{ addr = "198.18.0.1:7001", weight = 2, name = "alpha", replicas = ["198.18.0.1:7101"] }]

[pools.cache.compression]
algorithm = "zstd"
min_size = 512
level = 3
keys = ["doc:*"]

[pools.cache.hot_key_cache]
min_rate = 200
memory = "8 MiB"
max_staleness_ms = 500
"#,
        );
        assert_eq!(
            config.limits,
            Limits {
                max_bulk: 1 << 20,
                max_array: 100,
                max_depth: 8,
                max_inline: 4096,
                max_pipeline: 16,
                max_key: 250,
                max_value: 1 << 30,
                max_request: 2 << 30,
            }
        );
        assert_eq!(config.pools, vec![every_key_pool()]);
    }

    #[test]
    fn defaults_are_twemproxys() {
        let config = toml_ok(POOL);
        assert_eq!(config.limits, Limits::default());
        let mut expected = Pool::new("a", addr("0.0.0.0:6379"), Protocol::Redis);
        expected.servers = vec![server("198.18.0.1:7001", 1, "198.18.0.1:7001")];
        assert_eq!(config.pools, vec![expected]);
        let pool = &config.pools[0];
        assert_eq!(
            (pool.hash.name(), pool.distribution.name()),
            ("fnv1a_64", "ketama")
        );
        assert_eq!((pool.timeout_ms, pool.backlog), (None, 512));
        assert_eq!((pool.server_connections, pool.client_connections), (1, 0));
        assert_eq!(
            (pool.server_retry_timeout_ms, pool.server_failure_limit),
            (30_000, 2)
        );
        assert!(!pool.auto_eject_hosts && !pool.preconnect && !pool.tcp_keepalive);
    }

    #[test]
    fn server_forms_and_twemproxy_names() {
        let config = toml_ok(
            r#"
[pools.a]
listen = "0.0.0.0:11211"
protocol = "memcache"
servers = [
    "198.18.0.1:7001:3 alpha",  # weight and name
    "198.18.0.1:7002:2",        # named "address:port"
    "198.18.0.1:7003",          # weight 1
    "198.18.0.2:11211:1",       # port 11211: named "address" (libmemcached)
    { addr = "198.18.0.3:7001" },
    { addr = "198.18.0.3:11211", weight = 4 },
    { addr = "198.18.0.3:7002", weight = 5, name = "omega" },
]

[pools.b]
listen = "0.0.0.0:11212"
protocol = "memcache"

[[pools.b.servers]]
addr = "198.18.0.4:7001"

[[pools.b.servers]]
addr = "198.18.0.4:7002"
weight = 2
"#,
        );
        assert_eq!(
            config.pools[0].servers,
            vec![
                server("198.18.0.1:7001", 3, "alpha"),
                server("198.18.0.1:7002", 2, "198.18.0.1:7002"),
                server("198.18.0.1:7003", 1, "198.18.0.1:7003"),
                server("198.18.0.2:11211", 1, "198.18.0.2"),
                server("198.18.0.3:7001", 1, "198.18.0.3:7001"),
                server("198.18.0.3:11211", 4, "198.18.0.3"),
                server("198.18.0.3:7002", 5, "omega"),
            ]
        );
        assert_eq!(
            config.pools[1].servers,
            vec![
                server("198.18.0.4:7001", 1, "198.18.0.4:7001"),
                server("198.18.0.4:7002", 2, "198.18.0.4:7002"),
            ]
        );
    }

    #[test]
    fn pools_keep_file_order() {
        let mut text = String::new();
        for (i, name) in ["zeta", "alpha", "mu"].iter().enumerate() {
            text += &format!(
                "[pools.{name}]\nlisten = \"0.0.0.0:{}\"\nprotocol = \"redis\"\nservers = [\"198.18.0.1:7001:1\"]\n",
                7000 + i
            );
        }
        let names: Vec<_> = toml_ok(&text).pools.into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["zeta", "alpha", "mu"]);
        // Dotted keys are the same tables.
        let config = toml_ok(
            "pools.b.listen = \"0.0.0.0:1\"\npools.b.protocol = \"redis\"\npools.b.servers = [\"198.18.0.1:1:1\"]\n\
             pools.a.listen = \"0.0.0.0:2\"\npools.a.protocol = \"redis\"\npools.a.servers = [\"198.18.0.1:2:1\"]\n",
        );
        assert_eq!(config.pools[0].name, "b");
        assert_eq!(config.pools[1].name, "a");
    }

    #[test]
    fn sizes_take_units() {
        let limits = |text: &str| toml_ok(&format!("{POOL}[limits]\n{text}\n")).limits;
        assert_eq!(limits("max_value = \"64KiB\"").max_value, 64 << 10);
        assert_eq!(limits("max_value = \"3 MiB\"").max_value, 3 << 20);
        assert_eq!(limits("max_value = \"2 GiB\"").max_value, 2 << 30);
        assert_eq!(limits("max_value = \"100 B\"").max_value, 100);
        assert_eq!(limits("max_value = 1_000").max_value, 1000);
        assert_eq!(limits("max_pipeline = 1").max_pipeline, 1);
    }

    #[test]
    fn syntax_errors_have_their_line() {
        assert_eq!(
            toml_errors("[pools.a]\nlisten = \"0.0.0.0:1\nprotocol = \"redis\"\n"),
            ["x.toml:2: invalid basic string"]
        );
        let duplicate = toml_errors(&format!("{POOL}[pools.a]\n"));
        assert_eq!(duplicate.len(), 1);
        assert!(duplicate[0].starts_with("x.toml:5: "), "{duplicate:?}");
        let date = toml_errors(&format!("{POOL}timeout_ms = 1979-05-27\n"));
        assert_eq!(
            date,
            ["x.toml:5: a date or time, which no setting takes; put it in quotes if it is text"]
        );
    }

    #[test]
    fn type_errors() {
        assert_eq!(
            toml_errors(&format!(
                "{POOL}hash = 1\npreconnect = \"yes\"\nbacklog = \"512\"\ntimeout_ms = 1.5\n\
                 db = -1\nclient_connections = 4294967296\nblocked_commands = \"KEYS\"\n"
            )),
            [
                "x.toml:5: pool \"a\": hash: expected a string, found an integer",
                "x.toml:6: pool \"a\": preconnect: expected true or false, found a string",
                "x.toml:7: pool \"a\": backlog: expected an integer, found a string",
                "x.toml:8: pool \"a\": timeout_ms: expected an integer, found a float",
                "x.toml:9: pool \"a\": db -1: cannot be negative",
                "x.toml:10: pool \"a\": client_connections 4294967296: too large",
                "x.toml:11: pool \"a\": blocked_commands: expected a list of command names, found a string",
            ]
        );
        assert_eq!(
            toml_errors("[pools.a]\nlisten = \"0.0.0.0:1\"\nprotocol = \"redis\"\nservers = \"198.18.0.1:7001:1\"\n"),
            ["x.toml:4: pool \"a\": servers: expected a list, found a string"]
        );
    }

    #[test]
    fn unknown_keys() {
        assert_eq!(
            toml_errors(&format!(
                "{POOL}lisen = \"0.0.0.0:1\"\ntimeout = 5\nredis = true\n\
                 [limits]\nmax_pipe = 3\n[pool.b]\n"
            )),
            [
                "x.toml:5: pool \"a\": lisen: unknown key (did you mean \"listen\"?)",
                "x.toml:6: pool \"a\": timeout: unknown key (twemproxy's timeout; here it is timeout_ms = 400)",
                "x.toml:7: pool \"a\": redis: unknown key (twemproxy's redis; here it is protocol = \"redis\")",
                "x.toml:9: limits: unknown key \"max_pipe\" (did you mean \"max_pipeline\"?)",
                "x.toml:10: unknown key \"pool\" (did you mean \"pools\"?); the file has [limits], [overload], [pools.NAME] and [[users]] tables",
            ]
        );
        assert_eq!(
            toml_errors(
                "[pools.a]\nlisten = \"0.0.0.0:1\"\nprotocol = \"redis\"\n\
                 servers = [{ addr = \"198.18.0.1:1\", wieght = 2 }]\n"
            ),
            ["x.toml:4: pool \"a\": server: unknown key \"wieght\" (did you mean \"weight\"?); a server has addr, weight, name, replicas (or master instead of addr)"]
        );
    }

    #[test]
    fn bad_addresses() {
        // From line 5.
        let servers = r#"[
    "1.2.3.4:99999:1",
    "cache.local:7001:1",
    "[::1]:7001:1",
    "1.2.3:7001:1",
    "1.2.3.4:0:1",
    "1.2.3.4:x:1",
    "1.2.3.4",
    "/tmp/redis.sock:1",
    { addr = "1.2.3.4" },
    { weight = 2 },
    "198.18.0.1:7001:1",
]"#;
        let text = [
            redis_pool("a", "0.0.0.0:99999", servers),
            redis_pool("b", "/tmp/sock 0666", ONE_SERVER),
            redis_pool("c", "localhost:6379", ONE_SERVER),
        ]
        .concat();
        assert_eq!(
            toml_errors(&text),
            [
                "x.toml:2: pool \"a\": listen \"0.0.0.0:99999\": port out of range",
                "x.toml:5: pool \"a\": server \"1.2.3.4:99999:1\": port out of range",
                "x.toml:6: pool \"a\": server \"cache.local:7001:1\": give an IPv4 address; the dataplane does not resolve names",
                "x.toml:7: pool \"a\": server \"[::1]:7001:1\": the dataplane speaks IPv4 only",
                "x.toml:8: pool \"a\": server \"1.2.3:7001:1\": \"1.2.3\" is not an IPv4 address (a.b.c.d)",
                "x.toml:9: pool \"a\": server \"1.2.3.4:0:1\": port out of range",
                "x.toml:10: pool \"a\": server \"1.2.3.4:x:1\": the port is not a number",
                "x.toml:11: pool \"a\": server \"1.2.3.4\": expected \"address:port:weight [name]\"",
                "x.toml:12: pool \"a\": server \"/tmp/redis.sock:1\": ferrox reaches servers over IPv4 only; unix sockets are not supported",
                "x.toml:13: pool \"a\": server: \"1.2.3.4\": expected \"address:port\"",
                "x.toml:14: pool \"a\": server: addr is missing",
                "x.toml:18: pool \"b\": listen \"/tmp/sock 0666\": ferrox listens on IPv4 only; unix sockets are not supported",
                "x.toml:22: pool \"c\": listen \"localhost:6379\": give an IPv4 address; the dataplane does not resolve names",
            ]
        );
    }

    #[test]
    fn listen_addresses_must_not_overlap() {
        let pool = |name: &str, listen: &str| redis_pool(name, listen, ONE_SERVER);
        let text = [
            pool("a", "0.0.0.0:6379"),
            pool("b", "0.0.0.0:6379"),
            pool("c", "198.18.0.9:6379"),
            pool("d", "198.18.0.9:6380"),
            pool("e", "198.18.0.8:6380"),
            pool("f", "198.18.0.8:6380"),
        ]
        .concat();
        assert_eq!(
            toml_errors(&text),
            [
                "x.toml:6: pool \"b\": listen 0.0.0.0:6379: taken by pool \"a\", which listens on 0.0.0.0:6379 (line 2)",
                "x.toml:10: pool \"c\": listen 198.18.0.9:6379: taken by pool \"a\", which listens on 0.0.0.0:6379 (line 2)",
                "x.toml:22: pool \"f\": listen 198.18.0.8:6380: taken by pool \"e\", which listens on 198.18.0.8:6380 (line 18)",
            ]
        );
    }

    #[test]
    fn server_rules() {
        // From line 5.
        let servers = r#"[
    "198.18.0.1:7001:0",
    "198.18.0.1:7001:1 alpha",
    "198.18.0.2:7001:1 alpha",
    "198.18.0.1:7002:1",
    "198.18.0.1:7002:2",
    "198.18.0.1:7003:1 two words",
    "198.18.0.1:7004:99999999999",
    { addr = "198.18.0.1:7005", weight = 0 },
]"#;
        let text = [
            redis_pool("a", "0.0.0.0:6379", servers),
            redis_pool("b", "0.0.0.0:6380", "[]"),
            // Without the servers key.
            "[pools.c]\nlisten = \"0.0.0.0:6381\"\nprotocol = \"redis\"\n".to_owned(),
        ]
        .concat();
        assert_eq!(
            toml_errors(&text),
            [
                "x.toml:5: pool \"a\": server \"198.18.0.1:7001:0\": weight 0: a server needs a weight of at least 1",
                "x.toml:7: pool \"a\": server name \"alpha\" is also the name of the server on line 6; ketama places servers by name, so names must differ",
                "x.toml:9: pool \"a\": server name \"198.18.0.1:7002\" is also the name of the server on line 8; ketama places servers by name, so names must differ (a server without a name is named \"address:port\", or \"address\" for port 11211)",
                "x.toml:10: pool \"a\": server \"198.18.0.1:7003:1 two words\": server name \"two words\" has spaces; twemproxy reads only the last word",
                "x.toml:11: pool \"a\": server \"198.18.0.1:7004:99999999999\": weight too large",
                "x.toml:12: pool \"a\": server: \"198.18.0.1:7005\": weight 0: a server needs a weight of at least 1",
                "x.toml:17: pool \"b\": no servers",
                "x.toml:18: pool \"c\": no servers",
            ]
        );
    }

    #[test]
    fn pool_rules() {
        assert_eq!(
            toml_errors(
                r#"[pools.a]
listen = "0.0.0.0:11211"
protocol = "memcache"
auth = "pw"
db = 1
hash = "fnv1a64"
distribution = "consistent"
hash_tag = "{"
timeout_ms = 0
server_connections = 0
blocked_commands = ["FLUSH ALL", 3]
servers = ["198.18.0.1:11211:1"]
[pools.b]
servers = ["198.18.0.1:11211:1"]
[pools.c]
listen = "0.0.0.0:1"
protocol = "http"
auth = ""
servers = ["198.18.0.1:11211:1"]
[pools.d]
"#
            ),
            [
                "x.toml:4: pool \"a\": auth: only a redis pool has it, and this pool speaks memcache",
                "x.toml:5: pool \"a\": db: only a redis pool has it, and this pool speaks memcache",
                "x.toml:6: pool \"a\": hash \"fnv1a64\": unknown hash (did you mean \"fnv1a_64\"?); expected one of one_at_a_time, md5, crc16, crc32, crc32a, fnv1_64, fnv1a_64, fnv1_32, fnv1a_32, hsieh, murmur, jenkins",
                "x.toml:7: pool \"a\": distribution \"consistent\": unknown distribution; expected one of ketama, modula, random, jump, redis_cluster",
                "x.toml:8: pool \"a\": hash_tag \"{\": a hash tag is exactly two characters, like \"{}\"",
                "x.toml:9: pool \"a\": timeout_ms: 0 is no timeout; leave timeout_ms out to wait forever",
                "x.toml:10: pool \"a\": server_connections: cannot be 0",
                "x.toml:11: pool \"a\": blocked_commands: \"FLUSH ALL\": a command name is one word of printable ASCII",
                "x.toml:11: pool \"a\": blocked_commands: expected a command name, found an integer",
                "x.toml:13: pool \"b\": protocol is missing: say \"redis\" or \"memcache\"",
                "x.toml:13: pool \"b\": listen is missing",
                "x.toml:17: pool \"c\": protocol \"http\": expected \"redis\" or \"memcache\"",
                "x.toml:18: pool \"c\": auth: the password is empty",
                "x.toml:20: pool \"d\": protocol is missing: say \"redis\" or \"memcache\"",
                "x.toml:20: pool \"d\": listen is missing",
                "x.toml:20: pool \"d\": no servers",
            ]
        );
    }

    #[test]
    fn validation_rules_are_read_and_checked() {
        let config = toml_ok(&format!(
            r#"{POOL}[pools.a.validate]
key_patterns = ["app:*", "report:*"]
max_key_bytes = 200
max_value_bytes = "64 KiB"
max_keys = 100
require_ttl = true
max_ttl_s = 86400
"#
        ));
        let v = &config.pools[0].validate;
        assert_eq!(v.key_patterns, ["app:*", "report:*"]);
        assert_eq!(
            (v.max_key_bytes, v.max_value_bytes, v.max_keys, v.max_ttl_s),
            (Some(200), Some(65536), Some(100), Some(86400))
        );
        assert!(v.require_ttl);
        assert_eq!(
            toml_errors(&format!(
                "{POOL}[pools.a.validate]\nkey_patterns = \"app:*\"\nmax_keys = 0\nrequire_tll = true\n"
            )),
            [
                "x.toml:6: pool \"a\": validate: key_patterns: expected a list of key patterns, found a string",
                "x.toml:7: pool \"a\": validate: max_keys: must be at least 1",
                "x.toml:8: pool \"a\": validate: require_tll: unknown key (did you mean \"require_ttl\"?); validate has key_patterns, max_key_bytes, max_value_bytes, max_keys, require_ttl, max_ttl_s",
            ]
        );
    }

    #[test]
    fn compression_and_hot_key_cache_tables() {
        let config = toml_ok(&format!(
            "{POOL}[pools.a.compression]\n[pools.a.hot_key_cache]\n"
        ));
        assert_eq!(config.pools[0].compression, Some(Compression::default()));
        assert_eq!(config.pools[0].hot_key_cache, Some(HotKeyCache::default()));
        assert_eq!(
            toml_errors(&format!(
                "{POOL}[pools.a.compression]\nalgorithm = \"lz5\"\nlevel = 99\nflag_bit = 32\nmin_sise = 1\n\
                 [pools.a.hot_key_cache]\nmin_rate = 0\nmemory = \"lots\"\n"
            )),
            [
                "x.toml:6: pool \"a\": compression: algorithm \"lz5\": expected one of lz4, zstd (did you mean \"lz4\"?)",
                "x.toml:7: pool \"a\": compression: level: 99 is not a level: zstd's run from -7 to 22",
                "x.toml:8: pool \"a\": compression: flag_bit: 32 is not a bit of memcached's 32-bit flags (0-31)",
                "x.toml:9: pool \"a\": compression: min_sise: unknown key (did you mean \"min_size\"?); compression has algorithm, min_size, level, keys, flag_bit",
                "x.toml:11: pool \"a\": hot_key_cache: min_rate: must be at least 1",
                "x.toml:12: pool \"a\": hot_key_cache: memory \"lots\": expected a number of bytes, or a size like \"64 KiB\", \"512 MiB\" or \"1 GiB\"",
            ]
        );
        assert_eq!(
            toml_errors(
                "[pools.c]\nlisten = \"0.0.0.0:7000\"\nprotocol = \"redis\"\ndistribution = \"redis_cluster\"\n\
                 servers = [\"198.18.0.1:7001:1\"]\n[pools.c.hot_key_cache]\n"
            ),
            ["x.toml:6: pool \"c\": hot_key_cache: not supported on a redis_cluster pool (its slots move between servers the cache could not follow)"]
        );
    }

    #[test]
    fn replicas_and_read_policies_are_read_and_checked() {
        let config = toml_ok(&redis_pool(
            "a",
            "0.0.0.0:6379",
            r#"[{ addr = "198.18.0.1:7001", name = "a", replicas = ["198.18.0.1:7101", "198.18.0.1:7102"] }]
read_policy = "replica""#,
        ));
        let pool = &config.pools[0];
        assert_eq!(pool.read_policy, ReadPolicy::Replica);
        assert_eq!(
            pool.servers[0].replicas,
            [addr("198.18.0.1:7101"), addr("198.18.0.1:7102")]
        );
        assert_eq!(
            toml_errors(&format!(
                "{}read_policy = \"replicas\"\n",
                redis_pool(
                    "a",
                    "0.0.0.0:6379",
                    r#"[{ addr = "198.18.0.1:7001", name = "a", replicas = ["198.18.0.1:7001"] }]"#
                )
            )),
            [
                "x.toml:4: pool \"a\": server \"a\": replica 198.18.0.1:7001: already a server or replica of this pool",
                "x.toml:5: pool \"a\": read_policy \"replicas\": expected one of primary, prefer_replica, replica, any (did you mean \"replica\"?)",
            ]
        );
        assert_eq!(
            toml_errors(&format!(
                "{}read_policy = \"replica\"\n",
                redis_pool("a", "0.0.0.0:6379", ONE_SERVER)
            )),
            ["x.toml:5: pool \"a\": read_policy \"replica\": server \"198.18.0.1:7001\" has no replicas, so every read of its keys would fail"]
        );
        let memcache = "[pools.m]\nlisten = \"0.0.0.0:11211\"\nprotocol = \"memcache\"\n\
             servers = [{ addr = \"198.18.0.1:11211\", replicas = [\"198.18.0.1:11212\"] }]\n\
             read_policy = \"any\"\n";
        assert_eq!(
            toml_errors(memcache),
            [
                "x.toml:4: pool \"m\": server \"198.18.0.1\": replicas: a memcache pool has no replicas",
                "x.toml:5: pool \"m\": read_policy: a memcache pool has no replicas",
            ]
        );
    }

    #[test]
    fn sentinel_named_shards_are_read_and_checked() {
        let config = toml_ok(&format!(
            "{}sentinels = [\"198.18.0.1:26379\", \"198.18.0.1:26380\"]\nread_policy = \"prefer_replica\"\n",
            redis_pool(
                "a",
                "0.0.0.0:6379",
                r#"[{ master = "shard-a", name = "a" }, { master = "shard-b" }]"#
            )
        ));
        let pool = &config.pools[0];
        assert_eq!(pool.sentinels.len(), 2);
        assert_eq!(pool.servers[0].master.as_deref(), Some("shard-a"));
        assert_eq!(pool.servers[0].name, "a");
        assert_eq!(pool.servers[1].name, "shard-b", "named by its master");
        let emitted = crate::emit_toml(&config);
        assert_eq!(toml_ok(&emitted), config, "{emitted}");
        assert_eq!(
            toml_errors(&redis_pool(
                "a",
                "0.0.0.0:6379",
                r#"[{ master = "shard-a", addr = "198.18.0.1:7001" }, { master = "shard-b" }]"#
            )),
            [
                "x.toml:4: pool \"a\": server: master \"shard-a\": a shard named by its Sentinel master has no addr (Sentinel tells it)",
                "x.toml:4: pool \"a\": server \"shard-b\": master \"shard-b\": the pool names no sentinels to ask for it",
            ]
        );
        assert_eq!(
            toml_errors(&format!(
                "{}sentinels = [\"198.18.0.1:26379\"]\n",
                redis_pool("a", "0.0.0.0:6379", ONE_SERVER)
            )),
            ["x.toml:4: pool \"a\": server \"198.18.0.1:7001\": a pool with sentinels names each shard by its master ({ master = \"...\", name = \"...\" }), not by address"]
        );
    }

    #[test]
    fn server_logins_are_read_and_checked() {
        let config = toml_ok(&format!(
            "{}auth = \"clients\"\nserver_auth = \"backend\"\nserver_user = \"app\"\n",
            redis_pool("a", "0.0.0.0:6379", ONE_SERVER)
        ));
        let pool = &config.pools[0];
        assert_eq!(pool.auth.as_deref(), Some("clients"));
        assert_eq!(pool.server_auth.as_deref(), Some("backend"));
        assert_eq!(pool.server_user.as_deref(), Some("app"));
        let emitted = crate::emit_toml(&config);
        assert_eq!(toml_ok(&emitted), config, "{emitted}");
        assert_eq!(
            toml_errors(&format!(
                "{}server_user = \"app\"\nserver_auth = \"\"\n",
                redis_pool("a", "0.0.0.0:6379", ONE_SERVER)
            )),
            [
                "x.toml:5: pool \"a\": server_user: without server_auth (its password) there is nothing to log in with",
                "x.toml:6: pool \"a\": server_auth: the password is empty",
            ]
        );
        assert_eq!(
            toml_errors(
                "[pools.m]\nlisten = \"0.0.0.0:11211\"\nprotocol = \"memcache\"\n\
                 servers = [\"198.18.0.1:11211:1\"]\nserver_auth = \"x\"\n"
            ),
            ["x.toml:5: pool \"m\": server_auth: only a redis pool has it, and this pool speaks memcache"]
        );
    }

    #[test]
    fn sentinel_logins_are_read_and_checked() {
        let shards = r#"[{ master = "shard-a" }]"#;
        let config = toml_ok(&format!(
            "{}sentinels = [\"198.18.0.1:26379\"]\nsentinel_auth = \"s3cret\"\nsentinel_user = \"watcher\"\n",
            redis_pool("a", "0.0.0.0:6379", shards)
        ));
        let pool = &config.pools[0];
        assert_eq!(pool.sentinel_auth.as_deref(), Some("s3cret"));
        assert_eq!(pool.sentinel_user.as_deref(), Some("watcher"));
        let emitted = crate::emit_toml(&config);
        assert_eq!(toml_ok(&emitted), config, "{emitted}");
        // A password alone logs in as Sentinel's default user.
        let config = toml_ok(&format!(
            "{}sentinels = [\"198.18.0.1:26379\"]\nsentinel_auth = \"s3cret\"\n",
            redis_pool("a", "0.0.0.0:6379", shards)
        ));
        assert_eq!(config.pools[0].sentinel_user, None);
        assert_eq!(
            toml_errors(&format!(
                "{}sentinel_auth = \"s3cret\"\nsentinel_user = \"watcher\"\n",
                redis_pool("a", "0.0.0.0:6379", ONE_SERVER)
            )),
            [
                "x.toml:5: pool \"a\": sentinel_auth: the pool names no sentinels",
                "x.toml:6: pool \"a\": sentinel_user: the pool names no sentinels",
            ]
        );
        assert_eq!(
            toml_errors(&format!(
                "{}sentinels = [\"198.18.0.1:26379\"]\nsentinel_user = \"watcher\"\nsentinel_auth = \"\"\n",
                redis_pool("a", "0.0.0.0:6379", shards)
            )),
            [
                "x.toml:6: pool \"a\": sentinel_user: without sentinel_auth (its password) there is nothing to log in with",
                "x.toml:7: pool \"a\": sentinel_auth: the password is empty",
            ]
        );
    }

    #[test]
    fn rate_limits_are_read_and_checked() {
        let config = toml_ok(&format!(
            r#"{POOL}
[[pools.a.rate_limits]]
by = "client"
requests = 1000
per_ms = 1000

[[pools.a.rate_limits]]
by = "key"
commands = ["set", "GET"]
bytes = "10 MiB"
per_ms = 60000
"#
        ));
        let limits = &config.pools[0].rate_limits;
        assert_eq!(limits.len(), 2);
        assert_eq!(limits[0].describe(), "by client: 1000 requests per 1000 ms");
        assert_eq!(limits[1].commands, ["SET", "GET"]);
        assert_eq!(
            limits[1].describe(),
            "by key SET GET: 10485760 bytes per 60000 ms"
        );
        assert_eq!(
            toml_errors(&format!(
                r#"{POOL}
[[pools.a.rate_limits]]
by = "ip"
per_ms = 0

[[pools.a.rate_limits]]
by = "pool"
per_ms = 10
"#
            )),
            [
                "x.toml:6: pool \"a\": rate_limits: give requests, bytes, or both",
                "x.toml:7: pool \"a\": rate_limits: by \"ip\": expected client, user, key, command or pool",
                "x.toml:8: pool \"a\": rate_limits: per_ms: must be at least 1",
                "x.toml:10: pool \"a\": rate_limits: give requests, bytes, or both",
            ]
        );
    }

    #[test]
    fn overload_watermarks_are_read_and_checked() {
        let config = toml_ok(&format!(
            "[overload]\nmax_in_flight = 100000\nmax_client_buffer_memory = \"256 MiB\"\n\
             max_backend_queue = 10000\nmax_connections = 50000\n{POOL}"
        ));
        let o = &config.overload;
        assert_eq!(
            (
                o.max_in_flight,
                o.max_client_buffer_memory,
                o.max_backend_queue,
                o.max_connections
            ),
            (Some(100_000), Some(256 << 20), Some(10_000), Some(50_000))
        );
        assert_eq!(
            toml_errors(&format!("[overload]\nmax_in_flight = 0\nmax_conns = 5\n{POOL}")),
            [
                "x.toml:2: overload: max_in_flight: must be at least 1",
                "x.toml:3: overload: unknown key \"max_conns\"; [overload] has max_in_flight, max_client_buffer_memory, max_backend_queue, max_connections",
            ]
        );
    }

    #[test]
    fn users_are_read_and_checked() {
        let config = toml_ok(&format!(
            r#"{POOL}
[[users]]
name = "reporting"
password = "s3cret"
pools = ["a"]
acl = "+@read ~report:*"

[[users]]
name = "app"
passwords = ["old", "new"]
acl = "allcommands allkeys -@dangerous -flushdb"
"#
        ));
        assert_eq!(config.users.len(), 2);
        assert_eq!(config.users[0].passwords, ["s3cret"]);
        assert_eq!(config.users[0].pools, ["a"]);
        assert_eq!(config.users[1].passwords, ["old", "new"]);
        assert!(config.users[1].pools.is_empty());
        assert_eq!(
            toml_errors(&format!(
                r#"{POOL}
[[users]]
name = "default"
password = "x"

[[users]]
name = "app"
pools = ["nope"]
acl = "+@reads ~ on %R~x +get|key"
colour = "blue"

[[users]]
name = "app"
password = ""
acl = "+@read"

[[users]]
password = "x"
"#
            )),
            [
                "x.toml:6: user \"default\": that is each pool's own user, whose password is the pool's auth",
                "x.toml:10: user \"app\": needs a password (password = \"...\", or passwords = [...]), none empty",
                "x.toml:10: user \"app\": pools: no pool \"nope\"",
                "x.toml:13: user \"app\": acl: \"+@reads\": unknown category (did you mean \"read\"?); expected one of all, keyspace, read, write, set, sortedset, list, hash, string, bitmap, hyperloglog, geo, stream, pubsub, admin, fast, slow, blocking, dangerous, connection, transaction, scripting",
                "x.toml:14: user \"app\": colour: unknown key; a user has name, password, passwords, pools, acl",
                "x.toml:16: user \"app\": also defined on line 10",
                "x.toml:16: user \"app\": needs a password (password = \"...\", or passwords = [...]), none empty",
                "x.toml:21: user: name is missing",
            ]
        );
    }

    #[test]
    fn redis_cluster_rules() {
        assert_eq!(
            toml_errors(
                r#"[pools.a]
listen = "0.0.0.0:11211"
protocol = "memcache"
distribution = "redis_cluster"
servers = ["198.18.0.1:7000:1"]
[pools.b]
listen = "0.0.0.0:6379"
protocol = "redis"
distribution = "redis_cluster"
db = 2
auto_eject_hosts = true
servers = ["198.18.0.1:7000:1"]
"#
            ),
            [
                "x.toml:4: pool \"a\": distribution redis_cluster: only a redis pool can front a Redis Cluster",
                "x.toml:10: pool \"b\": db: a Redis Cluster has database 0 only",
                "x.toml:11: pool \"b\": auto_eject_hosts: a redis_cluster pool follows the cluster's own failover (its slot map), so it ejects nothing",
            ]
        );
    }

    #[test]
    fn bad_limits() {
        assert_eq!(
            toml_errors(&format!(
                "{POOL}[limits]\nmax_array = 0\nmax_depth = 65\nmax_inline = \"64 kb\"\nmax_bulk = \"1 KiB\"\n\
                 max_pipeline = -4\nmax_value = true\n"
            )),
            [
                "x.toml:6: limits: max_array: must be at least 1",
                "x.toml:7: limits: max_depth 65: at most 64, the deepest reply nesting the parser tracks",
                "x.toml:8: limits: max_inline \"64 kb\": expected a number of bytes, or a size like \"64 KiB\", \"512 MiB\" or \"1 GiB\"",
                "x.toml:9: limits: max_key (65536) is more than max_bulk (1024); a key is one bulk string",
                "x.toml:10: limits: max_pipeline -4: cannot be negative",
                "x.toml:11: limits: max_value: expected an integer, found a boolean",
            ]
        );
        assert_eq!(
            toml_errors(&format!("limits = 3\n{POOL}")),
            ["x.toml:1: limits: expected a table ([limits]), found an integer"]
        );
    }

    #[test]
    fn no_pools() {
        assert_eq!(
            toml_errors(""),
            ["x.toml:1: no pools: the file defines nothing to proxy; add a [pools.NAME] table"]
        );
        assert_eq!(
            toml_errors("# nothing\n[pools]\n"),
            ["x.toml:2: pools: no pools: add a [pools.NAME] table per pool"]
        );
        assert_eq!(
            toml_errors("pools = 3\n"),
            ["x.toml:1: pools: expected a table of named pools ([pools.NAME]), found an integer"]
        );
        assert_eq!(
            toml_errors("[[pools]]\nlisten = \"0.0.0.0:1\"\n"),
            ["x.toml:1: pools: expected a table of named pools ([pools.NAME]), found a list"]
        );
        assert_eq!(
            toml_errors("[pools]\na = 3\n"),
            ["x.toml:2: pool \"a\": expected a table ([pools.a]), found an integer"]
        );
    }
}

mod nutcracker_format {
    use super::*;

    #[test]
    fn every_key() {
        let config = yml_ok(
            "cache:
  listen: 198.18.0.10:6380
  hash: murmur
  hash_tag: \"{}\"
  distribution: modula
  timeout: 400
  backlog: 1024
  client_connections: 10000
  redis: true
  tcpkeepalive: true
  reuseport: true
  redis_auth: s3cret
  redis_db: 3
  preconnect: true
  auto_eject_hosts: true
  server_connections: 2
  server_retry_timeout: 2000
  server_failure_limit: 5
  servers:
   - 198.18.0.1:7001:2 alpha
   - 198.18.0.1:11211:1
",
        );
        assert_eq!(config.limits, Limits::default());
        assert_eq!(
            config.pools,
            // The TOML test's pool, in the format's own spellings; it
            // has no blocked commands nor replicas, and a server without
            // a name is named by its address.
            vec![Pool {
                distribution: Distribution::from_name("modula").unwrap(),
                blocked_commands: vec![],
                read_policy: ReadPolicy::Primary,
                compression: None,
                hot_key_cache: None,
                servers: vec![
                    server("198.18.0.1:7001", 2, "alpha"),
                    server("198.18.0.1:11211", 1, "198.18.0.1"),
                ],
                ..every_key_pool()
            }]
        );
    }

    #[test]
    fn defaults_are_twemproxys() {
        let config = yml_ok(YML_POOL);
        let mut expected = Pool::new("a", addr("0.0.0.0:6379"), Protocol::Memcache);
        expected.servers = vec![server("198.18.0.1:7001", 1, "198.18.0.1:7001")];
        assert_eq!(config.pools, vec![expected]);
        assert_eq!(config.limits, Limits::default());
        // As in twemproxy, a zero timeout waits forever.
        let config = yml_ok(&format!("{YML_POOL}  timeout: 0\n  redis: false\n"));
        assert_eq!(config.pools[0].timeout_ms, None);
        assert_eq!(config.pools[0].protocol, Protocol::Memcache);
    }

    /// twemproxy's own `conf/nutcracker.yml`, as shipped: everything but
    /// the unix socket pool is read.
    #[test]
    fn twemproxys_example() {
        let example = "alpha:
  listen: 127.0.0.1:22121
  hash: fnv1a_64
  distribution: ketama
  auto_eject_hosts: true
  redis: true
  server_retry_timeout: 2000
  server_failure_limit: 1
  servers:
   - 127.0.0.1:6379:1

beta:
  listen: 127.0.0.1:22122
  hash: fnv1a_64
  hash_tag: \"{}\"
  distribution: ketama
  auto_eject_hosts: false
  timeout: 400
  redis: true
  servers:
   - 127.0.0.1:6380:1 server1
   - 127.0.0.1:6381:1 server2
   - 127.0.0.1:6382:1 server3
   - 127.0.0.1:6383:1 server4

gamma:
  listen: 127.0.0.1:22123
  hash: fnv1a_64
  distribution: ketama
  timeout: 400
  backlog: 1024
  preconnect: true
  auto_eject_hosts: true
  server_retry_timeout: 2000
  server_failure_limit: 3
  servers:
   - 127.0.0.1:11212:1
   - 127.0.0.1:11213:1
";
        let omega = "
omega:
  listen: /tmp/gamma
  hash: hsieh
  distribution: ketama
  auto_eject_hosts: false
  servers:
   - 127.0.0.1:11214:100000
   - 127.0.0.1:11215:1
";
        assert_eq!(
            yml_errors(&format!("{example}{omega}")),
            ["x.yml:41: pool \"omega\": listen \"/tmp/gamma\": ferrox listens on IPv4 only; unix sockets are not supported"]
        );
        let config = yml_ok(example);
        let [alpha, beta, gamma] = &config.pools[..] else {
            panic!("{config:#?}")
        };
        assert_eq!(alpha.protocol, Protocol::Redis);
        assert!(alpha.auto_eject_hosts);
        assert_eq!(
            (alpha.server_retry_timeout_ms, alpha.server_failure_limit),
            (2000, 1)
        );
        assert_eq!(
            alpha.servers,
            [server("127.0.0.1:6379", 1, "127.0.0.1:6379")]
        );
        assert_eq!(beta.hash_tag, Some(*b"{}"));
        assert_eq!(beta.timeout_ms, Some(400));
        assert_eq!(beta.servers[3], server("127.0.0.1:6383", 1, "server4"));
        assert_eq!(gamma.protocol, Protocol::Memcache);
        assert_eq!((gamma.backlog, gamma.preconnect), (1024, true));
        assert_eq!(gamma.servers[1].name, "127.0.0.1:11213");
    }

    #[test]
    fn yaml_spellings() {
        let config = yml_ok(
            "\u{feff}# comment\r
\r
'cache' :   # a quoted key\r
    listen: \"0.0.0.0:6379\"   # trailing comment\r
    hash_tag: '{}'\r
    redis: 'true'\r
    redis_auth: \"p\\\"w\\u00e9 #x\"\r
    servers:\r
    - 198.18.0.1:7001:1 alpha # comment\r
    -   '198.18.0.1:7002:1 it''s'\r
\r
    # comment between keys\r
    hash: crc32a\r
",
        );
        let pool = &config.pools[0];
        assert_eq!(pool.name, "cache");
        assert_eq!(pool.listen, addr("0.0.0.0:6379"));
        assert_eq!(pool.hash_tag, Some(*b"{}"));
        assert_eq!(pool.protocol, Protocol::Redis);
        assert_eq!(pool.auth.as_deref(), Some("p\"w\u{e9} #x"));
        assert_eq!(pool.hash.name(), "crc32a");
        assert_eq!(
            pool.servers,
            [
                server("198.18.0.1:7001", 1, "alpha"),
                server("198.18.0.1:7002", 1, "it's"),
            ]
        );
    }

    #[test]
    fn yaml_outside_the_subset() {
        assert_eq!(
            yml_errors(
                "---
a:
  listen: 0.0.0.0:1
\tbacklog: 1
  servers: [198.18.0.1:1:1, 198.18.0.1:2:1]
  hash_tag: {}
  hash: &h fnv1a_64
  distribution: *h
  backlog: !!int 5
  redis_auth: |
  timeout: \"400
  - 198.18.0.1:3:1
b: c
- x
%YAML 1.1
  redis: x: y
    hash: md5
"
            ),
            [
                "x.yml:1: document markers (--- and ...) are not accepted by twemproxy",
                "x.yml:4: a tab in the indentation; YAML indents with spaces only",
                "x.yml:5: flow collections ([...] and {...}) are not accepted by twemproxy; quote a value that starts with [ or {, and put each list item on its own \"- \" line",
                "x.yml:6: flow collections ([...] and {...}) are not accepted by twemproxy; quote a value that starts with [ or {, and put each list item on its own \"- \" line",
                "x.yml:7: anchors (&name) are not accepted by twemproxy",
                "x.yml:8: aliases (*name) are not accepted by twemproxy",
                "x.yml:9: tags (!name) are not accepted by twemproxy",
                "x.yml:10: block scalars (| and >) are not supported; write the value on its line",
                "x.yml:11: the closing quote is missing; a quoted value must end on its line",
                "x.yml:12: a list item must follow a key with nothing after its colon, like servers:",
                "x.yml:13: a pool name stands alone on its line; its settings go on the lines below, indented",
                "x.yml:14: the top level maps pool names to their settings; it is not a list",
                "x.yml:15: directives (%YAML, %TAG) are not accepted by twemproxy",
                "x.yml:16: \": \" inside a value (a nested mapping?); put the value in quotes",
                "x.yml:17: indented under a key that already has its value; a value fits on one line",
            ]
        );
        assert_eq!(
            yml_errors(
                "  listen: 0.0.0.0:1
a:
  listen: 0.0.0.0:1
  listen: 0.0.0.0:2
  servers:
    - 198.18.0.1:1:1
     - 198.18.0.1:2:1
    -
  backlog:
    depth: 1
 hash: md5
  redis:true
a:
"
            ),
            [
                "x.yml:1: an indented line before any pool name",
                "x.yml:4: pool \"a\": listen is set twice (first on line 3); twemproxy refuses duplicates",
                "x.yml:7: list items must line up with the ones above",
                "x.yml:8: an empty list item",
                "x.yml:10: a nested mapping; only lists of \"- \" items go under a key",
                "x.yml:11: the indentation does not match the keys above",
                "x.yml:12: expected \"key: value\" (a space must follow the colon)",
                "x.yml:13: pool \"a\" is defined twice (first on line 2)",
            ]
        );
    }

    #[test]
    fn every_option_is_checked() {
        assert_eq!(
            yml_errors(&format!(
                "{YML_POOL}  lisen: 0.0.0.0:1
  redis: yes
  timeout: -1
  backlog: 1k
  client_connections: 99999999999
  server_connections: 0
  server_retry_timeout: 2s
  server_failure_limit: two
  redis_db: x
  preconnect: True
  auto_eject_hosts: 1
  tcpkeepalive: on
  reuseport: no
  hash: fnv
  distribution: ring
  hash_tag: ab c
  stats_port: 22222
  hash_tag:
  lists:
    - 1
"
            )),
            [
                "x.yml:5: pool \"a\": lisen: unknown key (did you mean \"listen\"?)",
                "x.yml:6: pool \"a\": redis \"yes\": expected true or false",
                "x.yml:7: pool \"a\": timeout \"-1\": not a number (digits only)",
                "x.yml:8: pool \"a\": backlog \"1k\": not a number (digits only)",
                "x.yml:9: pool \"a\": client_connections \"99999999999\": too large",
                "x.yml:10: pool \"a\": server_connections \"0\": cannot be 0",
                "x.yml:11: pool \"a\": server_retry_timeout \"2s\": not a number (digits only)",
                "x.yml:12: pool \"a\": server_failure_limit \"two\": not a number (digits only)",
                "x.yml:13: pool \"a\": redis_db \"x\": not a number (digits only)",
                "x.yml:14: pool \"a\": preconnect \"True\": expected true or false",
                "x.yml:15: pool \"a\": auto_eject_hosts \"1\": expected true or false",
                "x.yml:16: pool \"a\": tcpkeepalive \"on\": expected true or false",
                "x.yml:17: pool \"a\": reuseport \"no\": expected true or false",
                "x.yml:18: pool \"a\": hash \"fnv\": unknown hash; expected one of one_at_a_time, md5, crc16, crc32, crc32a, fnv1_64, fnv1a_64, fnv1_32, fnv1a_32, hsieh, murmur, jenkins",
                "x.yml:19: pool \"a\": distribution \"ring\": unknown distribution; expected one of ketama, modula, random, jump, redis_cluster",
                "x.yml:20: pool \"a\": hash_tag \"ab c\": a hash tag is exactly two characters, like \"{}\"",
                "x.yml:21: pool \"a\": stats_port: not a pool key: the stats server is set on nutcracker's command line (-s, -a, -i)",
                "x.yml:22: pool \"a\": hash_tag is set twice (first on line 20); twemproxy refuses duplicates",
                "x.yml:23: pool \"a\": lists: unknown key (did you mean \"listen\"?)",
            ]
        );
    }

    #[test]
    fn every_option_is_checked_after_the_syntax() {
        assert_eq!(
            yml_errors(
                "b:
  listen: /var/run/b.sock 0666
  redis: true
  redis_db:
  servers: 198.18.0.1:1:1
c:
  listen: cache.local:1
  backlog:
    - 1
  servers:
    - 198.18.0.1:6379
    - 198.18.0.1:6379:1 two words
    - cache.local:6379:1
    - /tmp/redis.sock:1 sock
    - 198.18.0.1:99999:1
    - 198.18.0.1:1:0
    - 198.18.0.1:1:1
    - 198.18.0.2:1:1 198.18.0.1:1
d:
  redis: false
  redis_auth: pw
  listen: 0.0.0.0:6379
  servers:
    - 198.18.0.1:1:1
e:
  listen: 0.0.0.0:6379
  servers:
"
            ),
            [
                "x.yml:2: pool \"b\": listen \"/var/run/b.sock 0666\": ferrox listens on IPv4 only; unix sockets are not supported",
                "x.yml:4: pool \"b\": redis_db: has no value",
                "x.yml:5: pool \"b\": servers: a list: put each server on its own \"- address:port:weight\" line",
                "x.yml:7: pool \"c\": listen \"cache.local:1\": give an IPv4 address; the dataplane does not resolve names",
                "x.yml:8: pool \"c\": backlog: takes one value, not a list",
                "x.yml:11: pool \"c\": server \"198.18.0.1:6379\": expected \"address:port:weight [name]\"",
                "x.yml:12: pool \"c\": server \"198.18.0.1:6379:1 two words\": server name \"two words\" has spaces; twemproxy reads only the last word",
                "x.yml:13: pool \"c\": server \"cache.local:6379:1\": give an IPv4 address; the dataplane does not resolve names",
                "x.yml:14: pool \"c\": server \"/tmp/redis.sock:1 sock\": ferrox reaches servers over IPv4 only; unix sockets are not supported",
                "x.yml:15: pool \"c\": server \"198.18.0.1:99999:1\": port out of range",
                "x.yml:16: pool \"c\": server \"198.18.0.1:1:0\": weight 0: a server needs a weight of at least 1",
                "x.yml:18: pool \"c\": server name \"198.18.0.1:1\" is also the name of the server on line 17; ketama places servers by name, so names must differ (a server without a name is named \"address:port\", or \"address\" for port 11211)",
                "x.yml:21: pool \"d\": redis_auth: only a redis pool has it, and this pool speaks memcache",
                "x.yml:26: pool \"e\": listen 0.0.0.0:6379: taken by pool \"d\", which listens on 0.0.0.0:6379 (line 22)",
                "x.yml:27: pool \"e\": no servers",
            ]
        );
    }

    #[test]
    fn no_pools() {
        for text in ["", "# only a comment\n", "\n\n"] {
            assert_eq!(
                yml_errors(text),
                ["x.yml:1: no pools: the file defines nothing to proxy"]
            );
        }
    }
}

mod both {
    use super::*;

    #[test]
    fn equivalent_files_give_equal_configs() {
        let yml = yml_ok(
            "web:
  listen: 198.18.0.10:22121
  redis: true
  hash: crc32a
  distribution: random
  hash_tag: \"::\"
  timeout: 250
  backlog: 128
  client_connections: 500
  preconnect: true
  tcpkeepalive: true
  redis_auth: hunter2
  redis_db: 7
  server_connections: 4
  auto_eject_hosts: true
  server_retry_timeout: 1000
  server_failure_limit: 9
  servers:
    - 198.18.0.1:6379:10 one
    - 198.18.0.2:6379:20
    - 198.18.0.3:11211:1

memo:
  listen: 198.18.0.10:22122
  servers:
    - 198.18.0.4:11211:1
",
        );
        let toml = toml_ok(
            r#"
[pools.web]
listen = "198.18.0.10:22121"
protocol = "redis"
hash = "crc32a"
distribution = "random"
hash_tag = "::"
timeout_ms = 250
backlog = 128
client_connections = 500
preconnect = true
tcp_keepalive = true
auth = "hunter2"
db = 7
server_connections = 4
auto_eject_hosts = true
server_retry_timeout_ms = 1000
server_failure_limit = 9
servers = [
    "198.18.0.1:6379:10 one",
    { addr = "198.18.0.2:6379", weight = 20 },
    "198.18.0.3:11211",
]

[pools.memo]
listen = "198.18.0.10:22122"
protocol = "memcache"
servers = ["198.18.0.4:11211:1"]
"#,
        );
        assert_eq!(yml, toml);
    }

    #[test]
    fn example_files_parse_and_agree() {
        let toml = parse(FERROX_TOML, "configs/ferrox.toml").unwrap_or_else(|e| panic!("{e}"));
        let mut yml =
            parse(NUTCRACKER_YML, "configs/nutcracker.yml").unwrap_or_else(|e| panic!("{e}"));
        // The YAML has no blocked commands and no [overload]; everything
        // else is the same.
        assert_eq!(
            toml.pools[0].blocked_commands,
            ["FLUSHALL", "FLUSHDB", "KEYS", "CONFIG"]
        );
        yml.pools[0]
            .blocked_commands
            .clone_from(&toml.pools[0].blocked_commands);
        assert_eq!(toml.overload.max_in_flight, Some(100_000));
        yml.overload.clone_from(&toml.overload);
        assert_eq!(toml, yml);
    }

    /// The example file with the commented-out block that starts at
    /// `# {header}` uncommented (its `key = value` lines, up to the next
    /// blank line).
    fn uncommented(header: &str) -> String {
        let (head, rest) = FERROX_TOML
            .split_once(&format!("# {header}"))
            .unwrap_or_else(|| panic!("no example {header}"));
        let (block, tail) = rest.split_once("\n\n").unwrap_or((rest, ""));
        let keys: Vec<&str> = block
            .lines()
            .filter_map(|l| {
                l.strip_prefix("# ").filter(|l| {
                    l.split_once(" = ").is_some_and(|(key, _)| {
                        key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    })
                })
            })
            .collect();
        format!("{head}{header}\n{}\n\n{tail}", keys.join("\n"))
    }

    #[test]
    fn the_example_user_parses_once_uncommented() {
        let text = uncommented("[[users]]");
        let config = parse(&text, "configs/ferrox.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.users.len(), 1);
        assert_eq!(config.users[0].acl, "+@read +@connection ~report:*");
    }

    #[test]
    fn the_example_validation_parses_once_uncommented() {
        let text = uncommented("[pools.cache.validate]");
        let config = parse(&text, "configs/ferrox.toml").unwrap_or_else(|e| panic!("{e}"));
        let v = &config.pools[0].validate;
        assert_eq!(v.key_patterns, ["app:*", "report:*"]);
        assert!(v.require_ttl);
        assert_eq!(v.max_ttl_s, Some(86400));
    }

    #[test]
    fn the_example_rate_limit_parses_once_uncommented() {
        let text = uncommented("[[pools.cache.rate_limits]]");
        let config = parse(&text, "configs/ferrox.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.pools[0].rate_limits[0].describe(),
            "by client SET GET: 1000 requests and 10485760 bytes per 1000 ms"
        );
    }

    #[test]
    fn the_example_compression_and_hot_key_cache_parse_once_uncommented() {
        let text = uncommented("[pools.cache.compression]");
        let config = parse(&text, "configs/ferrox.toml").unwrap_or_else(|e| panic!("{e}"));
        let compression = config.pools[0].compression.as_ref().unwrap();
        assert_eq!(compression.keys, ["doc:*"]);
        assert_eq!(compression.flag_bit, 29);
        let text = uncommented("[pools.cache.hot_key_cache]");
        let config = parse(&text, "configs/ferrox.toml").unwrap_or_else(|e| panic!("{e}"));
        let cache = config.pools[0].hot_key_cache.as_ref().unwrap();
        assert_eq!((cache.min_rate, cache.memory), (1000, 64 << 20));
        assert_eq!(cache.max_staleness_ms, Some(1000));
    }

    #[test]
    fn the_example_replicated_pool_parses_once_uncommented() {
        let text = uncommented("[pools.replicated]");
        let config = parse(&text, "configs/ferrox.toml").unwrap_or_else(|e| panic!("{e}"));
        let pool = config
            .pools
            .iter()
            .find(|p| p.name == "replicated")
            .unwrap();
        assert_eq!(pool.read_policy, crate::ReadPolicy::PreferReplica);
        assert_eq!(pool.servers[0].replicas.len(), 2);
        assert_eq!(pool.all_servers().count(), 5);
    }

    #[test]
    fn the_example_sentinel_pool_parses_once_uncommented() {
        let text = uncommented("[pools.failover]");
        let config = parse(&text, "configs/ferrox.toml").unwrap_or_else(|e| panic!("{e}"));
        let pool = config.pools.iter().find(|p| p.name == "failover").unwrap();
        assert_eq!(pool.sentinels.len(), 3);
        assert_eq!(pool.servers[1].master.as_deref(), Some("shard-b"));
    }

    #[test]
    fn every_file_in_configs_loads() {
        let configs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut loaded = 0;
        for entry in std::fs::read_dir(&configs).unwrap() {
            let path = entry.unwrap().path();
            let extension = path.extension().and_then(|e| e.to_str());
            if matches!(extension, Some("toml" | "yml" | "yaml")) {
                load(&path).unwrap_or_else(|e| panic!("{e}"));
                loaded += 1;
            }
        }
        assert!(loaded >= 2);
    }

    #[test]
    fn parse_chooses_by_extension() {
        assert!(parse(YML_POOL, "a.yml").is_ok());
        assert!(parse(YML_POOL, "dir.d/a.YAML").is_ok());
        assert!(parse(POOL, "a.toml").is_ok());
        assert!(parse(POOL, "no-extension").is_ok());
        assert!(parse(POOL, "a.yml").is_err());
    }

    #[test]
    fn load_reads_files_and_reports_io_errors() {
        let configs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        assert_eq!(
            load(&configs.join("ferrox.toml")),
            parse(FERROX_TOML, "ferrox.toml")
        );
        let missing = configs.join("missing.toml");
        let error = load(&missing).unwrap_err();
        assert_eq!(error.errors.len(), 1);
        assert_eq!(error.errors[0].line, 0);
        assert_eq!(error.errors[0].file, missing.display().to_string());
        let shown = error.to_string();
        assert!(
            shown.starts_with(&format!("{}: cannot read: ", missing.display())),
            "{shown}"
        );
    }

    #[test]
    fn all_errors_are_collected_and_shown_one_per_line() {
        let text = format!("{POOL}hash = \"x\"\n[pools.b]\nlisten = \"0.0.0.0:6379\"\nprotocol = \"memcache\"\nservers = [\"1.2.3.4:1:0\"]\n[limits]\nmax_depth = 0\n");
        let error = parse_toml(&text, "configs/x.toml").unwrap_err();
        assert_eq!(
            error.to_string(),
            "configs/x.toml:5: pool \"a\": hash \"x\": unknown hash; expected one of one_at_a_time, md5, crc16, crc32, crc32a, fnv1_64, fnv1a_64, fnv1_32, fnv1a_32, hsieh, murmur, jenkins\n\
             configs/x.toml:7: pool \"b\": listen 0.0.0.0:6379: taken by pool \"a\", which listens on 0.0.0.0:6379 (line 2)\n\
             configs/x.toml:9: pool \"b\": server \"1.2.3.4:1:0\": weight 0: a server needs a weight of at least 1\n\
             configs/x.toml:11: limits: max_depth: must be at least 1"
        );
    }

    #[test]
    fn serializes_for_display() {
        let config = toml_ok(FERROX_TOML);
        let shown = ::toml::to_string(&config).unwrap();
        assert!(shown.contains("listen = \"0.0.0.0:6379\""), "{shown}");
        assert!(shown.contains("protocol = \"redis\""), "{shown}");
        assert!(shown.contains("hash_tag = \"{}\""), "{shown}");
        assert!(shown.contains("addr = \"198.18.0.1:7001\""), "{shown}");
    }

    /// The names accepted here are exactly those the router knows.
    #[test]
    fn names_match_the_router() {
        use ferrox_route::{Distribution, HashFn};
        let hashes: Vec<_> = HashFn::ALL.iter().map(|h| h.name()).collect();
        assert_eq!(hashes, HASHES);
        let distributions: Vec<_> = Distribution::ALL.iter().map(|d| d.name()).collect();
        assert_eq!(distributions, DISTRIBUTIONS);
    }

    #[test]
    fn limits_give_the_resp_limits() {
        let limits = Limits {
            max_depth: 5,
            ..Limits::default()
        };
        assert_eq!(
            limits.resp(),
            ferrox_proto::resp::Limits {
                max_depth: 5,
                ..ferrox_proto::resp::Limits::default()
            }
        );
    }
}

/// Every diagnostic points at a line of the text.
fn lines_are_in_range(text: &str, result: Result<Config, ConfigError>) {
    let lines = text.split('\n').count();
    if let Err(e) = result {
        assert!(!e.errors.is_empty());
        for d in &e.errors {
            assert!(d.line >= 1 && d.line <= lines, "{d} (of {lines} lines)");
        }
    }
}

/// The example files with one line replaced, removed or repeated.
fn mutated(text: &'static str) -> impl Strategy<Value = String> {
    let count = text.lines().count();
    (0..count, 0..3u8, "[ -~\t]{0,40}").prop_map(move |(at, how, new)| {
        let mut lines: Vec<&str> = text.lines().collect();
        match how {
            0 => lines[at] = &new,
            1 => {
                lines.remove(at);
            }
            _ => lines.insert(at, lines[at]),
        }
        lines.join("\n")
    })
}

proptest! {
    #[test]
    fn any_text_gives_a_config_or_located_errors(text in "\\PC{0,200}") {
        lines_are_in_range(&text, parse_toml(&text, "x.toml"));
        lines_are_in_range(&text, parse_nutcracker(&text, "x.yml"));
    }

    #[test]
    fn mutated_examples_give_a_config_or_located_errors(
        toml in mutated(FERROX_TOML),
        yml in mutated(NUTCRACKER_YML),
    ) {
        lines_are_in_range(&toml, parse_toml(&toml, "x.toml"));
        lines_are_in_range(&yml, parse_nutcracker(&yml, "x.yml"));
    }
}
