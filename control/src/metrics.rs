//! Statistics as the control process shows them: the cores' records in
//! the control block added up per pool and server, rates over the last
//! sampling interval, and the Prometheus text format.

use std::fmt::Write;

use ferrox_block::{Counter, PoolSnapshot, ServerSnapshot, Snapshot, LATENCY_BUCKETS};

use ferrox_engine::command::CommandId;

use crate::admin::{CommandStats, CoreStats, HotKeyStats, PoolStats, ServerStats, Shm, Stats};

/// Hot keys exported per pool and core.
const HOT_KEYS_EXPORTED: usize = 4;

/// Two snapshots `seconds` apart make the rates.
#[derive(Debug, Clone)]
pub struct Sample {
    pub previous: Snapshot,
    pub current: Snapshot,
    pub seconds: f64,
}

fn rate(now: u64, before: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    // A restarted dataplane starts its counters again.
    now.saturating_sub(before) as f64 / seconds
}

/// The `stats` answer from a sample.
pub fn stats(sample: &Sample) -> Stats {
    let before = sample.previous.pools();
    let pools = sample
        .current
        .pools()
        .into_iter()
        .map(|pool| {
            let old = before.iter().find(|p| p.name == pool.name);
            pool_stats(&pool, old, sample.seconds)
        })
        .collect();
    let cores = sample
        .current
        .cores
        .iter()
        .enumerate()
        .map(|(core, c)| CoreStats {
            core,
            counters: Counter::ALL
                .iter()
                .map(|&counter| (counter.name().to_string(), c.counters[counter as usize]))
                .collect(),
        })
        .collect();
    let before = sample.previous.commands();
    let mut commands: Vec<CommandStats> = sample
        .current
        .commands()
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .filter_map(|(id, &n)| {
            let (protocol, command) = CommandId::describe(id)?;
            Some(CommandStats {
                protocol: protocol.into(),
                command: command.into(),
                requests: n,
                requests_per_s: rate(n, before[id], sample.seconds),
            })
        })
        .collect();
    commands.sort_by_key(|c| std::cmp::Reverse(c.requests));
    Stats {
        pools,
        commands,
        cores,
    }
}

fn pool_stats(pool: &PoolSnapshot, old: Option<&PoolSnapshot>, seconds: f64) -> PoolStats {
    PoolStats {
        name: pool.name.clone(),
        requests: pool.requests,
        requests_per_s: rate(pool.requests, old.map_or(0, |o| o.requests), seconds),
        errors: pool.errors,
        errors_per_s: rate(pool.errors, old.map_or(0, |o| o.errors), seconds),
        bytes_in: pool.bytes_in,
        bytes_out: pool.bytes_out,
        connections: pool.sessions,
        p50_us: pool.latency_quantile(0.5),
        p99_us: pool.latency_quantile(0.99),
        p999_us: pool.latency_quantile(0.999),
        client_eof: pool.client_eof,
        client_err: pool.client_err,
        forward_errors: pool.forward_errors,
        fragments: pool.fragments,
        server_ejects: pool.server_ejects,
        acl_refused: pool.acl_refused,
        validation_refused: pool.validation_refused,
        rate_limited: pool.rate_limited,
        overload_refused: pool.overload_refused,
        replica_retries: pool.replica_retries,
        features: ferrox_block::FEATURES
            .iter()
            .zip(pool.features)
            .filter(|&(_, n)| n > 0)
            .map(|(f, n)| (f.name.to_owned(), n))
            .collect(),
        compression_ratio: {
            let feature = |name| pool.features[ferrox_block::feature(name)];
            let before = feature("compressed_bytes_in");
            (before > 0).then(|| feature("compressed_bytes_out") as f64 / before as f64)
        },
        cache_hit_ratio: {
            let feature = |name| pool.features[ferrox_block::feature(name)];
            let reads = feature("cache_hits") + feature("cache_misses");
            (reads > 0).then(|| feature("cache_hits") as f64 / reads as f64)
        },
        hot_keys: {
            let mut keys: Vec<_> = pool
                .hot_keys
                .iter()
                .map(|h| HotKeyStats {
                    core: h.core,
                    key: String::from_utf8_lossy(&h.key).into_owned(),
                    rate: h.rate,
                })
                .collect();
            keys.sort_by_key(|h| std::cmp::Reverse(h.rate));
            keys
        },
        servers: pool
            .servers
            .iter()
            .map(|s| {
                let before = old
                    .and_then(|o| o.servers.iter().find(|b| b.addr == s.addr))
                    .map_or(0, |b| b.requests);
                ServerStats {
                    addr: s.addr.to_string(),
                    requests: s.requests,
                    requests_per_s: rate(s.requests, before, seconds),
                    request_bytes: s.request_bytes,
                    responses: s.responses,
                    response_bytes: s.response_bytes,
                    failures: s.failures,
                    timeouts: s.timeouts,
                    eofs: s.eofs,
                    connections: s.connections,
                    in_flight: s.in_flight,
                    ejected: s.ejected,
                }
            })
            .collect(),
    }
}

/// What the supervisor knows of the dataplane process.
#[derive(Debug, Clone, Default)]
pub struct Supervision {
    /// Times it was started again.
    pub restarts: u64,
    /// Times it was killed for a stuck core.
    pub stalls: u64,
    /// Per core, since its heartbeat last moved.
    pub heartbeat_age: Vec<std::time::Duration>,
    /// The dataplane serves: it runs, every core beats and runs the
    /// newest configuration.
    pub up: bool,
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Everything as Prometheus text (version 0.0.4).
pub fn prometheus(
    snapshot: &Snapshot,
    config_version: u64,
    shm: Option<&Shm>,
    supervision: &Supervision,
) -> String {
    let mut out = String::new();
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        &mut out,
        "ferrox_build_info",
        "gauge",
        "The running ferrox-control's version (always 1).",
    );
    let _ = writeln!(
        out,
        "ferrox_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    family(
        &mut out,
        "ferrox_dataplane_up",
        "gauge",
        "1 while the dataplane runs, every core beats and runs the newest configuration.",
    );
    let _ = writeln!(out, "ferrox_dataplane_up {}", u8::from(supervision.up));
    family(
        &mut out,
        "ferrox_config_version",
        "gauge",
        "The newest published configuration version.",
    );
    let _ = writeln!(out, "ferrox_config_version {config_version}");
    family(
        &mut out,
        "ferrox_dataplane_restarts_total",
        "counter",
        "Times the dataplane was started again after it exited or was killed.",
    );
    let _ = writeln!(
        out,
        "ferrox_dataplane_restarts_total {}",
        supervision.restarts
    );
    family(
        &mut out,
        "ferrox_core_stalls_total",
        "counter",
        "Times the dataplane was killed because a core's heartbeat stood still.",
    );
    let _ = writeln!(out, "ferrox_core_stalls_total {}", supervision.stalls);
    family(
        &mut out,
        "ferrox_core_heartbeat_age_seconds",
        "gauge",
        "Since the core's heartbeat last moved (or the dataplane started).",
    );
    for (core, age) in supervision.heartbeat_age.iter().enumerate() {
        let _ = writeln!(
            out,
            "ferrox_core_heartbeat_age_seconds{{core=\"{core}\"}} {:.3}",
            age.as_secs_f64()
        );
    }

    // Every counter counts up, but for the gauges.
    const GAUGES: [(Counter, &str); 4] = [
        (Counter::Open, "ferrox_core_open_connections"),
        (Counter::InFlight, "ferrox_core_requests_in_flight"),
        (Counter::ClientBuffered, "ferrox_core_client_buffered_bytes"),
        (
            Counter::SocketBufferBytes,
            "ferrox_core_socket_buffer_bytes",
        ),
    ];
    for counter in Counter::ALL
        .into_iter()
        .filter(|c| !GAUGES.iter().any(|(g, _)| g == c))
    {
        let name = format!("ferrox_core_{}_total", counter.name());
        family(&mut out, &name, "counter", counter.help());
        for (core, c) in snapshot.cores.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{core=\"{core}\"}} {}",
                c.counters[counter as usize]
            );
        }
    }
    for (counter, name) in GAUGES {
        family(&mut out, name, "gauge", counter.help());
        for (core, c) in snapshot.cores.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{core=\"{core}\"}} {}",
                c.counters[counter as usize]
            );
        }
    }

    let pools = snapshot.pools();
    type PoolFigure = (
        &'static str,
        &'static str,
        &'static str,
        fn(&PoolSnapshot) -> u64,
    );
    let per_pool: &[PoolFigure] = &[
        ("ferrox_pool_requests_total", "counter", "Requests.", |p| {
            p.requests
        }),
        (
            "ferrox_pool_errors_total",
            "counter",
            "Requests answered with an error.",
            |p| p.errors,
        ),
        (
            "ferrox_pool_bytes_in_total",
            "counter",
            "Request bytes read from clients.",
            |p| p.bytes_in,
        ),
        (
            "ferrox_pool_bytes_out_total",
            "counter",
            "Reply bytes written to clients.",
            |p| p.bytes_out,
        ),
        (
            "ferrox_pool_connections",
            "gauge",
            "Client connections open.",
            |p| p.sessions,
        ),
        (
            "ferrox_pool_client_eof_total",
            "counter",
            "Client connections that ended cleanly (FIN or QUIT).",
            |p| p.client_eof,
        ),
        (
            "ferrox_pool_client_errors_total",
            "counter",
            "Client connections reset, or closed after a protocol error.",
            |p| p.client_err,
        ),
        (
            "ferrox_pool_forward_errors_total",
            "counter",
            "Requests answered with an error because no server could take them.",
            |p| p.forward_errors,
        ),
        (
            "ferrox_pool_fragments_total",
            "counter",
            "Pieces that multi-key requests were split into.",
            |p| p.fragments,
        ),
        (
            "ferrox_pool_server_ejections_total",
            "counter",
            "Servers ejected after reaching the failure limit.",
            |p| p.server_ejects,
        ),
        (
            "ferrox_pool_acl_refused_total",
            "counter",
            "Requests refused by a user's permissions (NOPERM).",
            |p| p.acl_refused,
        ),
        (
            "ferrox_pool_validation_refused_total",
            "counter",
            "Requests refused by the pool's validation rules.",
            |p| p.validation_refused,
        ),
        (
            "ferrox_pool_rate_limited_total",
            "counter",
            "Requests refused by a rate limit.",
            |p| p.rate_limited,
        ),
        (
            "ferrox_pool_overload_refused_total",
            "counter",
            "Requests refused because a dataplane core was past an overload watermark.",
            |p| p.overload_refused,
        ),
        (
            "ferrox_pool_replica_retries_total",
            "counter",
            "Reads a failed replica held, sent again to another server of their shard.",
            |p| p.replica_retries,
        ),
    ];
    for (name, kind, help, value) in per_pool {
        family(&mut out, name, kind, help);
        for pool in &pools {
            let _ = writeln!(
                out,
                "{name}{{pool=\"{}\"}} {}",
                label(&pool.name),
                value(pool)
            );
        }
    }
    for (i, feature) in ferrox_block::FEATURES.iter().enumerate() {
        // Only the families of features some pool uses.
        if pools.iter().all(|p| p.features[i] == 0) {
            continue;
        }
        let (name, kind) = if feature.gauge {
            (format!("ferrox_pool_{}", feature.name), "gauge")
        } else {
            (format!("ferrox_pool_{}_total", feature.name), "counter")
        };
        family(&mut out, &name, kind, feature.help);
        for pool in &pools {
            let _ = writeln!(
                out,
                "{name}{{pool=\"{}\"}} {}",
                label(&pool.name),
                pool.features[i]
            );
        }
    }
    // The hottest few keys, per core.
    let hot: Vec<_> = pools
        .iter()
        .flat_map(|p| {
            p.hot_keys
                .iter()
                .take(HOT_KEYS_EXPORTED)
                .map(move |h| (p, h))
        })
        .collect();
    if !hot.is_empty() {
        let name = "ferrox_pool_hot_key_reads_per_second";
        family(
            &mut out,
            name,
            "gauge",
            "Reads per second of the hottest keys, per dataplane core.",
        );
        for (pool, h) in hot {
            let _ = writeln!(
                out,
                "{name}{{pool=\"{}\",core=\"{}\",key=\"{}\"}} {}",
                label(&pool.name),
                h.core,
                label(&String::from_utf8_lossy(&h.key)),
                h.rate
            );
        }
    }
    let name = "ferrox_pool_request_duration_seconds";
    family(
        &mut out,
        name,
        "histogram",
        "From request read to reply written.",
    );
    for pool in &pools {
        let pool_label = label(&pool.name);
        let mut cumulative = 0;
        for (i, n) in pool.latency.iter().enumerate().take(LATENCY_BUCKETS - 1) {
            cumulative += n;
            let le = (1u64 << i) as f64 / 1e6;
            let _ = writeln!(
                out,
                "{name}_bucket{{pool=\"{pool_label}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let total: u64 = pool.latency.iter().sum();
        let _ = writeln!(
            out,
            "{name}_bucket{{pool=\"{pool_label}\",le=\"+Inf\"}} {total}"
        );
        let _ = writeln!(
            out,
            "{name}_sum{{pool=\"{pool_label}\"}} {}",
            pool.latency_sum_us as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{pool=\"{pool_label}\"}} {total}");
    }
    let name = "ferrox_command_requests_total";
    family(&mut out, name, "counter", "Requests per command.");
    for (id, n) in snapshot
        .commands()
        .into_iter()
        .enumerate()
        .filter(|(_, n)| *n > 0)
    {
        if let Some((protocol, command)) = CommandId::describe(id) {
            let _ = writeln!(
                out,
                "{name}{{protocol=\"{protocol}\",command=\"{command}\"}} {n}"
            );
        }
    }
    type ServerFigure = (
        &'static str,
        &'static str,
        &'static str,
        fn(&ServerSnapshot) -> u64,
    );
    let per_server: &[ServerFigure] = &[
        (
            "ferrox_server_requests_total",
            "counter",
            "Requests (and pieces of split requests) sent.",
            |s| s.requests,
        ),
        (
            "ferrox_server_request_bytes_total",
            "counter",
            "Request bytes written to the server.",
            |s| s.request_bytes,
        ),
        (
            "ferrox_server_responses_total",
            "counter",
            "Replies read from the server.",
            |s| s.responses,
        ),
        (
            "ferrox_server_response_bytes_total",
            "counter",
            "Reply bytes read from the server.",
            |s| s.response_bytes,
        ),
        (
            "ferrox_server_failures_total",
            "counter",
            "Connection failures.",
            |s| s.failures,
        ),
        (
            "ferrox_server_timeouts_total",
            "counter",
            "Requests or connection attempts that timed out.",
            |s| s.timeouts,
        ),
        (
            "ferrox_server_eof_total",
            "counter",
            "Connections the server closed.",
            |s| s.eofs,
        ),
        (
            "ferrox_server_connections",
            "gauge",
            "Connections open to the server.",
            |s| s.connections,
        ),
        (
            "ferrox_server_in_flight_requests",
            "gauge",
            "Requests sent or queued and not yet answered.",
            |s| s.in_flight,
        ),
        (
            "ferrox_server_ejected",
            "gauge",
            "1 while the server is out of its pool.",
            |s| s.ejected.into(),
        ),
    ];
    for (name, kind, help, value) in per_server {
        family(&mut out, name, kind, help);
        for pool in &pools {
            for s in &pool.servers {
                let value = value(s);
                let _ = writeln!(
                    out,
                    "{name}{{pool=\"{}\",server=\"{}\"}} {value}",
                    label(&pool.name),
                    s.addr
                );
            }
        }
    }
    if let Some(shm) = shm {
        family(
            &mut out,
            "ferrox_shm_bytes",
            "gauge",
            "Size of the shared region.",
        );
        let _ = writeln!(out, "ferrox_shm_bytes {}", shm.size_bytes);
        family(
            &mut out,
            "ferrox_shm_chunks",
            "gauge",
            "Socket buffer chunks by role, chunk size and state.",
        );
        for class in &shm.classes {
            for (state, n) in [("in_use", class.in_use), ("free", class.free)] {
                let _ = writeln!(
                    out,
                    "ferrox_shm_chunks{{role=\"{}\",chunk_bytes=\"{}\",state=\"{state}\"}} {n}",
                    class.role, class.chunk_size
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrox_block::{CoreSnapshot, COUNTERS};

    fn snapshot(requests: u64) -> Snapshot {
        let mut latency = [0; LATENCY_BUCKETS];
        latency[8] = requests;
        Snapshot {
            cores: vec![CoreSnapshot {
                heartbeat: 1,
                counters: [requests; COUNTERS],
                commands: {
                    let mut c = vec![0; ferrox_block::COMMANDS];
                    c[0] = requests;
                    c
                },
                pools: vec![PoolSnapshot {
                    name: "ca\"che".into(),
                    requests,
                    latency,
                    // 200 µs each.
                    latency_sum_us: requests * 200,
                    servers: vec![ServerSnapshot {
                        addr: "10.0.0.1:7001".parse().unwrap(),
                        requests,
                        request_bytes: requests * 20,
                        responses: requests,
                        response_bytes: requests * 5,
                        failures: 0,
                        timeouts: 0,
                        eofs: 0,
                        connections: 1,
                        in_flight: 0,
                        ejected: false,
                        ejected_at_us: 0,
                    }],
                    ..PoolSnapshot::default()
                }],
            }],
        }
    }

    #[test]
    fn rates_come_from_two_samples() {
        let stats = stats(&Sample {
            previous: snapshot(100),
            current: snapshot(600),
            seconds: 2.0,
        });
        assert_eq!(stats.pools[0].requests, 600);
        assert_eq!(stats.pools[0].requests_per_s, 250.0);
        assert_eq!(stats.pools[0].servers[0].requests_per_s, 250.0);
        assert_eq!(stats.pools[0].p50_us, Some(256));
        assert_eq!(stats.cores[0].counters[0], ("frames".to_string(), 600));
        assert_eq!(stats.commands.len(), 1);
        assert_eq!(stats.commands[0].protocol, "redis");
        assert_eq!(stats.commands[0].requests_per_s, 250.0);
    }

    #[test]
    fn prometheus_text_has_help_type_and_escaped_labels() {
        let class = |role: &str, chunk_size| crate::admin::ShmClass {
            role: role.into(),
            chunk_size,
            total: 4,
            in_use: 1,
            free: 3,
        };
        let shm = Shm {
            region: "r".into(),
            segments: 1,
            size_bytes: 1 << 20,
            used_bytes: 1 << 19,
            hugepages: true,
            classes: vec![
                class("client", 8256),
                class("client", 32832),
                class("server", 262208),
            ],
        };
        let supervision = Supervision {
            restarts: 2,
            stalls: 1,
            heartbeat_age: vec![std::time::Duration::from_millis(1500)],
            up: true,
        };
        let text = prometheus(&snapshot(7), 3, Some(&shm), &supervision);
        assert!(text.contains("ferrox_dataplane_restarts_total 2\n"));
        assert!(text.contains("ferrox_dataplane_up 1\n"));
        assert!(text.contains(&format!(
            "ferrox_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(
            text.contains("# TYPE ferrox_core_stalls_total counter\nferrox_core_stalls_total 1\n")
        );
        assert!(text.contains("ferrox_core_heartbeat_age_seconds{core=\"0\"} 1.500\n"));
        assert!(text.contains(
            "ferrox_shm_chunks{role=\"client\",chunk_bytes=\"8256\",state=\"free\"} 3\n"
        ));
        // No series twice.
        let mut series: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit_once(' ').unwrap().0)
            .collect();
        let all = series.len();
        series.sort_unstable();
        series.dedup();
        assert_eq!(series.len(), all);
        assert!(text.contains("# TYPE ferrox_pool_requests_total counter\n"));
        // A histogram has its buckets, its sum (seconds) and its count.
        assert!(
            text.contains("ferrox_pool_request_duration_seconds_sum{pool=\"ca\\\"che\"} 0.0014\n"),
            "{text}"
        );
        assert!(text.contains("ferrox_pool_request_duration_seconds_count{pool=\"ca\\\"che\"} 7\n"));
        assert!(text.contains("ferrox_pool_requests_total{pool=\"ca\\\"che\"} 7\n"));
        assert!(text.contains(
            "ferrox_pool_request_duration_seconds_bucket{pool=\"ca\\\"che\",le=\"+Inf\"} 7\n"
        ));
        assert!(text.contains(
            "ferrox_server_requests_total{pool=\"ca\\\"che\",server=\"10.0.0.1:7001\"} 7\n"
        ));
        assert!(text.contains("ferrox_config_version 3\n"));
        assert!(
            text.contains("ferrox_command_requests_total{protocol=\"redis\",command=\"ACL\"} 7\n")
        );
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
