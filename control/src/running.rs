//! The running configuration and the changes an operator makes to it.
//!
//! Every change, whether a whole new file or one step (`server add`,
//! `block`), produces a complete new [`Config`] that is checked exactly as
//! the dataplane will check it (the same parser, the same pool building)
//! before it is published; a change that fails leaves the running
//! configuration as it was. One step changes are made on the model and
//! then emitted as ferrox TOML and read back, so they meet the same
//! validation as a file (names, duplicates, weights).

use std::net::{Ipv4Addr, SocketAddrV4};

use ferrox_config::{self as config, Config, Server};

/// Why a configuration or a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Parses and checks `text` for a dataplane answering on `address`: the
/// same checks the dataplane makes before it takes a configuration.
pub fn validate(text: &str, file: &str, address: Ipv4Addr) -> Result<Config, Refused> {
    let config = config::parse(text, file).map_err(|e| Refused(e.to_string()))?;
    check(&config, file, address)?;
    Ok(config)
}

/// Like [`validate`], for a dataplane whose address is not known yet:
/// every check but where the pools listen.
pub fn validate_anywhere(text: &str, file: &str) -> Result<Config, Refused> {
    let config = config::parse(text, file).map_err(|e| Refused(e.to_string()))?;
    ferrox_engine::configure::pools(&config).map_err(|e| Refused(format!("{file}: {e}")))?;
    Ok(config)
}

fn check(config: &Config, file: &str, address: Ipv4Addr) -> Result<(), Refused> {
    ferrox_engine::configure::pools(config).map_err(|e| Refused(format!("{file}: {e}")))?;
    config::check_listen(config, address, file).map_err(Refused)
}

/// One operator's step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `server` as a configuration writes it: `ip:port:weight [name]`.
    AddServer {
        pool: String,
        server: String,
    },
    RemoveServer {
        pool: String,
        addr: String,
    },
    Weight {
        pool: String,
        addr: String,
        weight: u32,
    },
    /// In one pool, or every pool.
    Block {
        pool: Option<String>,
        command: String,
    },
    Unblock {
        pool: Option<String>,
        command: String,
    },
    /// Adds a user, or replaces the one of that name.
    SetUser {
        name: String,
        passwords: Vec<String>,
        pools: Vec<String>,
        acl: String,
    },
    RemoveUser {
        name: String,
    },
}

/// `config` with `change` made, checked whole.
pub fn apply(config: &Config, change: &Change, address: Ipv4Addr) -> Result<Config, Refused> {
    let mut next = config.clone();
    match change {
        Change::AddServer { pool, server } => {
            let server = parse_server(server)?;
            let p = pool_mut(&mut next, pool)?;
            if p.servers.iter().any(|s| s.addr == server.addr) {
                return Err(Refused(format!(
                    "pool {pool:?} already has server {}",
                    server.addr
                )));
            }
            p.servers.push(server);
        }
        Change::RemoveServer { pool, addr } => {
            let p = pool_mut(&mut next, pool)?;
            let at = server_index(p, pool, addr)?;
            if p.servers.len() == 1 {
                return Err(Refused(format!(
                    "{addr} is the last server of pool {pool:?}; a pool needs one"
                )));
            }
            p.servers.remove(at);
        }
        Change::Weight { pool, addr, weight } => {
            let p = pool_mut(&mut next, pool)?;
            let at = server_index(p, pool, addr)?;
            p.servers[at].weight = *weight;
        }
        Change::Block { pool, command } | Change::Unblock { pool, command } => {
            let command = command.to_ascii_uppercase();
            if command.is_empty() || !command.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Refused(format!("{command:?} is not a command name")));
            }
            let block = matches!(change, Change::Block { .. });
            let mut found = false;
            for p in &mut next.pools {
                if pool.as_ref().is_some_and(|name| *name != p.name) {
                    continue;
                }
                found = true;
                p.blocked_commands.retain(|c| *c != command);
                if block {
                    p.blocked_commands.push(command.clone());
                }
            }
            if let (false, Some(pool)) = (found, pool) {
                return Err(no_pool(pool));
            }
        }
        Change::SetUser {
            name,
            passwords,
            pools,
            acl,
        } => {
            let user = config::User {
                name: name.clone(),
                passwords: passwords.clone(),
                pools: pools.clone(),
                acl: acl.clone(),
                line: 0,
            };
            match next.users.iter_mut().find(|u| u.name == *name) {
                Some(old) => *old = user,
                None => next.users.push(user),
            }
        }
        Change::RemoveUser { name } => {
            let before = next.users.len();
            next.users.retain(|u| u.name != *name);
            if next.users.len() == before {
                return Err(Refused(format!("no user {name:?}")));
            }
        }
    }
    // Read back what would be published: the file's own rules hold.
    let text = config::emit_toml(&next);
    validate(&text, "<change>", address)
}

fn no_pool(pool: &str) -> Refused {
    Refused(format!("no pool {pool:?}"))
}

fn pool_mut<'a>(config: &'a mut Config, pool: &str) -> Result<&'a mut config::Pool, Refused> {
    config
        .pools
        .iter_mut()
        .find(|p| p.name == pool)
        .ok_or_else(|| no_pool(pool))
}

/// Where `addr` (`ip:port`) is in `pool`'s servers.
pub fn server_index(pool: &config::Pool, name: &str, addr: &str) -> Result<usize, Refused> {
    let parsed: SocketAddrV4 = addr
        .parse()
        .map_err(|_| Refused(format!("{addr:?} is not an address (ip:port)")))?;
    pool.servers
        .iter()
        .position(|s| s.addr == parsed)
        .ok_or_else(|| Refused(format!("pool {name:?} has no server {addr}")))
}

/// A server as a configuration file writes it, read by the file's own
/// parser so that names and weights default exactly as they do there.
fn parse_server(text: &str) -> Result<Server, Refused> {
    let quoted = serde_json::to_string(text).expect("strings serialize");
    let pool =
        format!("[pools.p]\nlisten = \"0.0.0.0:1\"\nprotocol = \"redis\"\nservers = [{quoted}]\n");
    match config::parse_toml(&pool, "<server>") {
        Ok(mut config) => Ok(config.pools.remove(0).servers.remove(0)),
        Err(e) => Err(Refused(
            e.errors
                .iter()
                .map(|d| d.message.clone())
                .collect::<Vec<_>>()
                .join("; "),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    fn config() -> Config {
        validate(
            "[pools.cache]\nlisten = \"0.0.0.0:6379\"\nprotocol = \"redis\"\nservers = [\"10.0.0.1:7001:1\", \"10.0.0.1:7002:1\"]\n\
             [pools.sessions]\nlisten = \"0.0.0.0:11211\"\nprotocol = \"memcache\"\nservers = [\"10.0.0.1:11311:1\"]\n",
            "t.toml",
            ADDRESS,
        )
        .unwrap()
    }

    fn change(c: Change) -> Result<Config, Refused> {
        apply(&config(), &c, ADDRESS)
    }

    fn add(pool: &str, server: &str) -> Change {
        let (pool, server) = (pool.into(), server.into());
        Change::AddServer { pool, server }
    }

    fn remove(pool: &str, addr: &str) -> Change {
        let (pool, addr) = (pool.into(), addr.into());
        Change::RemoveServer { pool, addr }
    }

    fn weight(pool: &str, addr: &str, weight: u32) -> Change {
        let (pool, addr) = (pool.into(), addr.into());
        Change::Weight { pool, addr, weight }
    }

    fn block(pool: Option<&str>, command: &str) -> Change {
        let (pool, command) = (pool.map(Into::into), command.into());
        Change::Block { pool, command }
    }

    #[test]
    fn servers_are_added_reweighted_and_removed() {
        let added = change(add("cache", "10.0.0.1:7003:2 gamma")).unwrap();
        let new = &added.pools[0].servers[2];
        assert_eq!(
            (new.addr.port(), new.weight, new.name.as_str()),
            (7003, 2, "gamma")
        );
        let reweighted = apply(&added, &weight("cache", "10.0.0.1:7001", 5), ADDRESS).unwrap();
        assert_eq!(reweighted.pools[0].servers[0].weight, 5);
        let removed = apply(&reweighted, &remove("cache", "10.0.0.1:7002"), ADDRESS).unwrap();
        let ports: Vec<u16> = removed.pools[0]
            .servers
            .iter()
            .map(|s| s.addr.port())
            .collect();
        assert_eq!(ports, [7001, 7003]);
    }

    #[test]
    fn commands_are_blocked_in_one_pool_or_all_and_unblocked() {
        let one = change(block(Some("cache"), "keys")).unwrap();
        assert_eq!(one.pools[0].blocked_commands, ["KEYS"]);
        assert!(one.pools[1].blocked_commands.is_empty());
        let all = apply(&one, &block(None, "KEYS"), ADDRESS).unwrap();
        assert_eq!(all.pools[0].blocked_commands, ["KEYS"]);
        assert_eq!(all.pools[1].blocked_commands, ["KEYS"]);
        let none = apply(
            &all,
            &Change::Unblock {
                pool: None,
                command: "Keys".into(),
            },
            ADDRESS,
        )
        .unwrap();
        assert!(none.pools.iter().all(|p| p.blocked_commands.is_empty()));
    }

    #[test]
    fn bad_changes_are_refused_with_the_reason() {
        for (bad, why) in [
            (add("nope", "10.0.0.1:1:1"), "no pool \"nope\""),
            (add("cache", "10.0.0.1:7001:1"), "already has server"),
            (add("cache", "not a server"), "not a server"),
            (
                add("cache", "10.0.0.1:7009:1 10.0.0.1:7001"),
                "10.0.0.1:7001",
            ),
            (remove("sessions", "10.0.0.1:11311"), "last server"),
            (weight("cache", "10.0.0.9:1", 1), "has no server 10.0.0.9:1"),
            (weight("cache", "10.0.0.1:7001", 0), "weight"),
            (block(None, "two words"), "not a command name"),
        ] {
            let refused = change(bad.clone()).unwrap_err().0;
            assert!(refused.contains(why), "{bad:?}: {refused}");
        }
    }

    fn set_user(name: &str, pools: &[&str], acl: &str) -> Change {
        Change::SetUser {
            name: name.into(),
            passwords: vec!["pw".into()],
            pools: pools.iter().map(|p| p.to_string()).collect(),
            acl: acl.into(),
        }
    }

    #[test]
    fn users_are_set_replaced_and_removed_live() {
        let config = apply(
            &config(),
            &set_user("app", &["cache"], "+@read ~a:*"),
            ADDRESS,
        )
        .unwrap();
        assert_eq!(config.users.len(), 1);
        assert_eq!(config.users[0].acl, "+@read ~a:*");
        let config = apply(
            &config,
            &set_user("app", &[], "allcommands allkeys"),
            ADDRESS,
        )
        .unwrap();
        assert_eq!(config.users.len(), 1, "replaced, not added");
        assert_eq!(config.users[0].acl, "allcommands allkeys");
        let config = apply(&config, &Change::RemoveUser { name: "app".into() }, ADDRESS).unwrap();
        assert!(config.users.is_empty());
        for (bad, why) in [
            (set_user("app", &["nope"], ""), "no pool \"nope\""),
            (set_user("default", &[], ""), "each pool's own user"),
            (set_user("app", &[], "+@nothing"), "unknown category"),
            (set_user("app", &[], "+nosuchcommand"), "unknown command"),
            (
                Change::RemoveUser {
                    name: "ghost".into(),
                },
                "no user \"ghost\"",
            ),
        ] {
            let refused = change(bad.clone()).unwrap_err().0;
            assert!(refused.contains(why), "{bad:?}: {refused}");
        }
    }

    #[test]
    fn a_pool_on_another_address_is_refused() {
        let error = validate(
            "[pools.x]\nlisten = \"10.9.9.9:6379\"\nprotocol = \"redis\"\nservers = [\"10.0.0.1:7001:1\"]\n",
            "x.toml",
            ADDRESS,
        )
        .unwrap_err();
        assert!(
            error
                .0
                .contains("x.toml: pool \"x\" listens on 10.9.9.9:6379"),
            "{error}"
        );
    }
}
