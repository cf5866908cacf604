//! Users' permissions, as Redis ACL rules: which commands a user may run
//! (by name, or by Redis's command categories) and which keys it may
//! touch (glob patterns). An [`Acl`] is compiled once per user and pool,
//! from the rule text the configuration checked for its syntax; a check
//! is an index into a table and, for keys, a glob match per pattern: no
//! allocation per request.
//!
//! A user starts with no command and no key (Redis's `-@all resetkeys`)
//! and its rules apply in order. The categories of each command are
//! Redis 7.0's own, recorded from `COMMAND INFO` (a test checks that every
//! command of the table has them).

use crate::command::{self, CommandId, COMMAND_IDS};

const KEYSPACE: u32 = 1 << 0;
const READ: u32 = 1 << 1;
const WRITE: u32 = 1 << 2;
const SET: u32 = 1 << 3;
const SORTEDSET: u32 = 1 << 4;
const LIST: u32 = 1 << 5;
const HASH: u32 = 1 << 6;
const STRING: u32 = 1 << 7;
const BITMAP: u32 = 1 << 8;
const HYPERLOGLOG: u32 = 1 << 9;
const GEO: u32 = 1 << 10;
const STREAM: u32 = 1 << 11;
const PUBSUB: u32 = 1 << 12;
const ADMIN: u32 = 1 << 13;
const FAST: u32 = 1 << 14;
const SLOW: u32 = 1 << 15;
const BLOCKING: u32 = 1 << 16;
const DANGEROUS: u32 = 1 << 17;
const CONNECTION: u32 = 1 << 18;
const TRANSACTION: u32 = 1 << 19;
const SCRIPTING: u32 = 1 << 20;
const ALL: u32 = u32::MAX;

/// The categories by name, as rules write them after `@`.
const CATEGORIES: [(&str, u32); 22] = [
    ("all", ALL),
    ("keyspace", KEYSPACE),
    ("read", READ),
    ("write", WRITE),
    ("set", SET),
    ("sortedset", SORTEDSET),
    ("list", LIST),
    ("hash", HASH),
    ("string", STRING),
    ("bitmap", BITMAP),
    ("hyperloglog", HYPERLOGLOG),
    ("geo", GEO),
    ("stream", STREAM),
    ("pubsub", PUBSUB),
    ("admin", ADMIN),
    ("fast", FAST),
    ("slow", SLOW),
    ("blocking", BLOCKING),
    ("dangerous", DANGEROUS),
    ("connection", CONNECTION),
    ("transaction", TRANSACTION),
    ("scripting", SCRIPTING),
];

// Generated from redis-server 7.0's COMMAND INFO (the ACL categories of
// every command in the command table); see `categories_of`.
const COMMAND_CATEGORIES: &[(&str, u32)] = &[
    ("ACL", SLOW),
    ("APPEND", WRITE | STRING | FAST),
    ("AUTH", FAST | CONNECTION),
    ("BGREWRITEAOF", ADMIN | SLOW | DANGEROUS),
    ("BGSAVE", ADMIN | SLOW | DANGEROUS),
    ("BITCOUNT", READ | BITMAP | SLOW),
    ("BITFIELD", WRITE | BITMAP | SLOW),
    ("BITFIELD_RO", READ | BITMAP | FAST),
    ("BITOP", WRITE | BITMAP | SLOW),
    ("BITPOS", READ | BITMAP | SLOW),
    ("BLMOVE", WRITE | LIST | SLOW | BLOCKING),
    ("BLMPOP", WRITE | LIST | SLOW | BLOCKING),
    ("BLPOP", WRITE | LIST | SLOW | BLOCKING),
    ("BRPOP", WRITE | LIST | SLOW | BLOCKING),
    ("BRPOPLPUSH", WRITE | LIST | SLOW | BLOCKING),
    ("BZMPOP", WRITE | SORTEDSET | SLOW | BLOCKING),
    ("BZPOPMAX", WRITE | SORTEDSET | FAST | BLOCKING),
    ("BZPOPMIN", WRITE | SORTEDSET | FAST | BLOCKING),
    ("CLIENT", SLOW),
    ("CLUSTER", SLOW),
    ("COMMAND", SLOW | CONNECTION),
    ("CONFIG", SLOW),
    ("COPY", KEYSPACE | WRITE | SLOW),
    ("DBSIZE", KEYSPACE | READ | FAST),
    ("DEBUG", ADMIN | SLOW | DANGEROUS),
    ("DECR", WRITE | STRING | FAST),
    ("DECRBY", WRITE | STRING | FAST),
    ("DEL", KEYSPACE | WRITE | SLOW),
    ("DISCARD", FAST | TRANSACTION),
    ("DUMP", KEYSPACE | READ | SLOW),
    ("ECHO", FAST | CONNECTION),
    ("EVAL", SLOW | SCRIPTING),
    ("EVALSHA", SLOW | SCRIPTING),
    ("EVALSHA_RO", SLOW | SCRIPTING),
    ("EVAL_RO", SLOW | SCRIPTING),
    ("EXEC", SLOW | TRANSACTION),
    ("EXISTS", KEYSPACE | READ | FAST),
    ("EXPIRE", KEYSPACE | WRITE | FAST),
    ("EXPIREAT", KEYSPACE | WRITE | FAST),
    ("EXPIRETIME", KEYSPACE | READ | FAST),
    ("FAILOVER", ADMIN | SLOW | DANGEROUS),
    ("FCALL", SLOW | SCRIPTING),
    ("FCALL_RO", SLOW | SCRIPTING),
    ("FLUSHALL", KEYSPACE | WRITE | SLOW | DANGEROUS),
    ("FLUSHDB", KEYSPACE | WRITE | SLOW | DANGEROUS),
    ("FUNCTION", SLOW),
    ("GEOADD", WRITE | GEO | SLOW),
    ("GEODIST", READ | GEO | SLOW),
    ("GEOHASH", READ | GEO | SLOW),
    ("GEOPOS", READ | GEO | SLOW),
    ("GEORADIUS", WRITE | GEO | SLOW),
    ("GEORADIUSBYMEMBER", WRITE | GEO | SLOW),
    ("GEORADIUSBYMEMBER_RO", READ | GEO | SLOW),
    ("GEORADIUS_RO", READ | GEO | SLOW),
    ("GEOSEARCH", READ | GEO | SLOW),
    ("GEOSEARCHSTORE", WRITE | GEO | SLOW),
    ("GET", READ | STRING | FAST),
    ("GETBIT", READ | BITMAP | FAST),
    ("GETDEL", WRITE | STRING | FAST),
    ("GETEX", WRITE | STRING | FAST),
    ("GETRANGE", READ | STRING | SLOW),
    ("GETSET", WRITE | STRING | FAST),
    ("HDEL", WRITE | HASH | FAST),
    ("HELLO", FAST | CONNECTION),
    ("HEXISTS", READ | HASH | FAST),
    ("HGET", READ | HASH | FAST),
    ("HGETALL", READ | HASH | SLOW),
    ("HINCRBY", WRITE | HASH | FAST),
    ("HINCRBYFLOAT", WRITE | HASH | FAST),
    ("HKEYS", READ | HASH | SLOW),
    ("HLEN", READ | HASH | FAST),
    ("HMGET", READ | HASH | FAST),
    ("HMSET", WRITE | HASH | FAST),
    ("HRANDFIELD", READ | HASH | SLOW),
    ("HSCAN", READ | HASH | SLOW),
    ("HSET", WRITE | HASH | FAST),
    ("HSETNX", WRITE | HASH | FAST),
    ("HSTRLEN", READ | HASH | FAST),
    ("HVALS", READ | HASH | SLOW),
    ("INCR", WRITE | STRING | FAST),
    ("INCRBY", WRITE | STRING | FAST),
    ("INCRBYFLOAT", WRITE | STRING | FAST),
    ("INFO", SLOW | DANGEROUS),
    ("KEYS", KEYSPACE | READ | SLOW | DANGEROUS),
    ("LASTSAVE", ADMIN | FAST | DANGEROUS),
    ("LINDEX", READ | LIST | SLOW),
    ("LINSERT", WRITE | LIST | SLOW),
    ("LLEN", READ | LIST | FAST),
    ("LMOVE", WRITE | LIST | SLOW),
    ("LMPOP", WRITE | LIST | SLOW),
    ("LPOP", WRITE | LIST | FAST),
    ("LPOS", READ | LIST | SLOW),
    ("LPUSH", WRITE | LIST | FAST),
    ("LPUSHX", WRITE | LIST | FAST),
    ("LRANGE", READ | LIST | SLOW),
    ("LREM", WRITE | LIST | SLOW),
    ("LSET", WRITE | LIST | SLOW),
    ("LTRIM", WRITE | LIST | SLOW),
    ("MGET", READ | STRING | FAST),
    ("MIGRATE", KEYSPACE | WRITE | SLOW | DANGEROUS),
    ("MONITOR", ADMIN | SLOW | DANGEROUS),
    ("MOVE", KEYSPACE | WRITE | FAST),
    ("MSET", WRITE | STRING | SLOW),
    ("MSETNX", WRITE | STRING | SLOW),
    ("MULTI", FAST | TRANSACTION),
    ("OBJECT", SLOW),
    ("PERSIST", KEYSPACE | WRITE | FAST),
    ("PEXPIRE", KEYSPACE | WRITE | FAST),
    ("PEXPIREAT", KEYSPACE | WRITE | FAST),
    ("PEXPIRETIME", KEYSPACE | READ | FAST),
    ("PFADD", WRITE | HYPERLOGLOG | FAST),
    ("PFCOUNT", READ | HYPERLOGLOG | SLOW),
    ("PFMERGE", WRITE | HYPERLOGLOG | SLOW),
    ("PING", FAST | CONNECTION),
    ("PSETEX", WRITE | STRING | SLOW),
    ("PSUBSCRIBE", PUBSUB | SLOW),
    ("PTTL", KEYSPACE | READ | FAST),
    ("PUBLISH", PUBSUB | FAST),
    ("PUBSUB", SLOW),
    ("PUNSUBSCRIBE", PUBSUB | SLOW),
    ("QUIT", FAST | CONNECTION),
    ("RANDOMKEY", KEYSPACE | READ | SLOW),
    ("RENAME", KEYSPACE | WRITE | SLOW),
    ("RENAMENX", KEYSPACE | WRITE | FAST),
    ("REPLICAOF", ADMIN | SLOW | DANGEROUS),
    ("RESTORE", KEYSPACE | WRITE | SLOW | DANGEROUS),
    ("RPOP", WRITE | LIST | FAST),
    ("RPOPLPUSH", WRITE | LIST | SLOW),
    ("RPUSH", WRITE | LIST | FAST),
    ("RPUSHX", WRITE | LIST | FAST),
    ("SADD", WRITE | SET | FAST),
    ("SAVE", ADMIN | SLOW | DANGEROUS),
    ("SCAN", KEYSPACE | READ | SLOW),
    ("SCARD", READ | SET | FAST),
    ("SCRIPT", SLOW),
    ("SDIFF", READ | SET | SLOW),
    ("SDIFFSTORE", WRITE | SET | SLOW),
    ("SELECT", FAST | CONNECTION),
    ("SET", WRITE | STRING | SLOW),
    ("SETBIT", WRITE | BITMAP | SLOW),
    ("SETEX", WRITE | STRING | SLOW),
    ("SETNX", WRITE | STRING | FAST),
    ("SETRANGE", WRITE | STRING | SLOW),
    ("SHUTDOWN", ADMIN | SLOW | DANGEROUS),
    ("SINTER", READ | SET | SLOW),
    ("SINTERCARD", READ | SET | SLOW),
    ("SINTERSTORE", WRITE | SET | SLOW),
    ("SISMEMBER", READ | SET | FAST),
    ("SLAVEOF", ADMIN | SLOW | DANGEROUS),
    ("SLOWLOG", SLOW),
    ("SMEMBERS", READ | SET | SLOW),
    ("SMISMEMBER", READ | SET | FAST),
    ("SMOVE", WRITE | SET | FAST),
    ("SORT", WRITE | SET | SORTEDSET | LIST | SLOW | DANGEROUS),
    ("SORT_RO", READ | SET | SORTEDSET | LIST | SLOW | DANGEROUS),
    ("SPOP", WRITE | SET | FAST),
    ("SPUBLISH", PUBSUB | FAST),
    ("SRANDMEMBER", READ | SET | SLOW),
    ("SREM", WRITE | SET | FAST),
    ("SSCAN", READ | SET | SLOW),
    ("SSUBSCRIBE", PUBSUB | SLOW),
    ("STRLEN", READ | STRING | FAST),
    ("SUBSCRIBE", PUBSUB | SLOW),
    ("SUBSTR", READ | STRING | SLOW),
    ("SUNION", READ | SET | SLOW),
    ("SUNIONSTORE", WRITE | SET | SLOW),
    ("SUNSUBSCRIBE", PUBSUB | SLOW),
    ("SWAPDB", KEYSPACE | WRITE | FAST | DANGEROUS),
    ("TIME", FAST),
    ("TOUCH", KEYSPACE | READ | FAST),
    ("TTL", KEYSPACE | READ | FAST),
    ("TYPE", KEYSPACE | READ | FAST),
    ("UNLINK", KEYSPACE | WRITE | FAST),
    ("UNSUBSCRIBE", PUBSUB | SLOW),
    ("UNWATCH", FAST | TRANSACTION),
    ("WAIT", SLOW | CONNECTION),
    ("WATCH", FAST | TRANSACTION),
    ("XACK", WRITE | STREAM | FAST),
    ("XADD", WRITE | STREAM | FAST),
    ("XAUTOCLAIM", WRITE | STREAM | FAST),
    ("XCLAIM", WRITE | STREAM | FAST),
    ("XDEL", WRITE | STREAM | FAST),
    ("XGROUP", SLOW),
    ("XINFO", SLOW),
    ("XLEN", READ | STREAM | FAST),
    ("XPENDING", READ | STREAM | SLOW),
    ("XRANGE", READ | STREAM | SLOW),
    ("XREAD", READ | STREAM | SLOW | BLOCKING),
    ("XREADGROUP", WRITE | STREAM | SLOW | BLOCKING),
    ("XREVRANGE", READ | STREAM | SLOW),
    ("XSETID", WRITE | STREAM | FAST),
    ("XTRIM", WRITE | STREAM | SLOW),
    ("ZADD", WRITE | SORTEDSET | FAST),
    ("ZCARD", READ | SORTEDSET | FAST),
    ("ZCOUNT", READ | SORTEDSET | FAST),
    ("ZDIFF", READ | SORTEDSET | SLOW),
    ("ZDIFFSTORE", WRITE | SORTEDSET | SLOW),
    ("ZINCRBY", WRITE | SORTEDSET | FAST),
    ("ZINTER", READ | SORTEDSET | SLOW),
    ("ZINTERCARD", READ | SORTEDSET | SLOW),
    ("ZINTERSTORE", WRITE | SORTEDSET | SLOW),
    ("ZLEXCOUNT", READ | SORTEDSET | FAST),
    ("ZMPOP", WRITE | SORTEDSET | SLOW),
    ("ZMSCORE", READ | SORTEDSET | FAST),
    ("ZPOPMAX", WRITE | SORTEDSET | FAST),
    ("ZPOPMIN", WRITE | SORTEDSET | FAST),
    ("ZRANDMEMBER", READ | SORTEDSET | SLOW),
    ("ZRANGE", READ | SORTEDSET | SLOW),
    ("ZRANGEBYLEX", READ | SORTEDSET | SLOW),
    ("ZRANGEBYSCORE", READ | SORTEDSET | SLOW),
    ("ZRANGESTORE", WRITE | SORTEDSET | SLOW),
    ("ZRANK", READ | SORTEDSET | FAST),
    ("ZREM", WRITE | SORTEDSET | FAST),
    ("ZREMRANGEBYLEX", WRITE | SORTEDSET | SLOW),
    ("ZREMRANGEBYRANK", WRITE | SORTEDSET | SLOW),
    ("ZREMRANGEBYSCORE", WRITE | SORTEDSET | SLOW),
    ("ZREVRANGE", READ | SORTEDSET | SLOW),
    ("ZREVRANGEBYLEX", READ | SORTEDSET | SLOW),
    ("ZREVRANGEBYSCORE", READ | SORTEDSET | SLOW),
    ("ZREVRANK", READ | SORTEDSET | FAST),
    ("ZSCAN", READ | SORTEDSET | SLOW),
    ("ZSCORE", READ | SORTEDSET | FAST),
    ("ZUNION", READ | SORTEDSET | SLOW),
    ("ZUNIONSTORE", WRITE | SORTEDSET | SLOW),
];

/// The categories of the command named `name` (upper case).
fn categories_of(name: &[u8]) -> Option<u32> {
    COMMAND_CATEGORIES
        .binary_search_by(|(n, _)| n.as_bytes().cmp(name))
        .ok()
        .map(|i| COMMAND_CATEGORIES[i].1)
}

/// Whether the command named `name` (upper case) is a write (Redis's
/// `@write` category).
pub fn is_write(name: &[u8]) -> bool {
    categories_of(name).is_some_and(|c| c & WRITE != 0)
}

/// Whether the command `id` is a write (Redis's `@write` category): a
/// table lookup, for the request path.
pub fn is_write_command(id: CommandId) -> bool {
    static WRITES: std::sync::OnceLock<[bool; command::COMMAND_IDS]> = std::sync::OnceLock::new();
    WRITES.get_or_init(|| {
        let mut writes = [false; command::COMMAND_IDS];
        for (name, id) in command::redis_commands() {
            writes[id.index()] = is_write(name);
        }
        writes
    })[id.index()]
}

/// Whether the command `id` only reads (Redis's `@read` category, and not
/// `@write`): one a replica may answer.
pub fn is_read_only(id: CommandId) -> bool {
    static READS: std::sync::OnceLock<[bool; command::COMMAND_IDS]> = std::sync::OnceLock::new();
    READS.get_or_init(|| {
        let mut reads = [false; command::COMMAND_IDS];
        for (name, id) in command::redis_commands() {
            let categories = categories_of(name).unwrap_or(0);
            reads[id.index()] = categories & READ != 0 && categories & WRITE == 0;
        }
        reads
    })[id.index()]
}

/// The categories of a memcached command: reads (`get`, `gets`, `gat`,
/// `gats`, `mg`), writes (whatever stores or deletes), and connection
/// commands.
fn memcache_categories(command: ferrox_proto::memcache::Command) -> u32 {
    use ferrox_proto::memcache::Command as C;
    match command {
        C::Get | C::Gets | C::MetaGet => READ | FAST,
        C::Gat | C::Gats | C::Touch => WRITE | FAST,
        C::Set
        | C::Add
        | C::Replace
        | C::Append
        | C::Prepend
        | C::Cas
        | C::Delete
        | C::Incr
        | C::Decr
        | C::MetaSet
        | C::MetaDelete
        | C::MetaArithmetic => WRITE | FAST,
        C::Version | C::Quit | C::MetaNoop | C::Stats => CONNECTION | FAST,
    }
}

/// What one user may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    /// Allowed, by [`CommandId`] index.
    commands: Box<[bool; COMMAND_IDS]>,
    /// Key patterns; `all_keys` stands for `~*`.
    keys: Vec<Vec<u8>>,
    all_keys: bool,
}

impl Acl {
    /// Every command, every key: a pool's default user.
    pub fn everything() -> Acl {
        Acl::compile("allcommands allkeys").expect("valid rules")
    }

    /// Compiles `rules` (whose syntax the configuration checked); an
    /// unknown command name is refused with the reason.
    pub fn compile(rules: &str) -> Result<Acl, String> {
        let mut acl = Acl {
            commands: Box::new([false; COMMAND_IDS]),
            keys: Vec::new(),
            all_keys: false,
        };
        for word in rules.split_whitespace() {
            match word {
                "allcommands" => acl.set_category(ALL, true),
                "nocommands" => acl.set_category(ALL, false),
                "allkeys" => {
                    acl.all_keys = true;
                    acl.keys.clear();
                }
                "resetkeys" => {
                    acl.all_keys = false;
                    acl.keys.clear();
                }
                _ => {
                    let (allow, rest) = match word.split_at(1) {
                        ("+", rest) => (true, rest),
                        ("-", rest) => (false, rest),
                        ("~", "*") => {
                            acl.all_keys = true;
                            continue;
                        }
                        ("~", pattern) => {
                            acl.keys.push(pattern.as_bytes().to_vec());
                            continue;
                        }
                        _ => return Err(format!("{word:?}: not a rule")),
                    };
                    if let Some(category) = rest.strip_prefix('@') {
                        let bits = CATEGORIES
                            .iter()
                            .find(|(name, _)| *name == category)
                            .map(|&(_, bits)| bits)
                            .ok_or_else(|| format!("{word:?}: unknown category"))?;
                        acl.set_category(bits, allow);
                    } else {
                        let (found, _) = command::lookup_blocked(rest.as_bytes(), &[]);
                        let (id, _) =
                            found.ok_or_else(|| format!("{word:?}: unknown command {rest:?}"))?;
                        acl.commands[id.index()] = allow;
                    }
                }
            }
        }
        Ok(acl)
    }

    fn set_category(&mut self, bits: u32, allow: bool) {
        for (name, id) in command::redis_commands() {
            let categories = categories_of(name).unwrap_or(0);
            if bits == ALL || categories & bits != 0 {
                self.commands[id.index()] = allow;
            }
        }
        for command in ferrox_proto::memcache::COMMANDS {
            if bits == ALL || memcache_categories(command) & bits != 0 {
                self.commands[CommandId::memcache(command).index()] = allow;
            }
        }
    }

    pub fn allows_command(&self, id: CommandId) -> bool {
        self.commands[id.index()]
    }

    pub fn allows_key(&self, key: &[u8]) -> bool {
        self.all_keys || self.keys.iter().any(|pattern| glob(pattern, key))
    }
}

/// Redis's glob match (`stringmatchlen`): `*`, `?`, `[...]` with ranges
/// and `^` negation, and `\\` escapes.
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // The common form, a literal prefix and one `*` (`user:*`), is a
    // prefix comparison.
    let is_meta = |c: &u8| matches!(c, b'*' | b'?' | b'[' | b'\\');
    if let Some((b'*', prefix)) = pattern.split_last() {
        if !prefix.iter().any(is_meta) {
            return text.starts_with(prefix);
        }
    }
    glob_general(pattern, text)
}

/// [`glob`] for any pattern.
fn glob_general(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern after it, text).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let matched = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class(pattern, p, text[t]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == text[t]).then_some(p + 2),
            Some(&c) => (c == text[t]).then_some(p + 1),
            None => None,
        };
        match (matched, star) {
            (Some(next), _) => {
                p = next;
                t += 1;
            }
            (None, Some((after, from))) => {
                p = after;
                t = from + 1;
                star = Some((after, from + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Whether `c` is in the class opening at `pattern[at]` (`[`): the
/// pattern index after the class, or `None`.
fn class(pattern: &[u8], at: usize, c: u8) -> Option<usize> {
    let mut i = at + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut found = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            found |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = (
                pattern[i].min(pattern[i + 2]),
                pattern[i].max(pattern[i + 2]),
            );
            found |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            found |= pattern[i] == c;
            i += 1;
        }
    }
    // An unclosed class matches as Redis does: up to the end.
    (found != negate).then_some((i + 1).min(pattern.len()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn id(name: &str) -> CommandId {
        command::lookup_blocked(name.as_bytes(), &[]).0.unwrap().0
    }

    #[test]
    fn every_command_of_the_table_has_its_categories() {
        for (name, _) in command::redis_commands() {
            assert!(
                categories_of(name).is_some(),
                "{} has no categories",
                String::from_utf8_lossy(name)
            );
        }
        assert!(
            COMMAND_CATEGORIES.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted"
        );
    }

    #[test]
    fn rules_apply_in_order() {
        let acl = Acl::compile("+@read ~report:*").unwrap();
        assert!(acl.allows_command(id("GET")) && acl.allows_command(id("mget")));
        assert!(!acl.allows_command(id("SET")) && !acl.allows_command(id("FLUSHALL")));
        assert!(acl.allows_key(b"report:1") && !acl.allows_key(b"user:1"));
        let acl = Acl::compile("allcommands -@dangerous +keys allkeys").unwrap();
        assert!(acl.allows_command(id("SET")) && acl.allows_command(id("KEYS")));
        assert!(!acl.allows_command(id("FLUSHDB")));
        assert!(acl.allows_key(b"anything"));
        let acl = Acl::compile("+@all -set ~a resetkeys ~b").unwrap();
        assert!(!acl.allows_command(id("SET")) && acl.allows_command(id("GET")));
        assert!(!acl.allows_key(b"a") && acl.allows_key(b"b"));
        assert!(!Acl::compile("").unwrap().allows_command(id("PING")));
        assert_eq!(
            Acl::compile("+nosuch"),
            Err("\"+nosuch\": unknown command \"nosuch\"".into())
        );
    }

    proptest! {
        /// The prefix fast path agrees with the general matcher.
        #[test]
        fn a_prefix_pattern_matches_as_the_general_matcher_does(
            prefix in "[a-c:]{0,4}",
            text in "[a-c:]{0,6}",
        ) {
            let pattern = format!("{prefix}*");
            prop_assert_eq!(
                glob(pattern.as_bytes(), text.as_bytes()),
                glob_general(pattern.as_bytes(), text.as_bytes())
            );
        }
    }

    #[test]
    fn globs_match_as_redis_matches() {
        for (pattern, text, expected) in [
            ("*", "", true),
            ("report:*", "report:1", true),
            ("report:*", "reports", false),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "heeeello", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[a-b]llo", "hcllo", false),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b*", "xxbxxaxx", false),
            ("{user}:*", "{user}:1", true),
        ] {
            assert_eq!(
                glob(pattern.as_bytes(), text.as_bytes()),
                expected,
                "{pattern} {text}"
            );
        }
    }
}
