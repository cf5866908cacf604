//! The checks both formats share: value syntax (addresses, server specs,
//! names) and the rules that span a pool or the whole file.
//!
//! Value checks return the reason as a `String`; the format modules add the
//! file, the line and which pool and key the value belongs to.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use super::model::{
    Distribution, HashFn, Pool, Protocol, ReadPolicy, Server, DISTRIBUTIONS, HASHES,
};
use super::{ConfigError, Diagnostic};

/// The diagnostics found so far in one file.
#[derive(Debug)]
pub(super) struct Report {
    file: String,
    errors: Vec<Diagnostic>,
}

impl Report {
    pub(super) fn new(file: &str) -> Report {
        Report {
            file: file.to_owned(),
            errors: Vec::new(),
        }
    }

    pub(super) fn error(&mut self, line: usize, message: impl Into<String>) {
        self.errors.push(Diagnostic {
            file: self.file.clone(),
            line,
            message: message.into(),
        });
    }

    /// `value` if nothing was found wrong, else every diagnostic in line
    /// order (found in the order of the checks, which is not the reader's).
    pub(super) fn finish<T>(mut self, value: T) -> Result<T, ConfigError> {
        if self.errors.is_empty() {
            return Ok(value);
        }
        self.errors.sort_by_key(|d| d.line);
        Err(ConfigError {
            errors: self.errors,
        })
    }
}

/// The 1-based line holding byte `offset` of `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    1 + text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// The known word closest to a misspelt one, if any is close: a few edits
/// away (among equals, one that only adds letters), else the only word it
/// begins.
pub(super) fn suggest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let close = known
        .iter()
        .map(|k| (distance(word, k), *k))
        .filter(|&(d, k)| d <= 2.max(k.len() / 4) && d < k.len())
        .min_by_key(|&(d, k)| (d, !is_subsequence(word, k)))
        .map(|(_, k)| k);
    let mut begun = known
        .iter()
        .filter(|k| word.len() >= 3 && k.starts_with(word));
    close.or(match (begun.next(), begun.next()) {
        (Some(k), None) => Some(*k),
        _ => None,
    })
}

fn is_subsequence(word: &str, of: &str) -> bool {
    let mut of = of.bytes();
    word.bytes().all(|b| of.any(|c| c == b))
}

/// Levenshtein distance over bytes (keys are ASCII).
fn distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.as_bytes().iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// " (did you mean \"x\"?)" or nothing.
pub(super) fn did_you_mean(word: &str, known: &[&str]) -> String {
    suggest(word, known)
        .map(|k| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default()
}

fn ipv4(host: &str) -> Result<Ipv4Addr, String> {
    if host.is_empty() {
        return Err("the address is missing before the port".into());
    }
    if host.starts_with('[') || host.contains(':') {
        return Err("the dataplane speaks IPv4 only".into());
    }
    if host.bytes().any(|b| b.is_ascii_alphabetic() || b == b'-') {
        return Err("give an IPv4 address; the dataplane does not resolve names".into());
    }
    host.parse()
        .map_err(|_| format!("{host:?} is not an IPv4 address (a.b.c.d)"))
}

fn port(text: &str) -> Result<u16, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the port is not a number".into());
    }
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err("port out of range".into()),
    }
}

/// `a.b.c.d:port` as the address clients connect to.
pub(super) fn listen(text: &str) -> Result<SocketAddrV4, String> {
    if text.starts_with('/') {
        return Err("ferrox listens on IPv4 only; unix sockets are not supported".into());
    }
    address(text)
}

/// `a.b.c.d:port`.
pub(super) fn address(text: &str) -> Result<SocketAddrV4, String> {
    let Some((host, port_text)) = text.rsplit_once(':') else {
        return Err("expected \"address:port\"".into());
    };
    Ok(SocketAddrV4::new(ipv4(host)?, port(port_text)?))
}

/// twemproxy's server name when none is given (`conf_add_server`): the
/// address text up to the port, without the port when it is 11211.
fn default_name(host: &str, addr_text: &str, addr: SocketAddrV4) -> String {
    if addr.port() == 11211 {
        host.to_owned()
    } else {
        addr_text.to_owned()
    }
}

pub(super) fn server_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("the server name is empty".into());
    }
    if name.chars().any(char::is_whitespace) {
        return Err(format!(
            "server name {name:?} has spaces; twemproxy reads only the last word"
        ));
    }
    Ok(name.to_owned())
}

fn weight(text: &str) -> Result<u32, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the weight is not a number".into());
    }
    match text.parse::<u32>() {
        Ok(0) => Err("weight 0: a server needs a weight of at least 1".into()),
        Ok(w) => Ok(w),
        Err(_) => Err("weight too large".into()),
    }
}

/// twemproxy's `host:port:weight [name]`. Without `weight_required` (TOML),
/// `host:port [name]` means weight 1.
pub(super) fn server(spec: &str, weight_required: bool) -> Result<Server, String> {
    const FORMAT: &str = "expected \"address:port:weight [name]\"";
    let spec = spec.trim();
    if spec.starts_with('/') {
        return Err("ferrox reaches servers over IPv4 only; unix sockets are not supported".into());
    }
    let (address_part, name) = match spec.split_once(char::is_whitespace) {
        Some((a, n)) => (a, Some(server_name(n.trim())?)),
        None => (spec, None),
    };
    let colons = address_part.bytes().filter(|&b| b == b':').count();
    let (addr_text, weight) = match colons {
        2 => {
            let (a, w) = address_part.rsplit_once(':').unwrap_or_default();
            (a, weight(w)?)
        }
        1 if !weight_required => (address_part, 1),
        0 | 1 => return Err(FORMAT.into()),
        _ if address_part.starts_with('[') => return Err("the dataplane speaks IPv4 only".into()),
        _ => return Err(FORMAT.into()),
    };
    let addr = address(addr_text)?;
    let host = addr_text.rsplit_once(':').map_or("", |(h, _)| h);
    Ok(Server::new(
        addr,
        weight,
        name.unwrap_or_else(|| default_name(host, addr_text, addr)),
    ))
}

/// The TOML table form `{ addr = "a.b.c.d:port", weight = 1, name = "x" }`.
pub(super) fn server_parts(
    addr_text: &str,
    weight: u32,
    name: Option<&str>,
) -> Result<Server, String> {
    let addr = address(addr_text)?;
    if weight == 0 {
        return Err("weight 0: a server needs a weight of at least 1".into());
    }
    let host = addr_text.rsplit_once(':').map_or("", |(h, _)| h);
    let name = match name {
        Some(n) => server_name(n)?,
        None => default_name(host, addr_text, addr),
    };
    Ok(Server::new(addr, weight, name))
}

pub(super) fn hash(name: &str) -> Result<HashFn, String> {
    HashFn::from_name(name).ok_or_else(|| unknown("hash", name, &HASHES))
}

pub(super) fn distribution(name: &str) -> Result<Distribution, String> {
    Distribution::from_name(name).ok_or_else(|| unknown("distribution", name, &DISTRIBUTIONS))
}

/// Why `name` is not one of `names`: the closest when one is close, and
/// all of them.
fn unknown(what: &str, name: &str, names: &[&str]) -> String {
    format!(
        "unknown {what}{}; expected one of {}",
        did_you_mean(name, names),
        names.join(", ")
    )
}

pub(super) fn hash_tag(text: &str) -> Result<[u8; 2], String> {
    match text.as_bytes() {
        &[open, close] if text.is_ascii() => Ok([open, close]),
        _ => Err("a hash tag is exactly two characters, like \"{}\"".into()),
    }
}

pub(super) fn auth(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("the password is empty".into());
    }
    Ok(text.to_owned())
}

/// An ACL user name to `AUTH` as: one word of printable ASCII.
pub(super) fn user_name(text: &str) -> Result<String, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a user name is one word of printable ASCII".into());
    }
    Ok(text.to_owned())
}

/// A command name to block, upper-cased.
pub(super) fn command(name: &str) -> Result<String, String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a command name is one word of printable ASCII".into());
    }
    Ok(name.to_ascii_uppercase())
}

/// Checks the syntax of a Redis ACL rule string (the subset ferrox
/// takes): `+@category`, `-@category`, `+command`, `-command`,
/// `~pattern`, `allkeys`, `allcommands`, `nocommands`, `resetkeys`.
pub(super) fn acl(rules: &str) -> Result<(), String> {
    use super::model::ACL_CATEGORIES;
    for word in rules.split_whitespace() {
        match word {
            "allkeys" | "allcommands" | "nocommands" | "resetkeys" => continue,
            "on" | "off" | "nopass" | "reset" | "resetpass" => {
                return Err(format!(
                    "{word:?}: users are on while configured, and passwords go in password or passwords"
                ))
            }
            _ => {}
        }
        if let Some(category) = word.strip_prefix("+@").or_else(|| word.strip_prefix("-@")) {
            if !ACL_CATEGORIES.contains(&category) {
                return Err(format!(
                    "{word:?}: unknown category{}; expected one of {}",
                    did_you_mean(category, &ACL_CATEGORIES),
                    ACL_CATEGORIES.join(", ")
                ));
            }
        } else if let Some(name) = word.strip_prefix('+').or_else(|| word.strip_prefix('-')) {
            if name.contains('|') {
                return Err(format!("{word:?}: subcommand rules are not supported; allow or refuse the whole command"));
            }
            command(name).map_err(|r| format!("{word:?}: {r}"))?;
        } else if let Some(pattern) = word.strip_prefix('~') {
            if pattern.is_empty() {
                return Err("\"~\": a key pattern follows the ~".into());
            }
        } else if word.starts_with('%') || word.starts_with('&') {
            return Err(format!(
                "{word:?}: read/write key permissions and channel rules are not supported"
            ));
        } else {
            return Err(format!(
                "{word:?}: expected +@category, -@category, +command, -command, ~pattern, allkeys, allcommands, nocommands or resetkeys"
            ));
        }
    }
    Ok(())
}

/// One pool while its keys are read, with the lines later checks point at.
#[derive(Debug)]
pub(super) struct Draft {
    pub pool: Pool,
    /// Where the pool's name is.
    pub line: usize,
    /// Where `listen` is, valid or not.
    pub listen_line: Option<usize>,
    /// `pool.listen` holds the address given (not a placeholder).
    pub listen_ok: bool,
    /// `pool.protocol` is known (its key was not given a bad value).
    pub protocol_ok: bool,
    pub auth_line: Option<usize>,
    pub server_auth_line: Option<usize>,
    pub server_user_line: Option<usize>,
    pub db_line: Option<usize>,
    pub distribution_line: Option<usize>,
    pub eject_line: Option<usize>,
    pub servers_line: Option<usize>,
    pub read_policy_line: Option<usize>,
    pub sentinels_line: Option<usize>,
    pub sentinel_auth_line: Option<usize>,
    pub sentinel_user_line: Option<usize>,
    pub compression_line: Option<usize>,
    pub hot_key_cache_line: Option<usize>,
    /// Server entries read, valid or not (a `servers` value that is not a
    /// list counts as one).
    pub server_entries: usize,
    /// Where each of `pool.servers` is.
    pub server_lines: Vec<usize>,
}

impl Draft {
    pub(super) fn new(name: &str, line: usize, protocol: Protocol) -> Draft {
        Draft {
            pool: Pool::new(name, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), protocol),
            line,
            listen_line: None,
            listen_ok: false,
            protocol_ok: true,
            auth_line: None,
            server_auth_line: None,
            server_user_line: None,
            db_line: None,
            distribution_line: None,
            eject_line: None,
            servers_line: None,
            read_policy_line: None,
            sentinels_line: None,
            sentinel_auth_line: None,
            sentinel_user_line: None,
            compression_line: None,
            hot_key_cache_line: None,
            server_entries: 0,
            server_lines: Vec::new(),
        }
    }

    /// Counts one server entry, keeping it if it is valid.
    pub(super) fn add_server(&mut self, server: Option<Server>, line: usize) {
        self.server_entries += 1;
        if let Some(server) = server {
            self.pool.servers.push(server);
            self.server_lines.push(line);
        }
    }
}

/// The checks that need a whole pool or every pool; returns the pools in
/// file order. `auth` and `db` are the keys' names in the file's format.
pub(super) fn finish(drafts: Vec<Draft>, keys: (&str, &str), report: &mut Report) -> Vec<Pool> {
    let (auth_key, db_key) = keys;
    for d in &drafts {
        let pool = &d.pool;
        let name = &pool.name;
        if name.is_empty() {
            report.error(d.line, "a pool needs a name");
        }
        if d.listen_line.is_none() {
            report.error(d.line, format!("pool {name:?}: listen is missing"));
        }
        if d.server_entries == 0 {
            report.error(
                d.servers_line.unwrap_or(d.line),
                format!("pool {name:?}: no servers"),
            );
        }
        if let (Some(line), None) = (d.server_user_line, &pool.server_auth) {
            report.error(
                line,
                format!("pool {name:?}: server_user: without server_auth (its password) there is nothing to log in with"),
            );
        }
        if d.protocol_ok && pool.protocol == Protocol::Memcache {
            for (key, line) in [
                (auth_key, d.auth_line),
                ("server_auth", d.server_auth_line),
                ("server_user", d.server_user_line),
                (db_key, d.db_line),
            ] {
                if let Some(line) = line {
                    report.error(
                        line,
                        format!("pool {name:?}: {key}: only a redis pool has it, and this pool speaks memcache"),
                    );
                }
            }
        }
        if pool.distribution == Distribution::RedisCluster {
            let line = d.distribution_line.unwrap_or(d.line);
            if d.protocol_ok && pool.protocol != Protocol::Redis {
                report.error(
                    line,
                    format!("pool {name:?}: distribution redis_cluster: only a redis pool can front a Redis Cluster"),
                );
            }
            if pool.db != 0 {
                report.error(
                    d.db_line.unwrap_or(line),
                    format!("pool {name:?}: {db_key}: a Redis Cluster has database 0 only"),
                );
            }
            if pool.auto_eject_hosts {
                report.error(
                    d.eject_line.unwrap_or(line),
                    format!(
                        "pool {name:?}: auto_eject_hosts: a redis_cluster pool follows the cluster's own \
                         failover (its slot map), so it ejects nothing"
                    ),
                );
            }
        }
        shards_and_replicas(d, report);
        if pool.hot_key_cache.is_some() && pool.distribution == Distribution::RedisCluster {
            report.error(
                d.hot_key_cache_line.unwrap_or(d.line),
                format!(
                    "pool {name:?}: hot_key_cache: not supported on a redis_cluster pool (its \
                     slots move between servers the cache could not follow)"
                ),
            );
        }
        let mut names = HashMap::new();
        for (i, server) in pool.servers.iter().enumerate() {
            let Some(&j) = names.get(server.name.as_str()) else {
                names.insert(server.name.as_str(), i);
                continue;
            };
            let unnamed = [server, &pool.servers[j]]
                .iter()
                .any(|s| s.name == s.addr.to_string() || s.name == s.addr.ip().to_string());
            report.error(
                d.server_lines[i],
                format!(
                    "pool {name:?}: server name {:?} is also the name of the server on line {}; \
                     ketama places servers by name, so names must differ{}",
                    server.name,
                    d.server_lines[j],
                    if unnamed {
                        " (a server without a name is named \"address:port\", \
                         or \"address\" for port 11211)"
                    } else {
                        ""
                    }
                ),
            );
        }
    }
    for (i, d) in drafts.iter().enumerate() {
        let (Some(line), true) = (d.listen_line, d.listen_ok) else {
            continue;
        };
        let clash = drafts[..i]
            .iter()
            .find(|other| other.listen_ok && overlaps(other.pool.listen, d.pool.listen));
        if let Some(other) = clash {
            report.error(
                line,
                format!(
                    "pool {:?}: listen {}: taken by pool {:?}, which listens on {} (line {})",
                    d.pool.name,
                    d.pool.listen,
                    other.pool.name,
                    other.pool.listen,
                    other.listen_line.unwrap_or(other.line)
                ),
            );
        }
    }
    drafts.into_iter().map(|d| d.pool).collect()
}

/// The checks of `[[users]]` that need every user and every pool: names
/// unique and not `default` (each pool's `auth` user), a password each,
/// pools that exist. A user naming no pool has every redis pool; a
/// memcached pool takes the users that name it.
pub(super) fn users(users: &[super::model::User], pools: &[Pool], report: &mut Report) {
    for (i, user) in users.iter().enumerate() {
        let name = &user.name;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            report.error(
                user.line,
                format!("user {name:?}: a user name is one word of printable ASCII"),
            );
        }
        if name == "default" {
            report.error(
                user.line,
                "user \"default\": that is each pool's own user, whose password is the pool's auth",
            );
        }
        if let Some(first) = users[..i].iter().find(|u| u.name == *name) {
            report.error(
                user.line,
                format!("user {name:?}: also defined on line {}", first.line),
            );
        }
        if user.passwords.is_empty() || user.passwords.iter().any(String::is_empty) {
            report.error(
                user.line,
                format!("user {name:?}: needs a password (password = \"...\", or passwords = [...]), none empty"),
            );
        }
        for pool in &user.pools {
            if !pools.iter().any(|p| p.name == *pool) {
                report.error(user.line, format!("user {name:?}: pools: no pool {pool:?}"));
            }
        }
    }
}

/// The checks of replicas, read policies and Sentinel-named shards: only
/// plain redis pools have them; every address is one server's; a pool
/// with sentinels names every shard by its master, and only such a pool
/// may.
fn shards_and_replicas(d: &Draft, report: &mut Report) {
    let pool = &d.pool;
    let name = &pool.name;
    let sentinel = !pool.sentinels.is_empty();
    let other_kind = if !d.protocol_ok {
        None
    } else if pool.protocol == Protocol::Memcache {
        Some("a memcache pool has no replicas")
    } else if pool.distribution == Distribution::RedisCluster {
        Some("a redis_cluster pool learns the cluster's replicas from its slot map")
    } else {
        None
    };
    if let Some(why) = other_kind {
        for (i, server) in pool.servers.iter().enumerate() {
            if !server.replicas.is_empty() || server.master.is_some() {
                let key = if server.master.is_some() {
                    "master"
                } else {
                    "replicas"
                };
                report.error(
                    d.server_lines[i],
                    format!("pool {name:?}: server {:?}: {key}: {why}", server.name),
                );
            }
        }
        for (key, line) in [
            ("read_policy", d.read_policy_line),
            ("sentinels", d.sentinels_line),
            ("sentinel_auth", d.sentinel_auth_line),
            ("sentinel_user", d.sentinel_user_line),
        ] {
            if let Some(line) = line {
                report.error(line, format!("pool {name:?}: {key}: {why}"));
            }
        }
        return;
    }
    for (i, server) in pool.servers.iter().enumerate() {
        let line = d.server_lines[i];
        match (&server.master, sentinel) {
            (Some(master), false) => report.error(
                line,
                format!(
                    "pool {name:?}: server {:?}: master {master:?}: the pool names no sentinels to ask for it",
                    server.name
                ),
            ),
            (None, true) => report.error(
                line,
                format!(
                    "pool {name:?}: server {:?}: a pool with sentinels names each shard by its master \
                     ({{ master = \"...\", name = \"...\" }}), not by address",
                    server.name
                ),
            ),
            (Some(_), true) if !server.replicas.is_empty() => report.error(
                line,
                format!(
                    "pool {name:?}: server {:?}: replicas: Sentinel tells a master's replicas",
                    server.name
                ),
            ),
            _ => {}
        }
        let mut seen: Vec<SocketAddrV4> = pool
            .servers
            .iter()
            .filter(|s| s.master.is_none())
            .map(|s| s.addr)
            .collect();
        seen.extend(
            pool.servers[..i]
                .iter()
                .flat_map(|s| s.replicas.iter().copied()),
        );
        for (r, replica) in server.replicas.iter().enumerate() {
            if seen.contains(replica) || server.replicas[..r].contains(replica) {
                report.error(
                    line,
                    format!(
                        "pool {name:?}: server {:?}: replica {replica}: already a server or replica of this pool",
                        server.name
                    ),
                );
            }
        }
    }
    if pool.read_policy == ReadPolicy::Replica && !sentinel {
        if let Some(server) = pool.servers.iter().find(|s| s.replicas.is_empty()) {
            report.error(
                d.read_policy_line.unwrap_or(d.line),
                format!(
                    "pool {name:?}: read_policy \"replica\": server {:?} has no replicas, so every read of its keys would fail",
                    server.name
                ),
            );
        }
    }
    if sentinel && pool.servers.is_empty() {
        report.error(
            d.sentinels_line.unwrap_or(d.line),
            format!("pool {name:?}: sentinels: no server names a master"),
        );
    }
    if !sentinel {
        for (key, line) in [
            ("sentinel_auth", d.sentinel_auth_line),
            ("sentinel_user", d.sentinel_user_line),
        ] {
            if let Some(line) = line {
                report.error(
                    line,
                    format!("pool {name:?}: {key}: the pool names no sentinels"),
                );
            }
        }
    } else if let (Some(line), None) = (d.sentinel_user_line, &pool.sentinel_auth) {
        report.error(
            line,
            format!("pool {name:?}: sentinel_user: without sentinel_auth (its password) there is nothing to log in with"),
        );
    }
}

/// Two listeners that would take the same connections: the same address,
/// or the same port where one listens on every address.
fn overlaps(a: SocketAddrV4, b: SocketAddrV4) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
