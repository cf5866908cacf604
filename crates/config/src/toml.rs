//! ferrox's own format, TOML: `[limits]` and one `[pools.NAME]` table per
//! pool (see `configs/ferrox.toml`).
//!
//! The document is read into a tree of [`Node`]s that keeps the line of
//! every key and list element, and the tree is then checked key by key.
//! Serde structs with `deny_unknown_fields` would stop at the first wrong
//! type or unknown key; this way a file with several mistakes shows all of
//! them at once. Only a TOML syntax error stops the reading.

use std::fmt;
use std::net::SocketAddrV4;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::check::{self, Draft, Report};
use super::model::{
    Compression, CompressionAlgorithm, Config, HotKeyCache, Limits, Overload, Protocol, RateBy,
    RateLimit, ReadPolicy, User, Validate, MAX_DEPTH, ZSTD_LEVELS,
};
use super::ConfigError;

const POOL_KEYS: &[&str] = &[
    "listen",
    "protocol",
    "hash",
    "distribution",
    "hash_tag",
    "timeout_ms",
    "backlog",
    "client_connections",
    "preconnect",
    "tcp_keepalive",
    "auth",
    "server_auth",
    "server_user",
    "db",
    "server_connections",
    "auto_eject_hosts",
    "server_retry_timeout_ms",
    "server_failure_limit",
    "blocked_commands",
    "servers",
    "validate",
    "rate_limits",
    "read_policy",
    "sentinels",
    "sentinel_auth",
    "sentinel_user",
    "compression",
    "hot_key_cache",
];

const COMPRESSION_KEYS: &[&str] = &["algorithm", "min_size", "level", "keys", "flag_bit"];

const HOT_KEY_CACHE_KEYS: &[&str] = &["min_rate", "memory", "max_staleness_ms"];

const RATE_KEYS: &[&str] = &["by", "commands", "requests", "bytes", "per_ms"];

const VALIDATE_KEYS: &[&str] = &[
    "key_patterns",
    "max_key_bytes",
    "max_value_bytes",
    "max_keys",
    "require_ttl",
    "max_ttl_s",
];

const OVERLOAD_KEYS: &[&str] = &[
    "max_in_flight",
    "max_client_buffer_memory",
    "max_backend_queue",
    "max_connections",
];

const USER_KEYS: &[&str] = &["name", "password", "passwords", "pools", "acl"];

const LIMIT_KEYS: &[&str] = &[
    "max_bulk",
    "max_array",
    "max_depth",
    "max_inline",
    "max_pipeline",
    "max_key",
    "max_value",
    "max_request",
];

/// twemproxy's names for keys that are spelt differently here.
const TWEMPROXY_KEYS: &[(&str, &str)] = &[
    ("timeout", "timeout_ms = 400"),
    ("redis", "protocol = \"redis\""),
    ("redis_auth", "auth = \"...\""),
    ("redis_db", "db = 0"),
    ("tcpkeepalive", "tcp_keepalive = true"),
    ("server_retry_timeout", "server_retry_timeout_ms = 30000"),
];

/// Reads a ferrox TOML configuration; `file` names it in diagnostics.
pub fn parse_toml(text: &str, file: &str) -> Result<Config, ConfigError> {
    let mut report = Report::new(file);
    let mut config = Config {
        pools: Vec::new(),
        limits: Limits::default(),
        users: Vec::new(),
        overload: Overload::default(),
    };
    let root = match ::toml::from_str::<Node>(text) {
        Ok(Node::Table(root)) => root,
        Ok(_) => Vec::new(),
        Err(e) => {
            let line = e.span().map_or(1, |s| check::line_of(text, s.start));
            report.error(line, syntax_message(e.message()));
            return report.finish(config);
        }
    };
    let mut cx = Cx { text, report };
    let mut drafts = Vec::new();
    let mut pools_seen = false;
    for (key, node) in &root {
        let line = cx.line(key.span().start);
        match (key.get_ref().as_str(), node) {
            ("pools", Node::Table(pools)) => {
                pools_seen = true;
                if pools.is_empty() {
                    cx.report
                        .error(line, "pools: no pools: add a [pools.NAME] table per pool");
                }
                for (name, node) in pools {
                    drafts.push(cx.pool(name, node));
                }
            }
            ("pools", other) => {
                pools_seen = true;
                cx.report.error(
                    line,
                    format!(
                        "pools: expected a table of named pools ([pools.NAME]), found {}",
                        other.kind()
                    ),
                )
            }
            ("limits", Node::Table(limits)) => config.limits = cx.limits(limits),
            ("overload", Node::Table(entries)) => config.overload = cx.overload(entries),
            ("overload", other) => cx.report.error(
                line,
                format!(
                    "overload: expected a table ([overload]), found {}",
                    other.kind()
                ),
            ),
            ("users", Node::Array(users)) => {
                for user in users {
                    let line = cx.line(user.span().start);
                    if let Some(user) = cx.user(user.get_ref(), line) {
                        config.users.push(user);
                    }
                }
            }
            ("users", other) => cx.report.error(
                line,
                format!(
                    "users: expected a list of users ([[users]] tables), found {}",
                    other.kind()
                ),
            ),
            ("limits", other) => cx.report.error(
                line,
                format!(
                    "limits: expected a table ([limits]), found {}",
                    other.kind()
                ),
            ),
            (key, _) => cx.report.error(
                line,
                format!(
                    "unknown key {key:?}{}; the file has [limits], [overload], [pools.NAME] and [[users]] tables",
                    check::did_you_mean(key, &["pools", "limits", "overload", "users"])
                ),
            ),
        }
    }
    let mut report = cx.report;
    if !pools_seen {
        report.error(
            1,
            "no pools: the file defines nothing to proxy; add a [pools.NAME] table",
        );
    }
    config.pools = check::finish(drafts, ("auth", "db"), &mut report);
    check::users(&config.users, &config.pools, &mut report);
    report.finish(config)
}

/// toml's message on one line: its parse errors list expectations on
/// further lines.
///
/// toml hands a date or time to a visitor as a map under a private key,
/// which a [`Node`] table's spanned keys cannot take; the error that makes
/// names that key, and is the only way to tell a date was written.
fn syntax_message(message: &str) -> String {
    let message = message.trim().replace('\n', "; ");
    if message.contains("$__toml_private_datetime") {
        return "a date or time, which no setting takes; put it in quotes if it is text".into();
    }
    message
}

/// A TOML value, with the place of each key and list element.
#[derive(Debug)]
enum Node {
    Str(String),
    Int(i64),
    Float,
    Bool(bool),
    Array(Vec<::toml::Spanned<Node>>),
    Table(Vec<(::toml::Spanned<String>, Node)>),
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::Str(_) => "a string",
            Node::Int(_) => "an integer",
            Node::Float => "a float",
            Node::Bool(_) => "a boolean",
            Node::Array(_) => "a list",
            Node::Table(_) => "a table",
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Node, E> {
        i64::try_from(v)
            .map(Node::Int)
            .map_err(|_| E::custom("integer too large"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Float)
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Table(entries))
    }
}

/// What checking needs besides the tree.
struct Cx<'t> {
    text: &'t str,
    report: Report,
}

impl Cx<'_> {
    fn line(&self, offset: usize) -> usize {
        check::line_of(self.text, offset)
    }

    fn pool(&mut self, name: &::toml::Spanned<String>, node: &Node) -> Draft {
        let pool_line = self.line(name.span().start);
        let name = name.get_ref();
        let mut draft = Draft::new(name, pool_line, Protocol::Memcache);
        let Node::Table(entries) = node else {
            self.report.error(
                pool_line,
                format!(
                    "pool {name:?}: expected a table ([pools.{name}]), found {}",
                    node.kind()
                ),
            );
            // Counted as having servers: "no servers" would only repeat this.
            draft.server_entries = 1;
            draft.listen_line = Some(pool_line);
            return draft;
        };
        let mut protocol_seen = false;
        for (key, value) in entries {
            let line = self.line(key.span().start);
            let key = key.get_ref().as_str();
            let pool = &mut draft.pool;
            let result = match key {
                "listen" => {
                    draft.listen_line = Some(line);
                    string(value)
                        .and_then(|s| check::listen(s).map_err(|r| shown(s, r)))
                        .map(|a| {
                            pool.listen = a;
                            draft.listen_ok = true;
                        })
                }
                "protocol" => {
                    protocol_seen = true;
                    string(value)
                        .and_then(|s| match s {
                            "redis" => Ok(Protocol::Redis),
                            "memcache" => Ok(Protocol::Memcache),
                            _ => Err(shown(s, "expected \"redis\" or \"memcache\"".into())),
                        })
                        .inspect_err(|_| draft.protocol_ok = false)
                        .map(|p| pool.protocol = p)
                }
                "hash" => string(value)
                    .and_then(|s| check::hash(s).map_err(|r| shown(s, r)))
                    .map(|h| pool.hash = h),
                "distribution" => string(value)
                    .and_then(|s| check::distribution(s).map_err(|r| shown(s, r)))
                    .map(|d| {
                        pool.distribution = d;
                        draft.distribution_line = Some(line);
                    }),
                "hash_tag" => string(value)
                    .and_then(|s| check::hash_tag(s).map_err(|r| shown(s, r)))
                    .map(|t| pool.hash_tag = Some(t)),
                "timeout_ms" => match integer::<u64>(value) {
                    Ok(0) => Err(": 0 is no timeout; leave timeout_ms out to wait forever".into()),
                    t => t.map(|t| pool.timeout_ms = Some(t)),
                },
                "backlog" => integer(value).map(|n| pool.backlog = n),
                "client_connections" => integer(value).map(|n| pool.client_connections = n),
                "preconnect" => boolean(value).map(|b| pool.preconnect = b),
                "tcp_keepalive" => boolean(value).map(|b| pool.tcp_keepalive = b),
                "auth" => password(value).map(|a| {
                    pool.auth = Some(a);
                    draft.auth_line = Some(line);
                }),
                "server_auth" => password(value).map(|a| {
                    pool.server_auth = Some(a);
                    draft.server_auth_line = Some(line);
                }),
                "server_user" => user_name(value).map(|u| {
                    pool.server_user = Some(u);
                    draft.server_user_line = Some(line);
                }),
                "db" => integer(value).map(|n| {
                    pool.db = n;
                    draft.db_line = Some(line);
                }),
                "server_connections" => match integer(value) {
                    Ok(0) => Err(": cannot be 0".into()),
                    n => n.map(|n| pool.server_connections = n),
                },
                "auto_eject_hosts" => boolean(value).map(|b| {
                    pool.auto_eject_hosts = b;
                    draft.eject_line = Some(line);
                }),
                "server_retry_timeout_ms" => {
                    integer(value).map(|n| pool.server_retry_timeout_ms = n)
                }
                "server_failure_limit" => integer(value).map(|n| pool.server_failure_limit = n),
                "blocked_commands" => {
                    self.commands(
                        name,
                        "blocked_commands",
                        value,
                        line,
                        &mut pool.blocked_commands,
                    );
                    Ok(())
                }
                "rate_limits" => {
                    let what = format!("pool {name:?}: rate_limits");
                    if let Some(items) = self.list(
                        value,
                        line,
                        &what,
                        "a list of [[pools.NAME.rate_limits]] tables",
                    ) {
                        for (item_line, item) in items {
                            if let Some(limit) = self.rate_limit(name, item, item_line) {
                                pool.rate_limits.push(limit);
                            }
                        }
                    }
                    Ok(())
                }
                "validate" => sub_table(value, name, key)
                    .map(|entries| pool.validate = self.validate(name, entries)),
                "compression" => sub_table(value, name, key).map(|entries| {
                    draft.compression_line = Some(line);
                    pool.compression = Some(self.compression(name, entries));
                }),
                "hot_key_cache" => sub_table(value, name, key).map(|entries| {
                    draft.hot_key_cache_line = Some(line);
                    pool.hot_key_cache = Some(self.hot_key_cache(name, entries));
                }),
                "read_policy" => string(value).and_then(|s| {
                    draft.read_policy_line = Some(line);
                    pool.read_policy = one_of(s, &ReadPolicy::ALL)?;
                    Ok(())
                }),
                "sentinels" => {
                    draft.sentinels_line = Some(line);
                    addresses(value).map(|a| pool.sentinels = a)
                }
                "sentinel_auth" => password(value).map(|a| {
                    pool.sentinel_auth = Some(a);
                    draft.sentinel_auth_line = Some(line);
                }),
                "sentinel_user" => user_name(value).map(|u| {
                    pool.sentinel_user = Some(u);
                    draft.sentinel_user_line = Some(line);
                }),
                "servers" => {
                    draft.servers_line = Some(line);
                    self.servers(&mut draft, value, line);
                    Ok(())
                }
                _ => Err(format!(": unknown key{}", unknown_hint(key))),
            };
            if let Err(reason) = result {
                self.report
                    .error(line, format!("pool {name:?}: {key}{reason}"));
            }
        }
        if !protocol_seen {
            draft.protocol_ok = false;
            self.report.error(
                pool_line,
                format!("pool {name:?}: protocol is missing: say \"redis\" or \"memcache\""),
            );
        }
        draft
    }

    /// The items of list `value`, each with its line; when `value` is not
    /// a list, `None`, and the error `<what>: expected <expected>, found
    /// <kind>` is reported at `line`.
    fn list<'v>(
        &mut self,
        value: &'v Node,
        line: usize,
        what: &str,
        expected: &str,
    ) -> Option<Vec<(usize, &'v Node)>> {
        let Node::Array(items) = value else {
            let found = value.kind();
            self.report
                .error(line, format!("{what}: expected {expected}, found {found}"));
            return None;
        };
        let lines = items.iter().map(|item| self.line(item.span().start));
        Some(lines.zip(items.iter().map(|item| item.get_ref())).collect())
    }

    fn servers(&mut self, draft: &mut Draft, value: &Node, line: usize) {
        let name = draft.pool.name.clone();
        let what = format!("pool {name:?}: servers");
        let Some(items) = self.list(value, line, &what, "a list") else {
            draft.server_entries += 1;
            return;
        };
        for (line, item) in items {
            let server = match item {
                Node::Str(spec) => check::server(spec, false)
                    .map_err(|r| format!("pool {name:?}: server {spec:?}: {r}")),
                Node::Table(fields) => server_table(fields)
                    .map_err(|r| format!("pool {name:?}: server: {r}")),
                other => Err(format!(
                    "pool {name:?}: server: expected \"address:port:weight [name]\" or {{ addr = ..., weight = ..., name = ... }}, found {}",
                    other.kind()
                )),
            };
            let server = server.map_err(|m| self.report.error(line, m)).ok();
            draft.add_server(server, line);
        }
    }

    /// One `[[users]]` table, starting at `line`; `None` when it has no
    /// usable name (its other mistakes are reported all the same).
    fn user(&mut self, node: &Node, line: usize) -> Option<User> {
        let Node::Table(entries) = node else {
            self.report.error(
                line,
                format!("users: expected a [[users]] table, found {}", node.kind()),
            );
            return None;
        };
        let mut user = User {
            name: String::new(),
            passwords: Vec::new(),
            pools: Vec::new(),
            acl: String::new(),
            line,
        };
        let mut name_line = None;
        for (key, value) in entries {
            let key_line = self.line(key.span().start);
            let key = key.get_ref().as_str();
            let what = |user: &User| {
                if user.name.is_empty() {
                    "user".to_owned()
                } else {
                    format!("user {:?}", user.name)
                }
            };
            let result = match key {
                "name" => string(value).map(|s| {
                    user.name = s.to_owned();
                    name_line = Some(key_line);
                }),
                "password" => string(value).map(|s| user.passwords.push(s.to_owned())),
                "passwords" | "pools" => {
                    let label = format!("{}: {key}", what(&user));
                    if let Some(items) = self.list(value, key_line, &label, "a list of strings") {
                        for (item_line, item) in items {
                            match item {
                                Node::Str(s) if key == "passwords" => {
                                    user.passwords.push(s.clone())
                                }
                                Node::Str(s) => user.pools.push(s.clone()),
                                other => self.report.error(
                                    item_line,
                                    format!("{label}: expected a string, found {}", other.kind()),
                                ),
                            }
                        }
                    }
                    Ok(())
                }
                "acl" => string(value)
                    .and_then(|s| check::acl(s).map_err(|r| format!(": {r}")))
                    .map(|()| user.acl = string(value).unwrap_or_default().to_owned()),
                _ => Err(format!(
                    ": unknown key{}; a user has {}",
                    check::did_you_mean(key, USER_KEYS),
                    USER_KEYS.join(", ")
                )),
            };
            if let Err(reason) = result {
                let what = what(&user);
                self.report
                    .error(key_line, format!("{what}: {key}{reason}"));
            }
        }
        if name_line.is_none() {
            self.report.error(line, "user: name is missing");
            return None;
        }
        Some(user)
    }

    /// One `[[pools.NAME.rate_limits]]` table.
    fn rate_limit(&mut self, pool: &str, node: &Node, line: usize) -> Option<RateLimit> {
        let what = format!("pool {pool:?}: rate_limits");
        let Node::Table(entries) = node else {
            self.report.error(
                line,
                format!("{what}: expected a table, found {}", node.kind()),
            );
            return None;
        };
        let (mut by, mut commands, mut requests, mut bytes, mut per_ms) =
            (None, Vec::new(), None, None, None);
        let mut ok = true;
        let mut seen = Vec::new();
        for (key, value) in entries {
            let key_line = self.line(key.span().start);
            let key = key.get_ref().as_str();
            seen.push(key);
            let result = match key {
                "by" => string(value).and_then(|s| {
                    RateBy::ALL
                        .iter()
                        .find(|(name, _)| *name == s)
                        .map(|&(_, b)| by = Some(b))
                        .ok_or_else(|| {
                            format!(" {s:?}: expected client, user, key, command or pool")
                        })
                }),
                "commands" => {
                    self.commands(
                        pool,
                        "rate_limits: commands",
                        value,
                        key_line,
                        &mut commands,
                    );
                    Ok(())
                }
                "requests" => integer::<u64>(value).and_then(|n| match n {
                    0 => Err(": must be at least 1".into()),
                    n => {
                        requests = Some(n);
                        Ok(())
                    }
                }),
                "bytes" => byte_size(value).and_then(|n| match n {
                    0 => Err(": must be at least 1".into()),
                    n => {
                        bytes = Some(n);
                        Ok(())
                    }
                }),
                "per_ms" => integer::<u64>(value).and_then(|n| match n {
                    0 => Err(": must be at least 1".into()),
                    n => {
                        per_ms = Some(n);
                        Ok(())
                    }
                }),
                _ => Err(format!(
                    ": unknown key{}; a rate limit has {}",
                    check::did_you_mean(key, RATE_KEYS),
                    RATE_KEYS.join(", ")
                )),
            };
            if let Err(reason) = result {
                ok = false;
                self.report
                    .error(key_line, format!("{what}: {key}{reason}"));
            }
        }
        let mut missing = |what_missing: &str| {
            ok = false;
            self.report.error(line, format!("{what}: {what_missing}"));
        };
        if !seen.contains(&"by") {
            missing("by is missing (client, user, key, command or pool)");
        }
        if !seen.contains(&"per_ms") {
            missing("per_ms is missing");
        }
        if requests.is_none() && bytes.is_none() {
            missing("give requests, bytes, or both");
        }
        Some(RateLimit {
            by: by?,
            commands,
            requests,
            bytes,
            per_ms: per_ms?,
        })
        .filter(|_| ok)
    }

    /// The `[overload]` table.
    fn overload(&mut self, entries: &[(::toml::Spanned<String>, Node)]) -> Overload {
        let mut overload = Overload::default();
        for (key, value) in entries {
            let line = self.line(key.span().start);
            let key = key.get_ref().as_str();
            let n = match value {
                Node::Str(s) if key == "max_client_buffer_memory" => {
                    size(s).map_err(|r| format!(" {s:?}: {r}"))
                }
                _ => integer::<usize>(value),
            }
            .and_then(|n| match n {
                0 => Err(": must be at least 1".to_owned()),
                n => Ok(n),
            });
            let field = match key {
                "max_in_flight" => &mut overload.max_in_flight,
                "max_client_buffer_memory" => &mut overload.max_client_buffer_memory,
                "max_backend_queue" => &mut overload.max_backend_queue,
                "max_connections" => &mut overload.max_connections,
                _ => {
                    self.report.error(
                        line,
                        format!(
                            "overload: unknown key {key:?}{}; [overload] has {}",
                            check::did_you_mean(key, OVERLOAD_KEYS),
                            OVERLOAD_KEYS.join(", ")
                        ),
                    );
                    continue;
                }
            };
            match n {
                Ok(n) => *field = Some(n),
                Err(reason) => self.report.error(line, format!("overload: {key}{reason}")),
            }
        }
        overload
    }

    /// Reads a pool's table `[pools.POOL.SECTION]`: `each` reads one key
    /// (its value, its line, and how errors name it) and says what is
    /// wrong with it; a key not in `known` is reported with the keys the
    /// section has.
    fn pool_table(
        &mut self,
        pool: &str,
        section: &str,
        known: &[&str],
        entries: &[(::toml::Spanned<String>, Node)],
        mut each: impl FnMut(&mut Self, &str, &Node, usize, &str) -> Result<(), String>,
    ) {
        for (key, value) in entries {
            let line = self.line(key.span().start);
            let key = key.get_ref().as_str();
            let what = format!("pool {pool:?}: {section}: {key}");
            let result = if known.contains(&key) {
                each(self, key, value, line, &what)
            } else {
                Err(format!(
                    ": unknown key{}; {section} has {}",
                    check::did_you_mean(key, known),
                    known.join(", ")
                ))
            };
            if let Err(reason) = result {
                self.report.error(line, format!("{what}{reason}"));
            }
        }
    }

    /// A list of key globs (`value`, at `line`) into `out`.
    fn patterns(&mut self, value: &Node, line: usize, what: &str, out: &mut Vec<String>) {
        let Some(items) = self.list(value, line, what, "a list of key patterns") else {
            return;
        };
        for (item_line, item) in items {
            match item {
                Node::Str(s) if !s.is_empty() => out.push(s.clone()),
                other => self.report.error(
                    item_line,
                    format!("{what}: expected a key pattern, found {}", other.kind()),
                ),
            }
        }
    }

    /// A pool's `[pools.NAME.validate]` table.
    fn validate(&mut self, pool: &str, entries: &[(::toml::Spanned<String>, Node)]) -> Validate {
        let mut validate = Validate::default();
        let count = |value: &Node| {
            byte_size(value).and_then(|n| match n {
                0 => Err(": must be at least 1".to_owned()),
                n => Ok(n),
            })
        };
        self.pool_table(
            pool,
            "validate",
            VALIDATE_KEYS,
            entries,
            |this, key, value, line, what| match key {
                "key_patterns" => {
                    this.patterns(value, line, what, &mut validate.key_patterns);
                    Ok(())
                }
                "max_key_bytes" => count(value).map(|n| validate.max_key_bytes = Some(n)),
                "max_value_bytes" => count(value).map(|n| validate.max_value_bytes = Some(n)),
                "max_keys" => count(value).map(|n| validate.max_keys = Some(n)),
                "require_ttl" => boolean(value).map(|b| validate.require_ttl = b),
                _ => count(value).map(|n| validate.max_ttl_s = Some(n as u64)),
            },
        );
        validate
    }

    /// A pool's `[pools.NAME.compression]` table.
    fn compression(
        &mut self,
        pool: &str,
        entries: &[(::toml::Spanned<String>, Node)],
    ) -> Compression {
        let mut compression = Compression::default();
        let known = COMPRESSION_KEYS;
        self.pool_table(
            pool,
            "compression",
            known,
            entries,
            |this, key, value, line, what| match key {
                "algorithm" => string(value).and_then(|s| {
                    compression.algorithm = one_of(s, &CompressionAlgorithm::ALL)?;
                    Ok(())
                }),
                "min_size" => byte_size(value).map(|n| compression.min_size = n),
                "level" => match value {
                    Node::Int(n) => Ok(*n),
                    other => Err(format!(": expected an integer, found {}", other.kind())),
                }
                .and_then(|level| {
                    let level = i32::try_from(level)
                        .ok()
                        .filter(|l| ZSTD_LEVELS.contains(l))
                        .ok_or_else(|| {
                            format!(
                                ": {level} is not a level: zstd's run from {} to {}",
                                ZSTD_LEVELS.start(),
                                ZSTD_LEVELS.end()
                            )
                        })?;
                    compression.level = level;
                    Ok(())
                }),
                "keys" => {
                    this.patterns(value, line, what, &mut compression.keys);
                    Ok(())
                }
                _ => integer::<u8>(value).and_then(|bit| match bit {
                    0..32 => {
                        compression.flag_bit = bit;
                        Ok(())
                    }
                    _ => Err(format!(
                        ": {bit} is not a bit of memcached's 32-bit flags (0-31)"
                    )),
                }),
            },
        );
        compression
    }

    /// A pool's `[pools.NAME.hot_key_cache]` table.
    fn hot_key_cache(
        &mut self,
        pool: &str,
        entries: &[(::toml::Spanned<String>, Node)],
    ) -> HotKeyCache {
        let mut cache = HotKeyCache::default();
        let positive = |n: u64| match n {
            0 => Err(": must be at least 1".to_owned()),
            n => Ok(n),
        };
        let known = HOT_KEY_CACHE_KEYS;
        self.pool_table(
            pool,
            "hot_key_cache",
            known,
            entries,
            |_, key, value, _, _| match key {
                "min_rate" => integer::<u32>(value)
                    .and_then(|n| positive(n.into()))
                    .map(|n| cache.min_rate = n as u32),
                "memory" => byte_size(value)
                    .and_then(|n| positive(n as u64))
                    .map(|n| cache.memory = n as usize),
                _ => integer::<u64>(value)
                    .and_then(positive)
                    .map(|n| cache.max_staleness_ms = Some(n)),
            },
        );
        cache
    }

    /// A list of command names under `key` of pool `pool`.
    fn commands(
        &mut self,
        pool: &str,
        key: &str,
        value: &Node,
        line: usize,
        out: &mut Vec<String>,
    ) {
        let what = format!("pool {pool:?}: {key}");
        let Some(items) = self.list(value, line, &what, "a list of command names") else {
            return;
        };
        for (line, item) in items {
            let result = match item {
                Node::Str(s) => check::command(s).map_err(|r| format!("{s:?}: {r}")),
                other => Err(format!("expected a command name, found {}", other.kind())),
            };
            match result {
                Ok(c) if !out.contains(&c) => out.push(c),
                Ok(_) => {}
                Err(r) => self.report.error(line, format!("{what}: {r}")),
            }
        }
    }

    fn limits(&mut self, entries: &[(::toml::Spanned<String>, Node)]) -> Limits {
        let mut limits = Limits::default();
        let mut lines = [None; LIMIT_KEYS.len()];
        for (key, value) in entries {
            let line = self.line(key.span().start);
            let key = key.get_ref().as_str();
            let Some(index) = LIMIT_KEYS.iter().position(|k| *k == key) else {
                self.report.error(
                    line,
                    format!(
                        "limits: unknown key {key:?}{}",
                        check::did_you_mean(key, LIMIT_KEYS)
                    ),
                );
                continue;
            };
            let is_size = matches!(
                key,
                "max_bulk" | "max_inline" | "max_key" | "max_value" | "max_request"
            );
            let parsed = match value {
                Node::Str(s) if is_size => size(s).map_err(|r| format!(" {s:?}: {r}")),
                _ => integer::<usize>(value),
            };
            let n = match parsed {
                Ok(0) => Err(": must be at least 1".to_owned()),
                Ok(n) if key == "max_depth" && n > MAX_DEPTH => Err(format!(
                    " {n}: at most {MAX_DEPTH}, the deepest reply nesting the parser tracks"
                )),
                other => other,
            };
            match n {
                Ok(n) => {
                    lines[index] = Some(line);
                    *match key {
                        "max_bulk" => &mut limits.max_bulk,
                        "max_array" => &mut limits.max_array,
                        "max_depth" => &mut limits.max_depth,
                        "max_inline" => &mut limits.max_inline,
                        "max_pipeline" => &mut limits.max_pipeline,
                        "max_key" => &mut limits.max_key,
                        "max_value" => &mut limits.max_value,
                        _ => &mut limits.max_request,
                    } = n;
                }
                Err(r) => self.report.error(line, format!("limits: {key}{r}")),
            }
        }
        if limits.max_key > limits.max_bulk {
            // Whichever of the two was written is the one to fix.
            let line = lines[5].or(lines[0]).unwrap_or(1);
            self.report.error(
                line,
                format!(
                    "limits: max_key ({}) is more than max_bulk ({}); a key is one bulk string",
                    limits.max_key, limits.max_bulk
                ),
            );
        }
        limits
    }
}

/// `{ addr = "a.b.c.d:port", weight = 1, name = "x", replicas = [...] }`,
/// or a shard named by its Sentinel master: `{ master = "m", name = "x" }`.
fn server_table(fields: &[(::toml::Spanned<String>, Node)]) -> Result<super::Server, String> {
    const KEYS: [&str; 5] = ["addr", "weight", "name", "replicas", "master"];
    let (mut addr, mut weight, mut name) = (None, 1, None);
    let (mut replicas, mut master) = (Vec::new(), None);
    for (key, value) in fields {
        match key.get_ref().as_str() {
            "addr" => addr = Some(string(value).map_err(|r| format!("addr{r}"))?),
            "weight" => weight = integer(value).map_err(|r| format!("weight{r}"))?,
            "name" => name = Some(string(value).map_err(|r| format!("name{r}"))?),
            "replicas" => replicas = addresses(value).map_err(|r| format!("replicas{r}"))?,
            "master" => {
                let m = string(value).map_err(|r| format!("master{r}"))?;
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(format!(
                        "master {m:?}: a Sentinel master name is one word of printable ASCII"
                    ));
                }
                master = Some(m.to_owned());
            }
            other => {
                return Err(format!(
                    "unknown key {other:?}{}; a server has addr, weight, name, replicas (or master instead of addr)",
                    check::did_you_mean(other, &KEYS)
                ))
            }
        }
    }
    let mut server = match (addr, &master) {
        (Some(addr), None) => {
            check::server_parts(addr, weight, name).map_err(|r| format!("{addr:?}: {r}"))?
        }
        (None, Some(master)) => {
            // Placement hashes the name, which the master's is by default.
            let name = check::server_name(name.unwrap_or(master))?;
            if weight == 0 {
                return Err("weight 0: a server needs a weight of at least 1".into());
            }
            let unspecified = SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0);
            super::Server::new(unspecified, weight, name)
        }
        (Some(_), Some(master)) => {
            return Err(format!(
                "master {master:?}: a shard named by its Sentinel master has no addr (Sentinel tells it)"
            ))
        }
        (None, None) => return Err("addr is missing".into()),
    };
    server.replicas = replicas;
    server.master = master;
    Ok(server)
}

/// A list of `"a.b.c.d:port"` addresses.
fn addresses(node: &Node) -> Result<Vec<SocketAddrV4>, String> {
    let Node::Array(items) = node else {
        return Err(format!(
            ": expected a list of \"address:port\", found {}",
            node.kind()
        ));
    };
    items
        .iter()
        .map(|item| {
            let text = string(item.get_ref())?;
            check::address(text).map_err(|r| shown(text, r))
        })
        .collect()
}

/// The hint for an unknown pool key: its ferrox spelling if it is a
/// twemproxy key, else the closest known key.
fn unknown_hint(key: &str) -> String {
    match TWEMPROXY_KEYS.iter().find(|(k, _)| *k == key) {
        Some((_, ours)) => format!(" (twemproxy's {key}; here it is {ours})"),
        None => check::did_you_mean(key, POOL_KEYS),
    }
}

/// ` "value": reason`, the way a rejected value is shown after its key.
fn shown(value: &str, reason: String) -> String {
    format!(" {value:?}: {reason}")
}

/// The value named `s` in `all` (name, value), or why not, with the names
/// there are and the nearest one.
fn one_of<T: Copy>(s: &str, all: &[(&str, T)]) -> Result<T, String> {
    if let Some(&(_, value)) = all.iter().find(|(name, _)| *name == s) {
        return Ok(value);
    }
    let names: Vec<&str> = all.iter().map(|(name, _)| *name).collect();
    Err(shown(
        s,
        format!(
            "expected one of {}{}",
            names.join(", "),
            check::did_you_mean(s, &names)
        ),
    ))
}

/// Type mismatches read `key: expected ..., found ...`, hence the leading
/// colon on these reasons.
fn string(node: &Node) -> Result<&str, String> {
    match node {
        Node::Str(s) => Ok(s),
        other => Err(format!(": expected a string, found {}", other.kind())),
    }
}

/// A password (`auth`, `server_auth`, `sentinel_auth`).
fn password(node: &Node) -> Result<String, String> {
    string(node).and_then(|s| check::auth(s).map_err(|r| format!(": {r}")))
}

/// An ACL user name to log in as (`server_user`, `sentinel_user`).
fn user_name(node: &Node) -> Result<String, String> {
    string(node).and_then(|s| check::user_name(s).map_err(|r| format!(": {r}")))
}

fn boolean(node: &Node) -> Result<bool, String> {
    match node {
        Node::Bool(b) => Ok(*b),
        other => Err(format!(": expected true or false, found {}", other.kind())),
    }
}

fn integer<T: TryFrom<i64>>(node: &Node) -> Result<T, String> {
    match node {
        Node::Int(n) if *n < 0 => Err(format!(" {n}: cannot be negative")),
        Node::Int(n) => T::try_from(*n).map_err(|_| format!(" {n}: too large")),
        other => Err(format!(": expected an integer, found {}", other.kind())),
    }
}

/// The entries of `value`, which must be the table `[pools.POOL.SECTION]`.
fn sub_table<'v>(
    value: &'v Node,
    pool: &str,
    section: &str,
) -> Result<&'v [(::toml::Spanned<String>, Node)], String> {
    match value {
        Node::Table(entries) => Ok(entries),
        other => Err(format!(
            ": expected a table ([pools.{pool}.{section}]), found {}",
            other.kind()
        )),
    }
}

/// A number of bytes: an integer, or a size with a unit.
fn byte_size(value: &Node) -> Result<usize, String> {
    match value {
        Node::Str(s) => size(s).map_err(|r| format!(" {s:?}: {r}")),
        _ => integer::<usize>(value),
    }
}

/// A size with a unit: `"64 KiB"`, `"512MiB"`, `"1 GiB"`, `"100 B"`.
fn size(text: &str) -> Result<usize, String> {
    const UNITS: &str =
        "expected a number of bytes, or a size like \"64 KiB\", \"512 MiB\" or \"1 GiB\"";
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let shift = match text[digits..].trim_start() {
        "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => return Err(UNITS.into()),
    };
    let n: usize = text[..digits].parse().map_err(|_| UNITS.to_owned())?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| "too large".to_owned())
}
