//! The admin protocol: JSON lines over the control process's Unix socket.
//!
//! Each request is one line, a JSON object with the protocol version `v`
//! and a command `cmd` with its arguments; each answer is one line:
//!
//! ```text
//! → {"v":1,"cmd":"server.add","pool":"cache","server":"198.18.0.1:7003:1"}
//! ← {"v":1,"ok":true,"result":{"version":4}}
//! → {"v":1,"cmd":"server.weight","pool":"cache","addr":"10.0.0.9:1","weight":0}
//! ← {"v":1,"ok":false,"error":"pool \"cache\" has no server 10.0.0.9:1"}
//! ```
//!
//! A request of another version, an unknown command, a missing or unknown
//! argument, or a line over [`MAX_LINE`] bytes gets `ok: false` with the
//! reason, and changes nothing. `docs/admin-api.md` lists every command.

use serde::{Deserialize, Serialize};

/// The version of this protocol; a request carrying another is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line (a configuration text rides in `config.validate`).
pub const MAX_LINE: usize = 1 << 20;

/// One admin request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", deny_unknown_fields)]
pub enum Request {
    /// The appliance at a glance: dataplane, configuration versions, health.
    #[serde(rename = "status")]
    Status {},
    /// Counters, rates and latency per pool, server and core.
    #[serde(rename = "stats")]
    Stats {},
    /// The running configuration, as ferrox TOML.
    #[serde(rename = "config.show")]
    ConfigShow {},
    /// Checks a configuration as a reload would, changing nothing.
    #[serde(rename = "config.validate")]
    ConfigValidate { text: String, file: String },
    /// Reads the configuration file again (or `path`, which then becomes
    /// the configuration file) and swaps it in.
    #[serde(rename = "config.reload")]
    ConfigReload {
        #[serde(default)]
        path: Option<String>,
    },
    /// Adds a server, written as in the configuration
    /// (`ip:port:weight [name]`).
    #[serde(rename = "server.add")]
    ServerAdd { pool: String, server: String },
    #[serde(rename = "server.remove")]
    ServerRemove { pool: String, addr: String },
    #[serde(rename = "server.weight")]
    ServerWeight {
        pool: String,
        addr: String,
        weight: u32,
    },
    /// Holds a server out of its pool until `server.restore`.
    #[serde(rename = "server.eject")]
    ServerEject { pool: String, addr: String },
    #[serde(rename = "server.restore")]
    ServerRestore { pool: String, addr: String },
    /// Hot handover to another dataplane binary: every client connection
    /// stays open. Answered once the new dataplane serves, or the upgrade
    /// was refused or rolled back.
    #[serde(rename = "upgrade")]
    Upgrade {
        binary: String,
        /// The longest each step may take (standby, handing over, taking
        /// over); default 10 000.
        #[serde(default)]
        timeout_ms: Option<u64>,
        /// How long the running dataplane lets requests in flight finish
        /// before it freezes; default: its `--drain-ms` (500).
        #[serde(default)]
        drain_ms: Option<u64>,
    },
    /// Refuses a command in one pool, or in every pool.
    #[serde(rename = "block")]
    Block {
        #[serde(default)]
        pool: Option<String>,
        command: String,
    },
    #[serde(rename = "unblock")]
    Unblock {
        #[serde(default)]
        pool: Option<String>,
        command: String,
    },
    /// Adds a user, or replaces one of that name: its passwords, pools
    /// (empty: every redis pool) and ACL rules.
    #[serde(rename = "user.set")]
    UserSet {
        name: String,
        passwords: Vec<String>,
        #[serde(default)]
        pools: Vec<String>,
        #[serde(default)]
        acl: String,
    },
    #[serde(rename = "user.remove")]
    UserRemove { name: String },
    /// The shared region and the socket buffer pool.
    #[serde(rename = "shm.show")]
    ShmShow {},
    /// Grows the socket buffer pool by `add_mb` MiB of client buffers.
    #[serde(rename = "shm.resize")]
    ShmResize { add_mb: u64 },
    /// Sets the log filter of the control process and of every dataplane
    /// (`RUST_LOG`'s syntax: `info`, `debug`, `warn,ferrox_dataplane=debug`).
    #[serde(rename = "log.level")]
    LogLevel { level: String },
    /// Test hook: makes core `core` wedge itself (spin, ignore its stop
    /// flag, publish nothing), as a livelocked core would. Refused unless
    /// the dataplane runs with `--test-hooks`.
    #[serde(rename = "debug.stall_core")]
    DebugStallCore { core: usize },
}

/// Why a request line was refused before it reached the control process.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("request of {0} bytes; at most {MAX_LINE}")]
    TooLong(usize),
    #[error("not a JSON object: {0}")]
    Json(String),
    #[error("protocol version {found:?} is not spoken here (this is version {PROTOCOL_VERSION}); give \"v\":{PROTOCOL_VERSION}")]
    Version { found: Option<u64> },
    #[error("{0}")]
    Request(String),
}

/// Reads one request line.
pub fn parse_request(line: &str) -> Result<Request, AdminError> {
    if line.len() > MAX_LINE {
        return Err(AdminError::TooLong(line.len()));
    }
    let mut value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| AdminError::Json(e.to_string()))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| AdminError::Json("expected an object".into()))?;
    let version = object.remove("v");
    let found = version.as_ref().and_then(serde_json::Value::as_u64);
    if found != Some(PROTOCOL_VERSION as u64) {
        return Err(AdminError::Version { found });
    }
    serde_json::from_value(value).map_err(|e| AdminError::Request(e.to_string()))
}

/// The line that carries `request`.
pub fn request_line(request: &Request) -> String {
    let mut value = serde_json::to_value(request).expect("requests serialize");
    value["v"] = PROTOCOL_VERSION.into();
    value.to_string()
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With an error: whether the request was refused (nothing changed)
    /// or carried out and failed. Absent from older control processes:
    /// read as refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
}

/// What an error answer means for the state of the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// Refused before anything changed (a bad change, a binary that failed
    /// its preflight, an unknown pool).
    Refused,
    /// Carried out and failed (an upgrade rolled back).
    Failed,
}

impl Response {
    pub fn ok(result: impl Serialize) -> Response {
        Response {
            v: PROTOCOL_VERSION,
            ok: true,
            result: Some(serde_json::to_value(result).expect("results serialize")),
            error: None,
            kind: None,
        }
    }

    /// A refusal: nothing changed.
    pub fn error(error: impl std::fmt::Display) -> Response {
        Response::error_of(ErrorKind::Refused, error)
    }

    pub fn error_of(kind: ErrorKind, error: impl std::fmt::Display) -> Response {
        Response {
            v: PROTOCOL_VERSION,
            ok: false,
            result: None,
            error: Some(error.to_string()),
            kind: Some(kind),
        }
    }

    pub fn line(&self) -> String {
        serde_json::to_string(self).expect("responses serialize")
    }
}

/// The result of `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub control_pid: u32,
    pub uptime_s: u64,
    pub config_file: String,
    /// The newest published configuration.
    pub config_version: u64,
    /// The configuration each dataplane core runs.
    pub applied: Vec<u64>,
    pub dataplane: Dataplane,
    pub pools: Vec<PoolHealth>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataplane {
    /// `None` while it is (re)starting.
    pub pid: Option<u32>,
    pub cores: usize,
    /// Times it was started again after it exited or was killed.
    pub restarts: u64,
    /// Times it was killed because a core's heartbeat stood still.
    #[serde(default)]
    pub stalls: u64,
    /// The binary it runs, and how many hot handovers brought it there.
    #[serde(default)]
    pub binary: String,
    #[serde(default)]
    pub generation: u64,
    /// The step of a hot upgrade under way: "preflight", "standby",
    /// "handing over" or "taking over"; absent when none runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<String>,
    /// The port holder's pid, where a process of its own holds the port
    /// (tap, PCI) and dataplanes attach to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_holder_pid: Option<u32>,
    /// Times the port holder was started again after it exited.
    #[serde(default)]
    pub port_holder_restarts: u64,
    /// Whether it runs and every core published since it started, within
    /// the last second.
    pub alive: bool,
    /// Per core, milliseconds since its heartbeat last moved (or since the
    /// dataplane started).
    #[serde(default)]
    pub heartbeat_age_ms: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolHealth {
    pub name: String,
    pub listen: String,
    pub protocol: String,
    pub servers: Vec<ServerHealth>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHealth {
    pub addr: String,
    pub name: String,
    pub weight: u32,
    /// "up", "down" (failing checks, still in the pool), "ejected"
    /// (failing checks, out of the pool) or "held" (an operator's eject).
    pub state: String,
    /// Health checks failed in a row.
    pub failures: u32,
    pub ejections: u64,
}

/// The result of `stats`: totals since the dataplane started, and rates
/// over the control process's last sampling second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub pools: Vec<PoolStats>,
    /// Commands that were asked for, most requested first.
    pub commands: Vec<CommandStats>,
    pub cores: Vec<CoreStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandStats {
    /// "redis" or "memcache".
    pub protocol: String,
    pub command: String,
    pub requests: u64,
    pub requests_per_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolStats {
    pub name: String,
    pub requests: u64,
    pub requests_per_s: f64,
    pub errors: u64,
    pub errors_per_s: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connections: u64,
    /// Latency quantiles in microseconds (upper bounds of power-of-two
    /// buckets); `None` before the first request.
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p999_us: Option<u64>,
    /// Client connections that ended cleanly (FIN, QUIT), and otherwise
    /// (reset, protocol error).
    #[serde(default)]
    pub client_eof: u64,
    #[serde(default)]
    pub client_err: u64,
    /// Requests answered with an error because no server could take them.
    #[serde(default)]
    pub forward_errors: u64,
    /// Pieces of split multi-key requests.
    #[serde(default)]
    pub fragments: u64,
    #[serde(default)]
    pub server_ejects: u64,
    /// Requests refused by a user's permissions, and by validation rules.
    #[serde(default)]
    pub acl_refused: u64,
    #[serde(default)]
    pub validation_refused: u64,
    /// Requests refused by a rate limit.
    #[serde(default)]
    pub rate_limited: u64,
    /// Requests refused because a core was overloaded.
    #[serde(default)]
    pub overload_refused: u64,
    /// Reads sent again after their replica failed.
    #[serde(default)]
    pub replica_retries: u64,
    /// Compression and hot-key cache counters, by name (see
    /// `ferrox_block::FEATURES`); only those of features in use.
    #[serde(default)]
    pub features: std::collections::BTreeMap<String, u64>,
    /// Bytes after compression per byte before, for values stored
    /// compressed.
    #[serde(default)]
    pub compression_ratio: Option<f64>,
    /// The hot-key cache's hits per read of a hot key.
    #[serde(default)]
    pub cache_hit_ratio: Option<f64>,
    /// Each core's hottest keys, hottest first.
    #[serde(default)]
    pub hot_keys: Vec<HotKeyStats>,
    pub servers: Vec<ServerStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HotKeyStats {
    pub core: usize,
    /// The key, lossily as text (cut at 64 bytes).
    pub key: String,
    /// Reads per second on that core.
    pub rate: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStats {
    pub addr: String,
    pub requests: u64,
    pub requests_per_s: f64,
    #[serde(default)]
    pub request_bytes: u64,
    #[serde(default)]
    pub responses: u64,
    #[serde(default)]
    pub response_bytes: u64,
    pub failures: u64,
    #[serde(default)]
    pub timeouts: u64,
    /// Connections the server closed.
    #[serde(default)]
    pub eofs: u64,
    /// Connections open to it now, and requests awaiting its reply.
    #[serde(default)]
    pub connections: u64,
    #[serde(default)]
    pub in_flight: u64,
    pub ejected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreStats {
    pub core: usize,
    /// Counter name → value (frames, accepted, requests, errors, ...).
    pub counters: Vec<(String, u64)>,
}

/// The result of `shm.show` and `shm.resize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shm {
    pub region: String,
    pub segments: usize,
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub hugepages: bool,
    pub classes: Vec<ShmClass>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShmClass {
    /// "client" or "server" socket buffers.
    pub role: String,
    pub chunk_size: u32,
    pub total: u64,
    pub in_use: u64,
    pub free: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_their_line() {
        for request in [
            Request::Status {},
            Request::ConfigReload { path: None },
            Request::ServerAdd {
                pool: "cache".into(),
                server: "10.0.0.1:7001:2 alpha".into(),
            },
            Request::Block {
                pool: None,
                command: "KEYS".into(),
            },
            Request::ShmResize { add_mb: 64 },
            Request::UserSet {
                name: "app".into(),
                passwords: vec!["a".into(), "b".into()],
                pools: vec!["cache".into()],
                acl: "+@read ~app:*".into(),
            },
            Request::UserRemove { name: "app".into() },
            Request::LogLevel {
                level: "debug".into(),
            },
            Request::DebugStallCore { core: 1 },
        ] {
            assert_eq!(parse_request(&request_line(&request)), Ok(request));
        }
        assert_eq!(
            parse_request(r#"{"v":1,"cmd":"server.weight","pool":"p","addr":"a","weight":3}"#),
            Ok(Request::ServerWeight {
                pool: "p".into(),
                addr: "a".into(),
                weight: 3
            })
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let error = |line: &str| parse_request(line).unwrap_err().to_string();
        assert!(error("status").contains("not a JSON object"));
        assert!(error("[1]").contains("expected an object"));
        assert!(error(r#"{"cmd":"status"}"#).contains("give \"v\":1"));
        assert!(error(r#"{"v":2,"cmd":"status"}"#).contains("version Some(2)"));
        assert!(error(r#"{"v":1,"cmd":"reboot"}"#).contains("unknown variant `reboot`"));
        assert!(
            error(r#"{"v":1,"cmd":"server.add","pool":"p"}"#).contains("missing field `server`")
        );
        assert!(error(r#"{"v":1,"cmd":"status","force":true}"#).contains("unknown field `force`"));
        assert!(error(r#"{"v":1,"cmd":"shm.resize","add_mb":-1}"#).contains("invalid value"));
        let long = format!(
            r#"{{"v":1,"cmd":"config.validate","file":"x","text":"{}"}}"#,
            "a".repeat(MAX_LINE)
        );
        assert!(matches!(parse_request(&long), Err(AdminError::TooLong(_))));
    }

    proptest::proptest! {
        #[test]
        fn any_line_is_parsed_or_refused_without_panicking(line in ".{0,200}") {
            let _ = parse_request(&line);
        }

        #[test]
        fn any_json_object_is_parsed_or_refused(
            keys in proptest::collection::vec(
                proptest::sample::select(vec!["v", "cmd", "pool", "addr", "server", "weight", "command", "add_mb", "path", "text", "file"]),
                0..6),
            values in proptest::collection::vec(
                proptest::sample::select(vec!["1", "2", "\"status\"", "\"server.add\"", "\"x\"", "null", "-1", "[]", "{}", "1e9"]),
                6),
        ) {
            let fields: Vec<String> = keys.iter().zip(&values).map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let _ = parse_request(&format!("{{{}}}", fields.join(",")));
        }
    }
}
