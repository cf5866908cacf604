//! Pools for the engine's own tests, benches and allocation test: one
//! place that spells out every field of a [`PoolSpec`], so each of them
//! states only what it changes. Not part of the engine's interface.

use std::net::SocketAddrV4;

use ferrox_proto::{memcache, resp};

use crate::{Placement, PoolSpec, Protocol, ServerSpec, MAX_OUTPUT};

/// A pool named `test` of `servers` servers `s0`, `s1`, … at
/// 10.0.0.1:`first_port`, :`first_port + 1`, …, placed by `placement`:
/// no request timeout, a one-second connect timeout, one connection per
/// server, no authentication or database, nothing blocked, default
/// limits, 1024 requests in flight, and no ejection.
pub fn pool_spec(
    protocol: Protocol,
    servers: usize,
    first_port: u16,
    placement: Box<dyn Placement>,
) -> PoolSpec {
    PoolSpec {
        name: "test".into(),
        protocol,
        servers: (0..servers)
            .map(|i| {
                ServerSpec::shard(
                    SocketAddrV4::new([10, 0, 0, 1].into(), first_port + i as u16),
                    format!("s{i}"),
                )
            })
            .collect(),
        placement,
        timeout: None,
        connect_timeout: 1_000_000,
        auth: None,
        db: 0,
        server_connections: 1,
        client_connections: 0,
        retry_max: 1_000_000,
        blocked: Vec::new(),
        limits: resp::Limits::default(),
        memcache_limits: memcache::Limits::default(),
        max_pipeline: 1024,
        max_request: 1 << 30,
        max_output: MAX_OUTPUT,
        preconnect: false,
        ejection: None,
        users: Vec::new(),
        validate: Default::default(),
        rate_limits: Vec::new(),
        cluster: false,
        read_policy: Default::default(),
        sentinels: Vec::new(),
        masters: Vec::new(),
        sentinel_auth: None,
        server_login: None,
        compression: None,
        hot_key_cache: None,
    }
}
