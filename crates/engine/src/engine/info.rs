//! `INFO`, answered by the proxy in Redis's format (`# Section` headers,
//! `field:value` lines), so that `redis-cli --stat`, exporters and GUIs
//! that start with it work through ferrox. The figures are the whole
//! dataplane's when the runtime has said them ([`Totals`], every core's
//! statistics added up), else this engine's own.

use std::fmt::Write;

use super::Engine;

/// Figures of the whole dataplane, which one core's engine cannot see:
/// the runtime sets them from the shared statistics every so often.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub cores: u64,
    pub uptime_s: u64,
    pub connected_clients: u64,
    pub total_connections: u64,
    pub total_commands: u64,
    /// Requests per second over the runtime's last interval.
    pub ops_per_sec: u64,
    pub error_replies: u64,
    pub net_input_bytes: u64,
    pub net_output_bytes: u64,
    /// Bytes the dataplane holds for connections (socket buffers in use).
    pub used_memory: u64,
    pub rejected_connections: u64,
    /// Requests per command id, every core's (empty: this engine's own).
    pub commands: Vec<u64>,
}

/// The sections `INFO` writes, in order.
const SECTIONS: [&str; 5] = ["server", "clients", "memory", "stats", "proxy"];

impl Engine {
    /// The dataplane-wide figures `INFO` shows from now on.
    pub fn set_totals(&mut self, totals: Totals) {
        self.totals = Some(totals);
    }

    /// The `INFO` text for session `index`'s pool: the sections named
    /// (any case; `all`, `everything` and `default` mean every one), or
    /// all of them when none is. Sections it does not keep are left out,
    /// as Redis leaves out unknown ones. The flag says whether the
    /// keyspace section was asked for too: the servers' to add up.
    pub(super) fn info_text<'a>(
        &self,
        index: usize,
        asked: impl Iterator<Item = &'a [u8]>,
    ) -> (String, bool) {
        let mut wanted = [false; SECTIONS.len()];
        let mut any = false;
        let mut keyspace = false;
        for name in asked {
            any = true;
            let every = [&b"all"[..], b"everything", b"default"]
                .iter()
                .any(|a| name.eq_ignore_ascii_case(a));
            keyspace |= every || name.eq_ignore_ascii_case(b"keyspace");
            for (want, section) in wanted.iter_mut().zip(SECTIONS) {
                *want |= every || name.eq_ignore_ascii_case(section.as_bytes());
            }
        }
        if !any {
            wanted = [true; SECTIONS.len()];
            keyspace = true;
        }
        let own = Totals {
            cores: 1,
            connected_clients: self.pools.iter().map(|p| p.sessions as u64).sum(),
            total_connections: self.stats.sessions_opened,
            total_commands: self.stats.requests,
            error_replies: self.stats.errors,
            net_input_bytes: self.pools.iter().map(|p| p.counters.bytes_in).sum(),
            net_output_bytes: self.pools.iter().map(|p| p.counters.bytes_out).sum(),
            rejected_connections: self.stats.sessions_refused,
            ..Totals::default()
        };
        let t = self.totals.as_ref().unwrap_or(&own);
        let pool = &self.pools[self.sessions[index].route().0];
        let mut out = String::new();
        for (section, _) in SECTIONS.iter().zip(wanted).filter(|(_, w)| *w) {
            if !out.is_empty() {
                out.push_str("\r\n");
            }
            // Writing to a String cannot fail.
            let _ = match *section {
                "server" => write!(
                    out,
                    "# Server\r\nredis_version:7.0.0\r\nferrox_version:{}\r\nredis_mode:proxy\r\n\
                     arch_bits:64\r\nmultiplexing_api:dpdk\r\nuptime_in_seconds:{}\r\n\
                     uptime_in_days:{}\r\n",
                    env!("CARGO_PKG_VERSION"),
                    t.uptime_s,
                    t.uptime_s / 86_400
                ),
                "clients" => write!(
                    out,
                    "# Clients\r\nconnected_clients:{}\r\nblocked_clients:0\r\n",
                    t.connected_clients
                ),
                "memory" => write!(
                    out,
                    "# Memory\r\nused_memory:{}\r\nused_memory_human:{:.2}M\r\n",
                    t.used_memory,
                    t.used_memory as f64 / (1 << 20) as f64
                ),
                "stats" => write!(
                    out,
                    "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\
                     instantaneous_ops_per_sec:{}\r\ntotal_net_input_bytes:{}\r\n\
                     total_net_output_bytes:{}\r\nrejected_connections:{}\r\n\
                     total_error_replies:{}\r\n",
                    t.total_connections,
                    t.total_commands,
                    t.ops_per_sec,
                    t.net_input_bytes,
                    t.net_output_bytes,
                    t.rejected_connections,
                    t.error_replies
                ),
                _ => {
                    let _ = write!(
                        out,
                        "# Proxy\r\ncores:{}\r\npool:{}\r\npool_servers:{}\r\npool_servers_out:{}\r\n",
                        t.cores,
                        pool.spec.name,
                        pool.live.len(),
                        pool.live.iter().filter(|l| !**l).count()
                    );
                    if let Some(cluster) = &pool.cluster {
                        // This core's: each core learns the map on its own.
                        let _ = write!(
                            out,
                            "cluster_moved_followed:{}\r\ncluster_ask_followed:{}\r\n\
                             cluster_map_refreshes:{}\r\n",
                            cluster.moved, cluster.asks, cluster.refreshes
                        );
                    }
                    let c = &pool.counters;
                    if pool.compression.is_some() {
                        // This core's, as the cluster's figures.
                        let ratio = match c.compressed_bytes_in {
                            0 => 0.0,
                            before => c.compressed_bytes_out as f64 / before as f64,
                        };
                        let _ = write!(
                            out,
                            "compressed_values:{}\r\ncompressed_bytes_in:{}\r\n\
                             compressed_bytes_out:{}\r\ncompression_ratio:{ratio:.4}\r\n\
                             decompressed_values:{}\r\ncorrupt_values:{}\r\ncompression_ms:{}\r\n",
                            c.compressed_values,
                            c.compressed_bytes_in,
                            c.compressed_bytes_out,
                            c.decompressed_values,
                            c.corrupt_values,
                            c.compress_ns / 1_000_000
                        );
                    }
                    if let Some(hot) = &pool.hot {
                        let mut c = c.clone();
                        hot.publish(&mut c);
                        let reads = c.cache_hits + c.cache_misses;
                        let ratio = if reads == 0 {
                            0.0
                        } else {
                            c.cache_hits as f64 / reads as f64
                        };
                        let _ = write!(
                            out,
                            "cache_hits:{}\r\ncache_misses:{}\r\ncache_hit_ratio:{ratio:.4}\r\n\
                             cache_fills:{}\r\ncache_evictions:{}\r\n\
                             cache_invalidations:write={},server={},lost={}\r\n\
                             cache_expirations:{}\r\ncache_memory:{}\r\nhot_keys:{}\r\n",
                            c.cache_hits,
                            c.cache_misses,
                            c.cache_fills,
                            c.cache_evictions,
                            c.cache_invalidations_write,
                            c.cache_invalidations_server,
                            c.cache_invalidations_lost,
                            c.cache_expirations,
                            c.cache_memory,
                            c.hot_keys
                        );
                    }
                    for (i, (server, live)) in pool.spec.servers.iter().zip(&pool.live).enumerate()
                    {
                        let _ = write!(
                            out,
                            "server{i}:addr={},name={},in_pool={}\r\n",
                            server.addr,
                            server.name,
                            u8::from(*live)
                        );
                    }
                    Ok(())
                }
            };
        }
        (out, keyspace)
    }
}

/// The servers' `INFO keyspace` replies (bulk strings of `dbN:keys=K,
/// expires=E,avg_ttl=T` lines) added up per database: keys and expires
/// summed, the average TTL weighted by each server's expiring keys.
/// `None` when a piece is not such a reply.
pub(super) fn merge_keyspace<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> Option<String> {
    // Database number -> (keys, expires, sum of avg_ttl × expires).
    let mut dbs: std::collections::BTreeMap<u32, (u64, u64, u128)> = Default::default();
    for piece in pieces {
        let body = piece.strip_prefix(b"$")?;
        let start = body.iter().position(|&b| b == b'\n')? + 1;
        let text = std::str::from_utf8(&body[start..]).ok()?;
        for line in text.lines().filter(|l| l.starts_with("db")) {
            let (db, fields) = line[2..].split_once(':')?;
            let db: u32 = db.parse().ok()?;
            let mut figures = (0u64, 0u64, 0u64);
            for field in fields.split(',') {
                let (name, value) = field.split_once('=')?;
                let value = value.trim().parse().ok();
                match name {
                    "keys" => figures.0 = value?,
                    "expires" => figures.1 = value?,
                    "avg_ttl" => figures.2 = value?,
                    _ => {}
                }
            }
            let entry = dbs.entry(db).or_default();
            entry.0 += figures.0;
            entry.1 += figures.1;
            entry.2 += u128::from(figures.2) * u128::from(figures.1);
        }
    }
    let mut out = String::from("# Keyspace\r\n");
    for (db, (keys, expires, ttl)) in dbs {
        let avg_ttl = if expires == 0 {
            0
        } else {
            ttl / u128::from(expires)
        };
        let _ = write!(
            out,
            "db{db}:keys={keys},expires={expires},avg_ttl={avg_ttl}\r\n"
        );
    }
    Some(out)
}

impl Engine {
    /// memcached's `stats`, in its format (`STAT name value` lines, then
    /// `END`), from the proxy's own figures: what a proxy can say of
    /// itself (no hits and misses, no items: those are the servers').
    /// `cmd_*` count requests: a multi-get is one (memcached counts its
    /// keys).
    pub(super) fn memcache_stats(&self) -> String {
        use ferrox_proto::memcache::Command as C;
        let own = self.totals.is_none();
        let t = self.totals.clone().unwrap_or_else(|| Totals {
            cores: 1,
            connected_clients: self.pools.iter().map(|p| p.sessions as u64).sum(),
            total_connections: self.stats.sessions_opened,
            net_input_bytes: self.pools.iter().map(|p| p.counters.bytes_in).sum(),
            net_output_bytes: self.pools.iter().map(|p| p.counters.bytes_out).sum(),
            rejected_connections: self.stats.sessions_refused,
            ..Totals::default()
        });
        let commands = if own || t.commands.is_empty() {
            &self.stats.commands
        } else {
            &t.commands
        };
        let count = |list: &[C]| -> u64 {
            list.iter()
                .map(|&c| {
                    commands
                        .get(crate::command::CommandId::memcache(c).index())
                        .copied()
                        .unwrap_or(0)
                })
                .sum()
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut out = String::new();
        for (name, value) in [
            ("pid", u64::from(std::process::id())),
            ("uptime", t.uptime_s),
            ("time", now),
        ] {
            let _ = write!(out, "STAT {name} {value}\r\n");
        }
        let _ = write!(out, "STAT version ferrox-{}\r\n", env!("CARGO_PKG_VERSION"));
        for (name, value) in [
            ("threads", t.cores),
            ("curr_connections", t.connected_clients),
            ("total_connections", t.total_connections),
            ("rejected_connections", t.rejected_connections),
            (
                "cmd_get",
                count(&[C::Get, C::Gets, C::Gat, C::Gats, C::MetaGet]),
            ),
            (
                "cmd_set",
                count(&[
                    C::Set,
                    C::Add,
                    C::Replace,
                    C::Append,
                    C::Prepend,
                    C::Cas,
                    C::MetaSet,
                ]),
            ),
            ("cmd_touch", count(&[C::Touch, C::Gat, C::Gats])),
            ("cmd_delete", count(&[C::Delete, C::MetaDelete])),
            (
                "cmd_arithmetic",
                count(&[C::Incr, C::Decr, C::MetaArithmetic]),
            ),
            ("bytes_read", t.net_input_bytes),
            ("bytes_written", t.net_output_bytes),
        ] {
            let _ = write!(out, "STAT {name} {value}\r\n");
        }
        out.push_str("END\r\n");
        out
    }
}
