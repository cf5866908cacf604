//! The Redis command table: where each command's keys are, and what the
//! proxy does with it.
//!
//! Lookup hashes the name with ASCII case folded and probes an
//! open-addressing index over the static table, built once; no copy of
//! the name and no allocation per request (a sorted-table binary search
//! was a quarter of the engine's time on a GET). A command missing from the
//! table is unknown; a command present as [`Route::Refuse`] is known but
//! cannot be proxied safely, and the client is told why.

use ferrox_proto::memcache;

/// How the proxy handles a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Answered by the proxy itself.
    Local(Local),
    /// One key, at argument `1`; sent whole to the key's server.
    Single,
    /// Several keys that must live on one server (a hashtag puts them
    /// there); refused when they do not.
    Together(Keys),
    /// Split per server and merged back in key order.
    Split(Merge),
    /// Sent whole to every server of the pool that takes keys, the
    /// replies merged (`DBSIZE`, `FLUSHDB`, `KEYS`).
    All(Merge),
    /// `SCAN`: one server after another, the cursor carrying which.
    Scan,
    /// A blocking command (`BLPOP`, ...): its keys on one server, as
    /// [`Route::Together`], sent on a connection of its own that it holds
    /// until answered, so the shared ones do not wait behind it.
    Blocking(Keys),
    /// Known, but not safe to proxy; the reason is part of the reply.
    Refuse(&'static str),
}

/// Where the keys of a [`Route::Together`] command are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// Every argument from 1 on.
    All,
    /// Arguments 1 and 2.
    Two,
    /// Every argument from 2 on (`BITOP op dest src...`).
    AfterFirst,
    /// Every argument from 1 on but the last (`BLPOP k... timeout`).
    AllButLast,
    /// The first half of the arguments after `STREAMS` (`XREAD`,
    /// `XREADGROUP`; with `BLOCK`, a blocking command): see
    /// [`stream_keys`].
    Streams,
    /// The count is argument `at`, the keys follow it; with `dest`,
    /// argument 1 is a key too (`ZUNIONSTORE dest numkeys k...`).
    Counted { at: usize, dest: bool },
}

/// How the replies of a split command's pieces are put back together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// `MGET`: an array with one element per key, in key order.
    Array,
    /// `DEL`, `UNLINK`, `EXISTS`, `TOUCH`: integers summed.
    Sum,
    /// `MSET`: `+OK` when every piece says so (key-value pairs).
    Ok,
    /// `KEYS`: the pieces' arrays one after another.
    Concat,
    /// `RANDOMKEY`: the first piece's key that is not null, the pieces
    /// taken from a random server on.
    AnyKey,
    /// `PUBSUB NUMPAT`: every server says the same (patterns are
    /// subscribed on all of them): the first piece.
    First,
    /// `PUBSUB NUMSUB`: flat `name, count` pairs, the counts added up.
    SumPairs,
    /// `WAIT`: the least of the pieces' integers.
    Min,
}

/// Commands the proxy answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    Auth,
    Client,
    Command,
    Config,
    Echo,
    Hello,
    Info,
    /// `MULTI`, `EXEC`, `DISCARD`, `UNWATCH`: transactions whose keys are
    /// on one server, queued by the proxy and sent together.
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    /// `PUBSUB CHANNELS|NUMSUB|NUMPAT`, asked of every server.
    Pubsub,
    /// `SUBSCRIBE`, `PSUBSCRIBE`, `UNSUBSCRIBE`, `PUNSUBSCRIBE`.
    Subscribe,
    Psubscribe,
    Unsubscribe,
    Punsubscribe,
    /// `SSUBSCRIBE`, `SUNSUBSCRIBE`: sharded pub/sub.
    Ssubscribe,
    Sunsubscribe,
    Ping,
    Quit,
    Select,
    /// `WAIT numreplicas timeout`: asked of every server on the client's
    /// own (shared) connections, the least count the answer.
    Wait,
}

const ADMIN: &str = "administrative commands go to the servers directly";
const SCRIPT: &str = "scripts without keys cannot be routed";

/// A command table from `NAME` entries, sent whole to the key's server
/// ([`Route::Single`], most commands), and `NAME: route` entries.
macro_rules! commands {
    (@route) => {
        Route::Single
    };
    (@route $route:expr) => {
        $route
    };
    ($($name:ident $(: $route:expr)?),* $(,)?) => {
        &[$((stringify!($name).as_bytes(), commands!(@route $($route)?))),*]
    };
}

/// Sorted by name (a test checks), upper case; a line or more per initial.
static TABLE: &[(&[u8], Route)] = {
    use self::Local as L;
    use Route::{All, Blocking, Refuse, Split, Together};
    // `numkeys` is argument 1 or 2 and the keys follow it; with a
    // destination, argument 1 is a key too.
    const NUMKEYS_1: Route = Together(Keys::Counted { at: 1, dest: false });
    const NUMKEYS_2: Route = Together(Keys::Counted { at: 2, dest: false });
    const DEST_NUMKEYS_2: Route = Together(Keys::Counted { at: 2, dest: true });
    commands! {
        ACL: Refuse(ADMIN), APPEND, AUTH: Route::Local(L::Auth),
        BGREWRITEAOF: Refuse(ADMIN), BGSAVE: Refuse(ADMIN), BITCOUNT, BITFIELD, BITFIELD_RO,
        BITOP: Together(Keys::AfterFirst), BITPOS, BLMOVE: Blocking(Keys::Two),
        BLMPOP: Blocking(Keys::Counted { at: 2, dest: false }), BLPOP: Blocking(Keys::AllButLast),
        BRPOP: Blocking(Keys::AllButLast), BRPOPLPUSH: Blocking(Keys::Two),
        BZMPOP: Blocking(Keys::Counted { at: 2, dest: false }),
        BZPOPMAX: Blocking(Keys::AllButLast), BZPOPMIN: Blocking(Keys::AllButLast),
        CLIENT: Route::Local(L::Client), CLUSTER: Refuse(ADMIN), COMMAND: Route::Local(L::Command),
        CONFIG: Route::Local(L::Config), COPY: Together(Keys::Two),
        DBSIZE: All(Merge::Sum), DEBUG: Refuse(ADMIN), DECR, DECRBY, DEL: Split(Merge::Sum),
        DISCARD: Route::Local(L::Discard), DUMP,
        ECHO: Route::Local(L::Echo), EVAL: NUMKEYS_2, EVALSHA: NUMKEYS_2, EVALSHA_RO: NUMKEYS_2,
        EVAL_RO: NUMKEYS_2, EXEC: Route::Local(L::Exec), EXISTS: Split(Merge::Sum), EXPIRE, EXPIREAT,
        EXPIRETIME,
        FAILOVER: Refuse(ADMIN), FCALL: NUMKEYS_2, FCALL_RO: NUMKEYS_2,
        FLUSHALL: All(Merge::Ok), FLUSHDB: All(Merge::Ok), FUNCTION: Refuse(ADMIN),
        GEOADD, GEODIST, GEOHASH, GEOPOS, GEORADIUS, GEORADIUSBYMEMBER, GEORADIUSBYMEMBER_RO,
        GEORADIUS_RO, GEOSEARCH, GEOSEARCHSTORE: Together(Keys::Two), GET, GETBIT, GETDEL, GETEX,
        GETRANGE, GETSET,
        HDEL, HELLO: Route::Local(L::Hello), HEXISTS, HGET, HGETALL, HINCRBY, HINCRBYFLOAT, HKEYS,
        HLEN, HMGET, HMSET, HRANDFIELD, HSCAN, HSET, HSETNX, HSTRLEN, HVALS,
        INCR, INCRBY, INCRBYFLOAT, INFO: Route::Local(L::Info),
        KEYS: All(Merge::Concat),
        LASTSAVE: Refuse(ADMIN), LINDEX, LINSERT, LLEN, LMOVE: Together(Keys::Two),
        LMPOP: NUMKEYS_1, LPOP, LPOS, LPUSH, LPUSHX, LRANGE, LREM, LSET, LTRIM,
        MGET: Split(Merge::Array), MIGRATE: Refuse(ADMIN), MONITOR: Refuse(ADMIN),
        MOVE: Refuse(ADMIN), MSET: Split(Merge::Ok), MSETNX: Together(Keys::All),
        MULTI: Route::Local(L::Multi),
        OBJECT: Refuse(ADMIN),
        PERSIST, PEXPIRE, PEXPIREAT, PEXPIRETIME, PFADD, PFCOUNT: Together(Keys::All),
        PFMERGE: Together(Keys::All), PING: Route::Local(L::Ping), PSETEX,
        PSUBSCRIBE: Route::Local(L::Psubscribe), PTTL, PUBLISH, PUBSUB: Route::Local(L::Pubsub),
        PUNSUBSCRIBE: Route::Local(L::Punsubscribe),
        QUIT: Route::Local(L::Quit),
        RANDOMKEY: All(Merge::AnyKey), RENAME: Together(Keys::Two), RENAMENX: Together(Keys::Two),
        REPLICAOF: Refuse(ADMIN), RESTORE, RPOP, RPOPLPUSH: Together(Keys::Two), RPUSH, RPUSHX,
        SADD, SAVE: Refuse(ADMIN), SCAN: Route::Scan, SCARD, SCRIPT: Refuse(SCRIPT),
        SDIFF: Together(Keys::All), SDIFFSTORE: Together(Keys::All),
        SELECT: Route::Local(L::Select), SET, SETBIT, SETEX, SETNX, SETRANGE,
        SHUTDOWN: Refuse(ADMIN), SINTER: Together(Keys::All), SINTERCARD: NUMKEYS_1,
        SINTERSTORE: Together(Keys::All), SISMEMBER, SLAVEOF: Refuse(ADMIN), SLOWLOG: Refuse(ADMIN),
        SMEMBERS, SMISMEMBER, SMOVE: Together(Keys::Two), SORT, SORT_RO, SPOP,
        SPUBLISH, SRANDMEMBER, SREM, SSCAN, SSUBSCRIBE: Route::Local(L::Ssubscribe), STRLEN,
        SUBSCRIBE: Route::Local(L::Subscribe), SUBSTR, SUNION: Together(Keys::All),
        SUNIONSTORE: Together(Keys::All), SUNSUBSCRIBE: Route::Local(L::Sunsubscribe),
        SWAPDB: Refuse(ADMIN),
        TIME: Refuse(ADMIN), TOUCH: Split(Merge::Sum), TTL, TYPE,
        UNLINK: Split(Merge::Sum), UNSUBSCRIBE: Route::Local(L::Unsubscribe), UNWATCH: Route::Local(L::Unwatch),
        WAIT: Route::Local(L::Wait), WATCH: Route::Local(L::Watch),
        XACK, XADD, XAUTOCLAIM, XCLAIM, XDEL, XGROUP: Refuse(ADMIN), XINFO: Refuse(ADMIN), XLEN,
        XPENDING, XRANGE, XREAD: Together(Keys::Streams), XREADGROUP: Together(Keys::Streams),
        XREVRANGE, XSETID,
        XTRIM,
        ZADD, ZCARD, ZCOUNT, ZDIFF: NUMKEYS_1, ZDIFFSTORE: DEST_NUMKEYS_2, ZINCRBY,
        ZINTER: NUMKEYS_1, ZINTERCARD: NUMKEYS_1, ZINTERSTORE: DEST_NUMKEYS_2, ZLEXCOUNT,
        ZMPOP: NUMKEYS_1, ZMSCORE, ZPOPMAX, ZPOPMIN, ZRANDMEMBER, ZRANGE, ZRANGEBYLEX,
        ZRANGEBYSCORE, ZRANGESTORE: Together(Keys::Two), ZRANK, ZREM, ZREMRANGEBYLEX,
        ZREMRANGEBYRANK, ZREMRANGEBYSCORE, ZREVRANGE, ZREVRANGEBYLEX, ZREVRANGEBYSCORE, ZREVRANK,
        ZSCAN, ZSCORE, ZUNION: NUMKEYS_1, ZUNIONSTORE: DEST_NUMKEYS_2,
    }
};

/// The longest command name in the table.
const MAX_NAME: usize = 24;

/// The route of the command named `name` (any case), or `None` when the
/// command is unknown.
pub fn lookup(name: &[u8]) -> Option<Route> {
    lookup_blocked(name, &[]).0.map(|(_, route)| route)
}

/// A command's place in the per-command statistics: the Redis table's
/// entries in order, then memcached's commands in their declaration order.
/// Plain numbers, so a statistics record in shared memory can be read by
/// another binary that has the same table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandId(u16);

/// How many [`CommandId`]s there can be (statistics records have this many
/// counters).
pub const COMMAND_IDS: usize = 256;

/// memcached's commands, in declaration order (`Command as usize`).
const MEMCACHE: [memcache::Command; 22] = {
    use memcache::Command as C;
    [
        C::Get,
        C::Gets,
        C::Gat,
        C::Gats,
        C::Set,
        C::Add,
        C::Replace,
        C::Append,
        C::Prepend,
        C::Cas,
        C::Delete,
        C::Incr,
        C::Decr,
        C::Touch,
        C::Version,
        C::Quit,
        C::MetaGet,
        C::MetaSet,
        C::MetaDelete,
        C::MetaArithmetic,
        C::MetaNoop,
        C::Stats,
    ]
};

impl CommandId {
    pub fn memcache(command: memcache::Command) -> CommandId {
        CommandId((TABLE.len() + command as usize) as u16)
    }

    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The protocol and the name of the command at `index`, if any.
    pub fn describe(index: usize) -> Option<(&'static str, &'static str)> {
        if let Some((name, _)) = TABLE.get(index) {
            return Some(("redis", std::str::from_utf8(name).expect("ASCII names")));
        }
        let command = MEMCACHE.get(index.checked_sub(TABLE.len())?)?;
        Some(("memcache", command.name()))
    }
}

/// Every Redis command of the table, by name (upper case), with its id.
pub fn redis_commands() -> impl Iterator<Item = (&'static [u8], CommandId)> {
    TABLE
        .iter()
        .enumerate()
        .map(|(i, &(name, _))| (name, CommandId(i as u16)))
}

/// The statistics id and route of the command named `name` (any case),
/// and whether it is one of the upper-case names in `blocked`.
pub fn lookup_blocked(name: &[u8], blocked: &[Vec<u8>]) -> (Option<(CommandId, Route)>, bool) {
    if name.len() > MAX_NAME {
        return (None, false);
    }
    let index = INDEX.get_or_init(Index::build);
    let mut at = folded_hash(name) as usize & index.mask;
    let route = loop {
        match index.slots[at] {
            0 => break None,
            entry => {
                let (known, route) = TABLE[entry as usize - 1];
                if known.eq_ignore_ascii_case(name) {
                    break Some((CommandId(entry - 1), route));
                }
            }
        }
        at = (at + 1) & index.mask;
    };
    let blocked = blocked.iter().any(|b| b.eq_ignore_ascii_case(name));
    (route, blocked)
}

/// FNV-1a over the name with ASCII letters upper-cased.
fn folded_hash(name: &[u8]) -> u64 {
    name.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b.to_ascii_uppercase() as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Open addressing over [`TABLE`]: slot = table index + 1, 0 is empty; at
/// most a quarter full, so probes stay short.
#[derive(Debug)]
struct Index {
    slots: Vec<u16>,
    mask: usize,
}

static INDEX: std::sync::OnceLock<Index> = std::sync::OnceLock::new();

impl Index {
    fn build() -> Index {
        let size = (TABLE.len() * 4).next_power_of_two();
        let mut slots = vec![0u16; size];
        for (i, (name, _)) in TABLE.iter().enumerate() {
            let mut at = folded_hash(name) as usize & (size - 1);
            while slots[at] != 0 {
                at = (at + 1) & (size - 1);
            }
            slots[at] = i as u16 + 1;
        }
        Index {
            slots,
            mask: size - 1,
        }
    }
}

/// The argument indices that are keys, for a request of `argc` arguments
/// whose arguments are read through `arg`. `Err` names what is wrong with
/// the request (a missing or bad key count).
pub fn key_positions(
    route: Route,
    argc: usize,
    arg: impl Fn(usize) -> Option<i64>,
) -> Result<std::ops::Range<usize>, &'static str> {
    let keys = match route {
        Route::Single if argc >= 2 => 1..2,
        // Key-value pairs.
        Route::Split(Merge::Ok) => match argc {
            3.. if argc % 2 == 1 => 1..argc,
            _ => return Err("wrong number of arguments"),
        },
        Route::Split(_) if argc >= 2 => 1..argc,
        Route::Together(keys) | Route::Blocking(keys) => return together_keys(keys, argc, arg),
        _ => return Err("wrong number of arguments"),
    };
    Ok(keys)
}

/// The key arguments of [`Keys`] in a request of `argc` arguments.
fn together_keys(
    keys: Keys,
    argc: usize,
    arg: impl Fn(usize) -> Option<i64>,
) -> Result<std::ops::Range<usize>, &'static str> {
    let keys = match keys {
        Keys::All if argc >= 2 => 1..argc,
        Keys::Two if argc >= 3 => 1..3,
        Keys::AfterFirst if argc >= 4 => 2..argc,
        Keys::AllButLast if argc >= 3 => 1..argc - 1,
        // Found by name, not by position.
        Keys::Streams => return Err("the keys follow STREAMS"),
        Keys::Counted { at, .. } if argc > at => {
            let count = arg(at)
                .filter(|&n| n >= 0)
                .ok_or("the key count is not a valid number")? as usize;
            let first = at + 1;
            if count == 0 {
                return Err("the command names no key to route by");
            }
            if first + count > argc {
                return Err("the key count does not match the arguments");
            }
            // With `dest`, argument 1 is a key too; the caller checks it
            // separately (see `dest_key`).
            first..first + count
        }
        _ => return Err("wrong number of arguments"),
    };
    Ok(keys)
}

/// The keys of an `XREAD`/`XREADGROUP` (`name(i)` is argument `i`): the
/// first half of the arguments after `STREAMS`; and whether it blocks
/// (`BLOCK` before `STREAMS`).
pub fn stream_keys<'a>(
    argc: usize,
    name: impl Fn(usize) -> &'a [u8],
) -> Result<(std::ops::Range<usize>, bool), &'static str> {
    let streams = (1..argc)
        .find(|&i| name(i).eq_ignore_ascii_case(b"STREAMS"))
        .ok_or("STREAMS is missing")?;
    let rest = argc - streams - 1;
    if rest == 0 || rest % 2 == 1 {
        return Err("unbalanced list of streams and IDs");
    }
    let blocking = (1..streams).any(|i| name(i).eq_ignore_ascii_case(b"BLOCK"));
    Ok((streams + 1..streams + 1 + rest / 2, blocking))
}

/// What `COMMAND INFO` says of a command: its arity (negative: at least
/// that many arguments, the name included), its flags, and its first and
/// last key and the step between keys (0, 0, 0 when it has none, or
/// when they move: the flag `movablekeys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandInfo {
    pub name: &'static str,
    pub arity: i64,
    pub flags: &'static [&'static str],
    pub keys: (i64, i64, i64),
}

/// Every command the proxy serves (answered itself or routed), in name
/// order: what `COMMAND`, `COMMAND COUNT` and `COMMAND LIST` show.
pub fn served() -> impl Iterator<Item = CommandInfo> {
    TABLE.iter().filter_map(|&(name, route)| {
        let name = std::str::from_utf8(name).expect("ASCII names");
        let (arity, flags, keys): (i64, &'static [&'static str], _) = match route {
            Route::Refuse(_) => return None,
            Route::Local(_) => (-1, &["fast"], (0, 0, 0)),
            Route::Single => (-2, &[], (1, 1, 1)),
            Route::Split(Merge::Ok) => (-3, &[], (1, -1, 2)),
            Route::Split(_) => (-2, &[], (1, -1, 1)),
            Route::All(_) => (-1, &[], (0, 0, 0)),
            Route::Scan => (-2, &["readonly"], (0, 0, 0)),
            Route::Together(Keys::All) => (-2, &[], (1, -1, 1)),
            Route::Together(Keys::Two) => (-3, &[], (1, 2, 1)),
            Route::Together(Keys::AfterFirst) => (-4, &[], (2, -1, 1)),
            Route::Together(Keys::AllButLast) => (-3, &[], (1, -2, 1)),
            Route::Together(Keys::Streams) | Route::Blocking(Keys::Streams) => {
                (-4, &["blocking", "movablekeys"], (0, 0, 0))
            }
            Route::Together(Keys::Counted { at, .. }) => {
                (-(at as i64 + 2), &["movablekeys"], (0, 0, 0))
            }
            Route::Blocking(Keys::AllButLast) => (-3, &["blocking"], (1, -2, 1)),
            Route::Blocking(Keys::Two) => (-4, &["blocking"], (1, 2, 1)),
            Route::Blocking(_) => (-4, &["blocking", "movablekeys"], (0, 0, 0)),
        };
        Some(CommandInfo {
            name,
            arity,
            flags,
            keys,
        })
    })
}

/// What the proxy does with a command, in a few words, for the support
/// table in the documentation.
fn describe_route(route: Route) -> String {
    match route {
        Route::Local(Local::Pubsub) => "`CHANNELS`, `NUMSUB`, `NUMPAT`, `SHARDCHANNELS`, \
            `SHARDNUMSUB`: asked of every server, the answers merged"
            .into(),
        Route::Local(Local::Watch) => {
            "on a connection of the client's own to the keys' server, kept until `EXEC`, \
             `DISCARD` or `UNWATCH` (the transaction then runs there)"
                .into()
        }
        Route::Local(Local::Multi | Local::Exec | Local::Discard) => {
            "a transaction: its commands queued by ferrox, sent at `EXEC` as `MULTI` … `EXEC` on a \
             connection of its own (every key on one server)"
                .into()
        }
        Route::Local(
            Local::Subscribe
            | Local::Psubscribe
            | Local::Unsubscribe
            | Local::Punsubscribe
            | Local::Ssubscribe
            | Local::Sunsubscribe,
        ) => "pub/sub: on a connection of the client's own to the channel's server (a pattern's: \
              to every server; in a Redis Cluster pool, to one node), messages passed on as they come"
            .into(),
        Route::Local(Local::Wait) => "asked of every server on the connections the client's \
            writes went through, the least count the reply; the timeout is at most 1 s (or half \
            the pool's `timeout_ms`), since other clients' requests wait behind it there"
            .into(),
        Route::Local(_) => "answered by ferrox".into(),
        Route::Single => "sent to the key's server".into(),
        Route::Together(Keys::Streams) => "sent to the keys' server (every key must be on one); \
            with `BLOCK`, on a connection of its own held until it answers"
            .into(),
        Route::Together(_) => {
            "sent to the keys' server (every key must be on one: use a hashtag)".into()
        }
        Route::Split(Merge::Array) => "split per server, replies merged in key order".into(),
        Route::Split(Merge::Sum) => "split per server, counts summed".into(),
        Route::Split(_) => "split per server, `OK` when every server says so".into(),
        Route::All(Merge::Sum) => "sent to every server, counts summed".into(),
        Route::All(Merge::Concat) => "sent to every server, the arrays joined".into(),
        Route::All(Merge::AnyKey) => {
            "sent to every server, the first key found from a random one on".into()
        }
        Route::All(_) => "sent to every server, `OK` when every server says so".into(),
        Route::Scan => "one server after another, the cursor naming the server".into(),
        Route::Blocking(_) => "sent to the keys' server on a connection of its own, held until \
            it answers (every key must be on one server)"
            .into(),
        Route::Refuse(why) => format!("refused: {why}"),
    }
}

/// The command support table of `docs/commands.md` (a test keeps the
/// file equal to it).
pub fn support_table() -> String {
    let mut out = String::from(
        "# Commands through ferrox\n\n\
         Generated from the command table (`crates/engine/src/command.rs`); a\n\
         test fails when this file and the table differ\n\
         (`FERROX_BLESS=1 cargo test -p ferrox-engine support_table` writes it).\n\
         Any command not listed is unknown to ferrox and answered\n\
         `-ERR ferrox: unknown command`; a pool's `blocked_commands` are\n\
         refused too.\n\n## Redis\n\n| command | through ferrox |\n|---|---|\n",
    );
    for &(name, route) in TABLE {
        let name = std::str::from_utf8(name).expect("ASCII names");
        out += &format!("| `{name}` | {} |\n", describe_route(route));
    }
    out += "\n## memcached (text protocol)\n\n| command | through ferrox |\n|---|---|\n";
    for command in MEMCACHE {
        let what = match command {
            memcache::Command::Version
            | memcache::Command::Quit
            | memcache::Command::MetaNoop
            | memcache::Command::Stats => "answered by ferrox",
            c if c.is_retrieval() => {
                "sent to the key's server; several keys split per server, values merged in key order"
            }
            _ => "sent to the key's server",
        };
        out += &format!("| `{}` | {what} |\n", command.name());
    }
    out += BINARY_PROTOCOL;
    out
}

/// The binary protocol's part of the support table.
const BINARY_PROTOCOL: &str = "
## memcached (binary protocol)

A connection whose request starts with byte 0x80 is read as the binary
protocol, request by request. Each request is sent to its key's server as
a meta command (memcached 1.6 or later), on the same pools, placement and
connections as the text protocol, and the meta reply goes back as the
binary response memcached would send (status, opaque, cas, flags; quiet
variants answer only what memcached answers). A key that is no text token
(spaces, control bytes) is sent base64-encoded (the meta `b` flag).

| opcode | through ferrox |
|---|---|
| `get`, `getq`, `getk`, `getkq` | `mg <key> f v c` to the key's server |
| `set`, `add`, `replace` (and quiet) | `ms` with mode `S`, `E`, `R`; flags, expiry and cas kept |
| `append`, `prepend` (and quiet) | `ms` with mode `A`, `P` |
| `delete` (and quiet) | `md`, cas kept |
| `increment`, `decrement` (and quiet) | `ma`, created with the initial value unless the expiry is `0xffffffff` |
| `touch`, `gat`, `gatq`, `gatk`, `gatkq` | `mg` with `T` |
| `noop`, `version`, `quit`, `quitq` | answered by ferrox |
| `stat` | answered by ferrox (its own `stats`); a stat group is refused `not supported` |
| `flush`, `flushq` | refused `not supported`: flush each server |
| any other opcode (SASL, verbosity, ...) | `unknown command`; the connection goes on |

A malformed packet (lengths that do not fit its opcode, a key over 250
bytes) is answered `invalid arguments` and the connection closed, as
memcached does; a value over the pool's limit is answered `too large` and
the connection closed.
";

/// Whether argument 1 is a key besides the counted ones.
pub fn dest_key(route: Route) -> bool {
    matches!(route, Route::Together(Keys::Counted { dest: true, .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_support_table_in_the_docs_is_the_command_tables() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/commands.md");
        let table = support_table();
        if std::env::var_os("FERROX_BLESS").is_some() {
            std::fs::write(&path, &table).unwrap();
        }
        let written = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            written == table,
            "docs/commands.md differs from the command table: FERROX_BLESS=1 cargo test -p ferrox-engine support_table"
        );
    }

    #[test]
    fn every_command_has_a_statistics_id_that_names_it() {
        assert!(TABLE.len() + MEMCACHE.len() <= COMMAND_IDS);
        for (i, command) in MEMCACHE.iter().enumerate() {
            assert_eq!(*command as usize, i);
            let id = CommandId::memcache(*command);
            assert_eq!(
                CommandId::describe(id.index()),
                Some(("memcache", command.name()))
            );
        }
        let (found, _) = lookup_blocked(b"mget", &[]);
        let (id, _) = found.unwrap();
        assert_eq!(CommandId::describe(id.index()), Some(("redis", "MGET")));
        assert_eq!(CommandId::describe(TABLE.len() + MEMCACHE.len()), None);
    }

    #[test]
    fn table_is_sorted_upper_case_and_fits_the_buffer() {
        for pair in TABLE.windows(2) {
            assert!(
                pair[0].0 < pair[1].0,
                "{:?}",
                std::str::from_utf8(pair[1].0)
            );
        }
        for (name, _) in TABLE {
            assert!(name.len() <= MAX_NAME);
            assert!(name.iter().all(|b| !b.is_ascii_lowercase()));
        }
    }

    #[test]
    fn every_table_entry_is_found_in_any_case() {
        for (name, route) in TABLE {
            assert_eq!(lookup(name), Some(*route));
            assert_eq!(lookup(&name.to_ascii_lowercase()), Some(*route));
        }
        let blocked = vec![b"KEYS".to_vec()];
        assert!(lookup_blocked(b"keys", &blocked).1);
        assert_eq!(lookup_blocked(b"key", &blocked), (None, false));
    }

    #[test]
    fn stream_reads_have_their_keys_after_streams() {
        let args: Vec<&[u8]> = vec![
            b"XREAD", b"COUNT", b"2", b"block", b"0", b"streams", b"a", b"b", b"0", b"$",
        ];
        assert_eq!(stream_keys(args.len(), |i| args[i]), Ok((6..8, true)));
        let args: Vec<&[u8]> = vec![b"XREADGROUP", b"GROUP", b"g", b"c", b"STREAMS", b"k", b">"];
        assert_eq!(stream_keys(args.len(), |i| args[i]), Ok((5..6, false)));
        let args: Vec<&[u8]> = vec![b"XREAD", b"STREAMS", b"a", b"b", b"0"];
        assert!(stream_keys(args.len(), |i| args[i]).is_err());
        let args: Vec<&[u8]> = vec![b"XREAD", b"BLOCK", b"0"];
        assert!(stream_keys(args.len(), |i| args[i]).is_err());
    }

    #[test]
    fn lookup_ignores_case_and_knows_unknown() {
        assert_eq!(lookup(b"get"), Some(Route::Single));
        assert_eq!(lookup(b"mGeT"), Some(Route::Split(Merge::Array)));
        assert_eq!(lookup(b"BLPOP"), Some(Route::Blocking(Keys::AllButLast)));
        assert_eq!(lookup(b"wait"), Some(Route::Local(Local::Wait)));
        assert_eq!(lookup(b"NOPE"), None);
        assert_eq!(lookup(b""), None);
        assert_eq!(lookup(&[b'A'; 100]), None);
    }

    #[test]
    fn key_positions_per_shape() {
        let none = |_| None;
        assert_eq!(key_positions(Route::Single, 3, none), Ok(1..2));
        assert!(key_positions(Route::Single, 1, none).is_err());
        assert_eq!(key_positions(Route::Split(Merge::Ok), 5, none), Ok(1..5));
        assert!(key_positions(Route::Split(Merge::Ok), 4, none).is_err());
        assert_eq!(key_positions(Route::Split(Merge::Array), 4, none), Ok(1..4));
        let eval = lookup(b"EVAL").unwrap();
        // EVAL script 2 k1 k2 arg
        let two = |i| (i == 2).then_some(2);
        assert_eq!(key_positions(eval, 6, two), Ok(3..5));
        assert!(key_positions(eval, 4, two).is_err());
        let zunionstore = lookup(b"ZUNIONSTORE").unwrap();
        assert_eq!(key_positions(zunionstore, 6, two), Ok(3..5));
        assert!(dest_key(zunionstore));
        let bitop = lookup(b"BITOP").unwrap();
        assert_eq!(key_positions(bitop, 5, none), Ok(2..5));
    }
}
