//! twemproxy's `nutcracker.yml`, read as twemproxy reads it.
//!
//! Every pool key of twemproxy's `conf_commands` (`nc_conf.c`) is mapped
//! onto [`Pool`](super::Pool) with twemproxy's syntax and defaults, or
//! refused with a reason:
//!
//! - numbers are plain digits (`nc_atoi`); booleans are exactly `true` or
//!   `false` (`conf_set_bool`); a key given twice, an empty value, weight
//!   0, `server_connections: 0`, `redis_auth` on a memcache pool and two
//!   servers with the same name are errors, as in twemproxy;
//! - `timeout: 0` waits forever, as in twemproxy (`msg_tmo_insert` skips
//!   timeouts that are not positive);
//! - `listen` and `servers` take IPv4 addresses only: the dataplane has no
//!   unix sockets and no resolver;
//! - `redis_db` on a memcache pool is refused (twemproxy ignores it);
//! - `client_connections` is enforced (twemproxy reads it, then resets it
//!   to 0 in `conf_validate_pool`);
//! - `tcpkeepalive` turns on keep-alive for client connections, as in
//!   twemproxy (`proxy_accept`);
//! - `reuseport` is checked and has no effect: every dataplane core already
//!   serves every listening address;
//! - `distribution: jump` is accepted, a ferrox addition.
//!
//! ferrox-only settings (limits, blocked commands) keep their defaults.

use super::check::{self, Draft, Report};
use super::model::{Config, Limits, Protocol};
use super::yaml::{self, Mapping, Value};
use super::ConfigError;

/// twemproxy's pool keys, in `conf_commands` order.
const KEYS: &[&str] = &[
    "listen",
    "hash",
    "hash_tag",
    "distribution",
    "timeout",
    "backlog",
    "client_connections",
    "redis",
    "tcpkeepalive",
    "reuseport",
    "redis_auth",
    "redis_db",
    "preconnect",
    "auto_eject_hosts",
    "server_connections",
    "server_retry_timeout",
    "server_failure_limit",
    "servers",
];

/// Reads a twemproxy configuration; `file` names it in diagnostics.
///
/// Syntax is checked before meaning: when lines cannot be read, only those
/// are reported, so that a misread line does not also show up as, say, a
/// missing `listen`.
pub fn parse_nutcracker(text: &str, file: &str) -> Result<Config, ConfigError> {
    let mut report = Report::new(file);
    let Some(mappings) = yaml::read(text, &mut report) else {
        return report.finish(Config {
            users: Vec::new(),
            overload: Default::default(),
            pools: Vec::new(),
            limits: Limits::default(),
        });
    };
    if mappings.is_empty() {
        report.error(1, "no pools: the file defines nothing to proxy");
    }
    let drafts = mappings.iter().map(|m| pool(m, &mut report)).collect();
    let pools = check::finish(drafts, ("redis_auth", "redis_db"), &mut report);
    report.finish(Config {
        users: Vec::new(),
        overload: Default::default(),
        pools,
        limits: Limits::default(),
    })
}

fn pool(mapping: &Mapping, report: &mut Report) -> Draft {
    let name = &mapping.name;
    let mut draft = Draft::new(name, mapping.line, Protocol::Memcache);
    for entry in &mapping.entries {
        let key = entry.key.as_str();
        let line = entry.line;
        let mut fail =
            |reason: String| report.error(line, format!("pool {name:?}: {key}: {reason}"));
        if key == "servers" {
            draft.servers_line = Some(line);
            match &entry.value {
                Value::List(items) => {
                    for (spec, line) in items {
                        let server = check::server(spec, true)
                            .map_err(|reason| {
                                report.error(
                                    *line,
                                    format!("pool {name:?}: server {spec:?}: {reason}"),
                                )
                            })
                            .ok();
                        draft.add_server(server, *line);
                    }
                }
                Value::Scalar(_) => {
                    draft.server_entries += 1;
                    fail("a list: put each server on its own \"- address:port:weight\" line".into())
                }
            }
            continue;
        }
        if !KEYS.contains(&key) {
            fail(unknown(key));
            continue;
        }
        let value = match &entry.value {
            Value::Scalar(v) if !v.is_empty() => v.as_str(),
            Value::List(items) if !items.is_empty() => {
                fail("takes one value, not a list".into());
                continue;
            }
            _ => {
                fail("has no value".into());
                continue;
            }
        };
        let pool = &mut draft.pool;
        let result = match key {
            "listen" => {
                draft.listen_line = Some(line);
                check::listen(value).map(|a| {
                    pool.listen = a;
                    draft.listen_ok = true;
                })
            }
            "hash" => check::hash(value).map(|h| pool.hash = h),
            "hash_tag" => check::hash_tag(value).map(|t| pool.hash_tag = Some(t)),
            "distribution" => check::distribution(value).map(|d| {
                pool.distribution = d;
                draft.distribution_line = Some(line);
            }),
            "timeout" => number(value).map(|t| pool.timeout_ms = (t > 0).then_some(t)),
            "backlog" => number(value).map(|n| pool.backlog = n),
            "client_connections" => number(value).map(|n| pool.client_connections = n),
            "redis" => boolean(value)
                .inspect_err(|_| draft.protocol_ok = false)
                .map(|redis| {
                    pool.protocol = if redis {
                        Protocol::Redis
                    } else {
                        Protocol::Memcache
                    }
                }),
            "tcpkeepalive" => boolean(value).map(|b| pool.tcp_keepalive = b),
            "reuseport" => boolean(value).map(drop),
            "redis_auth" => check::auth(value).map(|a| {
                pool.auth = Some(a);
                draft.auth_line = Some(line);
            }),
            "redis_db" => number(value).map(|n| {
                pool.db = n;
                draft.db_line = Some(line);
            }),
            "preconnect" => boolean(value).map(|b| pool.preconnect = b),
            "auto_eject_hosts" => boolean(value).map(|b| {
                pool.auto_eject_hosts = b;
                draft.eject_line = Some(line);
            }),
            "server_connections" => match number(value) {
                Ok(0) => Err("cannot be 0".into()),
                n => n.map(|n| pool.server_connections = n),
            },
            "server_retry_timeout" => number(value).map(|n| pool.server_retry_timeout_ms = n),
            "server_failure_limit" => number(value).map(|n| pool.server_failure_limit = n),
            _ => Err(unknown(key)),
        };
        if let Err(reason) = result {
            let shown = if key == "redis_auth" {
                String::new()
            } else {
                format!(" {value:?}")
            };
            report.error(line, format!("pool {name:?}: {key}{shown}: {reason}"));
        }
    }
    draft
}

fn unknown(key: &str) -> String {
    if key.starts_with("stats") {
        "not a pool key: the stats server is set on nutcracker's command line (-s, -a, -i)".into()
    } else {
        format!("unknown key{}", check::did_you_mean(key, KEYS))
    }
}

/// A number as `nc_atoi` reads it: digits only.
fn number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a number (digits only)".into());
    }
    text.parse().map_err(|_| "too large".into())
}

fn boolean(text: &str) -> Result<bool, String> {
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}
