//! twemproxy-compatible statistics (`ferrox-control --stats-port`): the
//! JSON document nutcracker writes to whoever connects to its stats port,
//! with the same keys in the same nesting, so that the agents and
//! dashboards built for nutcracker read ferrox unchanged.
//!
//! The shape: a few service-wide keys, then one object per pool (keyed by
//! its name), holding the pool's counters and one object per server
//! (keyed by the server's name: the one given in the configuration, else
//! `host:port`, as nutcracker names it). Agents take every object-valued
//! top-level key for a pool, so nothing else may sit at the top.
//!
//! Mapping: ferrox writes a request to its server connection as it
//! arrives instead of queueing it in the proxy, so nutcracker's
//! `in_queue`/`in_queue_bytes` are always 0, `out_queue` is the requests
//! sent and not yet answered, and `out_queue_bytes` is 0 (ferrox does not
//! keep their size).

use std::fmt::Write;

use ferrox_block::{PoolSnapshot, ServerSnapshot, Snapshot};
use ferrox_config::Config;

/// What the document says of the service itself.
#[derive(Debug, Clone)]
pub struct Service<'a> {
    /// The host name (nutcracker's `source`).
    pub source: &'a str,
    pub version: &'a str,
    pub uptime_s: u64,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
    /// Client connections accepted since the dataplane started.
    pub total_connections: u64,
    /// Client and server connections open now.
    pub curr_connections: u64,
}

/// The stats document for `snapshot`, pools and server names from
/// `config` (pools the cores have not published yet show zeroes).
pub fn document(service: &Service<'_>, config: &Config, snapshot: &Snapshot) -> String {
    let pools = snapshot.pools();
    let mut out = String::with_capacity(1024);
    let _ = write!(
        out,
        "{{\"service\":\"nutcracker\", \"source\":{}, \"version\":{}, \"uptime\":{}, \
         \"timestamp\":{}, \"total_connections\":{}, \"curr_connections\":{}",
        json_string(service.source),
        json_string(service.version),
        service.uptime_s,
        service.timestamp,
        service.total_connections,
        service.curr_connections,
    );
    for pool in &config.pools {
        let figures = pools.iter().find(|p| p.name == pool.name);
        let empty = PoolSnapshot::default();
        let p = figures.unwrap_or(&empty);
        let _ = write!(
            out,
            ", {}: {{\"client_eof\":{}, \"client_err\":{}, \"client_connections\":{}, \
             \"server_ejects\":{}, \"forward_error\":{}, \"fragments\":{}",
            json_string(&pool.name),
            p.client_eof,
            p.client_err,
            p.sessions,
            p.server_ejects,
            p.forward_errors,
            p.fragments,
        );
        for server in &pool.servers {
            let s = p.servers.iter().find(|s| s.addr == server.addr);
            let _ = write!(out, ", {}: ", json_string(&server.name));
            server_object(&mut out, s);
        }
        out.push('}');
    }
    out.push('}');
    out
}

fn server_object(out: &mut String, s: Option<&ServerSnapshot>) {
    let n = |f: fn(&ServerSnapshot) -> u64| s.map_or(0, f);
    let _ = write!(
        out,
        "{{\"server_eof\":{}, \"server_err\":{}, \"server_timedout\":{}, \
         \"server_connections\":{}, \"server_ejected_at\":{}, \"requests\":{}, \
         \"request_bytes\":{}, \"responses\":{}, \"response_bytes\":{}, \
         \"in_queue\":0, \"in_queue_bytes\":0, \"out_queue\":{}, \"out_queue_bytes\":0}}",
        n(|s| s.eofs),
        n(|s| s.failures),
        n(|s| s.timeouts),
        n(|s| s.connections),
        n(|s| s.ejected_at_us),
        n(|s| s.requests),
        n(|s| s.request_bytes),
        n(|s| s.responses),
        n(|s| s.response_bytes),
        n(|s| s.in_flight),
    );
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrox_block::CoreSnapshot;

    const CONFIG: &str = r#"
[pools.alpha]
listen = "0.0.0.0:22121"
protocol = "redis"
servers = ["10.0.0.1:7001:1 one", "10.0.0.1:7002:1"]

[pools.beta]
listen = "0.0.0.0:22122"
protocol = "memcache"
servers = ["10.0.0.2:11211:1"]
"#;

    fn server(addr: &str, requests: u64) -> ServerSnapshot {
        ServerSnapshot {
            addr: addr.parse().unwrap(),
            requests,
            request_bytes: requests * 30,
            responses: requests,
            response_bytes: requests * 5,
            failures: 1,
            timeouts: 2,
            eofs: 3,
            connections: 1,
            in_flight: 4,
            ejected: false,
            ejected_at_us: 1_700_000_000_000_000,
        }
    }

    fn core(requests: u64) -> CoreSnapshot {
        CoreSnapshot {
            heartbeat: 1,
            counters: [0; ferrox_block::COUNTERS],
            commands: vec![0; ferrox_block::COMMANDS],
            pools: vec![PoolSnapshot {
                name: "alpha".into(),
                sessions: 2,
                client_eof: 5,
                client_err: 1,
                forward_errors: 7,
                fragments: 8,
                server_ejects: 1,
                servers: vec![server("10.0.0.1:7001", requests)],
                ..PoolSnapshot::default()
            }],
        }
    }

    fn service() -> Service<'static> {
        Service {
            source: "host\"1",
            version: "0.1.0",
            uptime_s: 12,
            timestamp: 1_800_000_000,
            total_connections: 9,
            curr_connections: 4,
        }
    }

    #[test]
    fn the_document_has_nutcrackers_shape_and_every_cores_figures() {
        let config = ferrox_config::parse(CONFIG, "t.toml").unwrap();
        let snapshot = Snapshot {
            cores: vec![core(10), core(20)],
        };
        let text = document(&service(), &config, &snapshot);
        let doc: serde_json::Value = serde_json::from_str(&text).expect(&text);
        let top: Vec<&str> = doc
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            top,
            [
                "alpha",
                "beta",
                "curr_connections",
                "service",
                "source",
                "timestamp",
                "total_connections",
                "uptime",
                "version"
            ]
        );
        assert_eq!(doc["service"], "nutcracker");
        assert_eq!(doc["source"], "host\"1");
        let alpha = &doc["alpha"];
        assert_eq!(alpha["client_connections"], 4);
        assert_eq!(alpha["client_eof"], 10);
        assert_eq!(alpha["forward_error"], 14);
        assert_eq!(alpha["fragments"], 16);
        // A named server is keyed by its name, the others by host:port.
        let one = &alpha["one"];
        assert_eq!(one["requests"], 30);
        assert_eq!(one["request_bytes"], 900);
        assert_eq!(one["responses"], 30);
        assert_eq!(one["server_err"], 2);
        assert_eq!(one["server_timedout"], 4);
        assert_eq!(one["server_eof"], 6);
        assert_eq!(one["out_queue"], 8);
        assert_eq!(one["server_ejected_at"], 1_700_000_000_000_000u64);
        // Published by no core yet: zeroes, with every key.
        let two = &alpha["10.0.0.1:7002"];
        assert_eq!(two["requests"], 0);
        assert_eq!(
            two.as_object().unwrap().len(),
            one.as_object().unwrap().len()
        );
        assert_eq!(doc["beta"]["10.0.0.2"]["requests"], 0);
    }
}
