//! From a validated configuration to the engine's pools.

use ferrox_config::{self as config, Config};
use ferrox_proto::memcache;
use ferrox_route::{self as route, Distribution, HashFn, Table};

use crate::engine::{
    Credentials, Ejection, Placement, PoolSpec, Protocol, Role, ServerSpec, UserSpec,
};

/// A pool's route table, rebuilt when servers leave or return.
#[derive(Debug)]
struct Routes {
    hash: HashFn,
    distribution: Distribution,
    hash_tag: Option<[u8; 2]>,
    servers: Vec<route::Server>,
    table: Table,
}

impl Placement for Routes {
    fn server_for(&self, key: &[u8], random: u32) -> Option<usize> {
        self.table.server_for(key, random)
    }

    fn set_live(&mut self, live: &[bool]) {
        // Only the live set changes, and it matches the servers, so the
        // build cannot fail; keep the old table if it somehow does.
        if let Ok(table) = Table::build(
            self.hash,
            self.distribution,
            self.hash_tag,
            &self.servers,
            live,
        ) {
            self.table = table;
        }
    }
}

/// Why a pool cannot be built (the configuration was validated, so this
/// is a name the router does not know, or a route table it refuses).
#[derive(Debug, thiserror::Error)]
#[error("pool {pool:?}: {reason}")]
pub struct BuildError {
    pub pool: String,
    pub reason: String,
}

/// How long a connection attempt may take when the pool sets no timeout.
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1_000;

/// The engine's pools for `config`, every server live.
pub fn pools(config: &Config) -> Result<Vec<PoolSpec>, BuildError> {
    config
        .pools
        .iter()
        .map(|p| {
            let mut spec = pool(p, &config.limits)?;
            spec.users = users(p, &config.users)?;
            Ok(spec)
        })
        .collect()
}

/// The users of `pool`: those naming it, and those naming no pool when it
/// speaks Redis.
fn users(pool: &config::Pool, users: &[config::User]) -> Result<Vec<UserSpec>, BuildError> {
    users
        .iter()
        .filter(|u| {
            u.pools.contains(&pool.name)
                || (u.pools.is_empty() && pool.protocol == config::Protocol::Redis)
        })
        .map(|u| {
            let acl = crate::acl::Acl::compile(&u.acl).map_err(|e| BuildError {
                pool: pool.name.clone(),
                reason: format!("line {}: user {:?}: acl: {e}", u.line, u.name),
            })?;
            Ok(UserSpec {
                name: u.name.clone(),
                passwords: u.passwords.iter().map(|p| p.as_bytes().to_vec()).collect(),
                acl: Box::new(acl),
            })
        })
        .collect()
}

/// A login from a configuration's user (optional) and password.
fn credentials(user: &Option<String>, password: &Option<String>) -> Option<Credentials> {
    password.as_ref().map(|password| Credentials {
        user: user.as_ref().map(|u| u.as_bytes().to_vec()),
        password: password.as_bytes().to_vec(),
    })
}

fn pool(pool: &config::Pool, limits: &config::Limits) -> Result<PoolSpec, BuildError> {
    let fail = |reason: String| BuildError {
        pool: pool.name.clone(),
        reason,
    };
    let (hash, distribution) = (pool.hash, pool.distribution);
    let servers: Vec<route::Server> = pool
        .servers
        .iter()
        .map(|s| route::Server::new(s.name.clone(), s.weight))
        .collect();
    let live = vec![true; servers.len()];
    let table = Table::build(hash, distribution, pool.hash_tag, &servers, &live)
        .map_err(|e| fail(e.to_string()))?;
    let ms = |ms: u64| ms.saturating_mul(1_000);
    Ok(PoolSpec {
        name: pool.name.clone(),
        protocol: match pool.protocol {
            config::Protocol::Redis => Protocol::Redis,
            config::Protocol::Memcache => Protocol::Memcache,
        },
        servers: engine_servers(pool),
        placement: Box::new(Routes {
            hash,
            distribution,
            hash_tag: pool.hash_tag,
            servers,
            table,
        }),
        timeout: pool.timeout_ms.map(ms),
        connect_timeout: ms(pool.timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS)),
        auth: pool.auth.as_ref().map(|a| a.as_bytes().to_vec()),
        server_login: credentials(&pool.server_user, &pool.server_auth),
        db: pool.db,
        server_connections: pool.server_connections.max(1) as usize,
        client_connections: pool.client_connections as usize,
        retry_max: ms(pool.server_retry_timeout_ms),
        blocked: pool
            .blocked_commands
            .iter()
            .map(|c| c.to_ascii_uppercase().into_bytes())
            .collect(),
        limits: limits.resp(),
        memcache_limits: memcache::Limits {
            max_key: limits.max_key.min(memcache::Limits::default().max_key),
            max_value: limits.max_value,
            ..memcache::Limits::default()
        },
        max_pipeline: limits.max_pipeline,
        max_request: limits.max_request,
        max_output: crate::engine::MAX_OUTPUT,
        preconnect: pool.preconnect,
        users: Vec::new(),
        validate: pool.validate.clone(),
        rate_limits: pool.rate_limits.clone(),
        cluster: distribution == Distribution::RedisCluster,
        read_policy: pool.read_policy,
        sentinels: pool.sentinels.clone(),
        sentinel_auth: credentials(&pool.sentinel_user, &pool.sentinel_auth),
        compression: pool.compression.clone(),
        hot_key_cache: pool.hot_key_cache.clone(),
        masters: pool
            .servers
            .iter()
            .filter_map(|s| s.master.clone())
            .collect(),
        ejection: pool.auto_eject_hosts.then_some(Ejection {
            failure_limit: pool.server_failure_limit.max(1),
            retry: ms(pool.server_retry_timeout_ms),
        }),
    })
}

/// The engine's servers of `pool`: its shards in configuration order
/// (placement's indices), then every shard's replicas in the same order,
/// as the control process numbers them too (see
/// [`config::Pool::all_servers`]).
fn engine_servers(pool: &config::Pool) -> Vec<ServerSpec> {
    pool.all_servers()
        .map(|(addr, shard)| ServerSpec {
            addr,
            name: match shard {
                Some(shard) => format!("{}/replica {addr}", pool.servers[shard].name),
                None => addr.to_string(),
            },
            role: shard.map_or(Role::Shard, Role::Replica),
        })
        .collect()
}
