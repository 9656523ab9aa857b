//! What each Redis command is for a sandbox: namespaced by the server's key specs, by a rule
//! of prodbox's own, harmless, refused, or sent only by prodbox. prodbox's decision, one list
//! per treatment; a command no list names is refused, so a newer server's commands fail
//! closed until they are reviewed (the `command_table` test lists them).

/// How a sandbox's command is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Treatment {
    /// Its keys (found by the server's key specs) are put in the sandbox's namespace.
    Keys,
    /// Rewritten by a rule of prodbox's own ([`Special`]).
    Special(Special),
    /// Names no key, channel or server-wide state: sent as it is.
    Harmless,
    /// Never sent for a sandbox.
    Refused(&'static str),
}

/// The commands prodbox rewrites by a rule of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Special {
    /// `SCAN`: always matched to the namespace; key names in the reply lose the prefix.
    Scan,
    /// `KEYS`: answered by `SCAN` over the namespace (the sandbox's user may not run `KEYS`).
    Keys,
    /// `DBSIZE`: counted by `SCAN` over the namespace.
    Dbsize,
    /// `SORT`/`SORT_RO`: the key and `STORE` destination namespaced; `BY`/`GET` patterns
    /// (which name other keys by content) refused.
    Sort,
    /// `COPY`: namespaced, refused with `DB` (another database is outside teardown's reach).
    Copy,
    /// `PUBLISH`: the channel namespaced.
    Publish,
    /// `PUBSUB CHANNELS`/`SHARDCHANNELS [pattern]`: matched to the namespace, names stripped.
    PubsubChannels,
    /// `PUBSUB NUMSUB`/`SHARDNUMSUB channel...`: namespaced, names stripped.
    PubsubNumsub,
    /// `MULTI`, `EXEC`, `DISCARD`: refused as commands of their own (a transaction left open
    /// on the sandbox's shared connection would swallow other requests' commands), and
    /// allowed to the sandbox's user for atomic pipelines (`redis::pipe().atomic()`), which
    /// redis-rs sends whole.
    Transaction,
    /// `SUBSCRIBE` and its kin: refused through the handle (whose connection is shared), and
    /// allowed to the sandbox's user for [`SandboxRedis::pubsub`](crate::SandboxRedis::pubsub),
    /// which namespaces them.
    Subscribe,
}

/// Commands whose keys the server's key specs name completely.
const KEYED: &[&str] = &[
    "append",
    "bitcount",
    "bitfield",
    "bitfield_ro",
    "bitop",
    "bitpos",
    "blmove",
    "blmpop",
    "blpop",
    "brpop",
    "brpoplpush",
    "bzmpop",
    "bzpopmax",
    "bzpopmin",
    "decr",
    "decrby",
    "del",
    "dump",
    "eval",
    "eval_ro",
    "evalsha",
    "evalsha_ro",
    "exists",
    "expire",
    "expireat",
    "expiretime",
    "fcall",
    "fcall_ro",
    "geoadd",
    "geodist",
    "geohash",
    "geopos",
    "georadius_ro",
    "georadiusbymember_ro",
    "geosearch",
    "geosearchstore",
    "get",
    "getbit",
    "getdel",
    "getex",
    "getrange",
    "getset",
    "hdel",
    "hexists",
    "hget",
    "hgetall",
    "hincrby",
    "hincrbyfloat",
    "hkeys",
    "hlen",
    "hmget",
    "hmset",
    "hrandfield",
    "hscan",
    "hset",
    "hsetnx",
    "hstrlen",
    "hvals",
    "incr",
    "incrby",
    "incrbyfloat",
    "lcs",
    "lindex",
    "linsert",
    "llen",
    "lmove",
    "lmpop",
    "lpop",
    "lpos",
    "lpush",
    "lpushx",
    "lrange",
    "lrem",
    "lset",
    "ltrim",
    "memory|usage",
    "mget",
    "mset",
    "msetnx",
    "object|encoding",
    "object|freq",
    "object|idletime",
    "object|refcount",
    "persist",
    "pexpire",
    "pexpireat",
    "pexpiretime",
    "pfadd",
    "pfcount",
    "pfmerge",
    "psetex",
    "pttl",
    "rename",
    "renamenx",
    "rpop",
    "rpoplpush",
    "rpush",
    "rpushx",
    "sadd",
    "scard",
    "sdiff",
    "sdiffstore",
    "set",
    "setbit",
    "setex",
    "setnx",
    "setrange",
    "sinter",
    "sintercard",
    "sinterstore",
    "sismember",
    "smembers",
    "smismember",
    "smove",
    "spop",
    "spublish",
    "srandmember",
    "srem",
    "sscan",
    "strlen",
    "substr",
    "sunion",
    "sunionstore",
    "touch",
    "ttl",
    "type",
    "unlink",
    "xack",
    "xadd",
    "xautoclaim",
    "xclaim",
    "xdel",
    "xgroup|create",
    "xgroup|createconsumer",
    "xgroup|delconsumer",
    "xgroup|destroy",
    "xgroup|setid",
    "xinfo|consumers",
    "xinfo|groups",
    "xinfo|stream",
    "xlen",
    "xpending",
    "xrange",
    "xread",
    "xreadgroup",
    "xrevrange",
    "xsetid",
    "xtrim",
    "zadd",
    "zcard",
    "zcount",
    "zdiff",
    "zdiffstore",
    "zincrby",
    "zinter",
    "zintercard",
    "zinterstore",
    "zlexcount",
    "zmpop",
    "zmscore",
    "zpopmax",
    "zpopmin",
    "zrandmember",
    "zrange",
    "zrangebylex",
    "zrangebyscore",
    "zrangestore",
    "zrank",
    "zrem",
    "zremrangebylex",
    "zremrangebyrank",
    "zremrangebyscore",
    "zrevrange",
    "zrevrangebylex",
    "zrevrangebyscore",
    "zrevrank",
    "zscan",
    "zscore",
    "zunion",
    "zunionstore",
];

/// Commands that name no key, channel or server-wide state.
const HARMLESS: &[&str] = &[
    "acl|cat",
    "acl|genpass",
    "acl|help",
    "acl|whoami",
    "client|getname",
    "client|help",
    "client|setinfo",
    "client|id",
    "client|info",
    "client|setname",
    "cluster|help",
    "command",
    "command|count",
    "command|docs",
    "command|getkeys",
    "command|getkeysandflags",
    "command|help",
    "command|info",
    "command|list",
    "config|help",
    "echo",
    "function|help",
    "latency|help",
    "lolwut",
    "memory|help",
    "module|help",
    "object|help",
    "ping",
    "pubsub|help",
    "script|help",
    "script|load",
    "slowlog|help",
    "time",
    "wait",
    "xgroup|help",
    "xinfo|help",
];

/// Commands a sandbox may not run, with the reason given.
const REFUSED: &[(&str, &str)] = &[
    ("acl", "manages users (production's included)"),
    ("auth", "would log the connection in as another user"),
    ("hello", "may log the connection in as another user"),
    ("reset", "logs the connection back in as the default user"),
    ("select", "switches to another database"),
    ("swapdb", "swaps production's databases"),
    ("move", "moves a key to another database"),
    ("migrate", "copies keys to another server"),
    ("flushall", "deletes every key"),
    ("flushdb", "deletes every key of the database"),
    ("randomkey", "reveals a key of the whole keyspace"),
    (
        "info",
        "reveals server-wide state (keyspace sizes, clients)",
    ),
    ("config", "changes the server's configuration"),
    ("debug", "can crash or alter the server"),
    ("client", "sees or changes other clients' connections"),
    ("cluster", "sees or changes the cluster"),
    ("bgrewriteaof", "administers the server"),
    ("bgsave", "administers the server"),
    ("save", "administers the server"),
    ("shutdown", "stops the server"),
    ("failover", "administers replication"),
    ("replicaof", "administers replication"),
    ("slaveof", "administers replication"),
    ("replconf", "administers replication"),
    ("psync", "administers replication"),
    ("sync", "administers replication"),
    ("role", "reveals replication state"),
    ("lastsave", "reveals server state"),
    ("latency", "reveals server-wide state"),
    ("slowlog", "reveals other clients' commands"),
    ("monitor", "reveals every client's commands"),
    ("module", "administers the server"),
    ("memory", "reveals or changes server-wide memory"),
    (
        "function",
        "changes or reveals the server's shared function libraries",
    ),
    (
        "script",
        "changes the server's shared script cache or kills production's scripts",
    ),
    ("pfdebug", "debugs the server"),
    ("pfselftest", "debugs the server"),
    ("restore-asking", "is for cluster migration only"),
    ("asking", "is for cluster redirection only"),
    ("readonly", "is for cluster replicas only"),
    ("readwrite", "is for cluster replicas only"),
    ("quit", "would close the sandbox's shared connection"),
    ("pubsub|numpat", "reveals server-wide subscriptions"),
    (
        "georadius",
        "stores into the last STORE while its key specs name the first (a deprecated command: use GEOSEARCHSTORE)",
    ),
    (
        "georadiusbymember",
        "stores into the last STORE while its key specs name the first (a deprecated command: use GEOSEARCHSTORE)",
    ),
    (
        "restore",
        "loads a serialized payload Redis may not check (sanitize-dump-payload)",
    ),
    (
        "watch",
        "watches on a connection every request of the sandbox shares",
    ),
    (
        "unwatch",
        "watches on a connection every request of the sandbox shares",
    ),
    (
        "script|exists",
        "reveals which scripts production has loaded",
    ),
];

/// Commands rewritten by prodbox's own rules.
const SPECIAL: &[(&str, Special)] = &[
    ("scan", Special::Scan),
    ("keys", Special::Keys),
    ("dbsize", Special::Dbsize),
    ("sort", Special::Sort),
    ("sort_ro", Special::Sort),
    ("copy", Special::Copy),
    ("publish", Special::Publish),
    ("pubsub|channels", Special::PubsubChannels),
    ("pubsub|shardchannels", Special::PubsubChannels),
    ("pubsub|numsub", Special::PubsubNumsub),
    ("pubsub|shardnumsub", Special::PubsubNumsub),
    ("multi", Special::Transaction),
    ("exec", Special::Transaction),
    ("discard", Special::Transaction),
    ("subscribe", Special::Subscribe),
    ("psubscribe", Special::Subscribe),
    ("ssubscribe", Special::Subscribe),
    ("unsubscribe", Special::Subscribe),
    ("punsubscribe", Special::Subscribe),
    ("sunsubscribe", Special::Subscribe),
];

/// prodbox's treatment of command `name` (lowercase, `container|sub` for subcommands), or
/// `None` when no list names it (or its container).
pub(crate) fn treatment(name: &str) -> Option<Treatment> {
    if let Some((_, special)) = SPECIAL.iter().find(|(n, _)| *n == name) {
        return Some(Treatment::Special(*special));
    }
    if KEYED.contains(&name) {
        return Some(Treatment::Keys);
    }
    if HARMLESS.contains(&name) {
        return Some(Treatment::Harmless);
    }
    let container = name.split('|').next().unwrap_or(name);
    REFUSED
        .iter()
        .find(|(n, _)| *n == name || *n == container)
        .map(|(_, why)| Treatment::Refused(why))
}

impl Special {
    /// Whether the handle sends it over the manager's connection rather than the sandbox's:
    /// commands whose confinement is prodbox's rewrite alone (Redis does not confine `SCAN`
    /// or `PUBSUB CHANNELS` to a user's patterns, nor `COPY` to a database), so that the
    /// sandbox's user, which a script runs as, may not run them at all.
    pub(crate) fn via_manager(self) -> bool {
        matches!(
            self,
            Self::Scan
                | Self::Keys
                | Self::Dbsize
                | Self::Copy
                | Self::PubsubChannels
                | Self::PubsubNumsub
        )
    }
}

/// How prodbox treats command `name` (lowercase, `container|sub`): `"keys"` (namespaced by
/// the server's key specs), `"special"` (namespaced by prodbox's own rule), `"harmless"`,
/// `"refused"`, or `None` when no list names it. For the test that reviews a server's table.
pub fn classify(name: &str) -> Option<&'static str> {
    treatment(name).map(|t| match t {
        Treatment::Keys => "keys",
        Treatment::Special(_) => "special",
        Treatment::Harmless => "harmless",
        Treatment::Refused(_) => "refused",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_command_is_in_two_lists() {
        let mut names: Vec<&str> = KEYED
            .iter()
            .chain(HARMLESS)
            .copied()
            .chain(REFUSED.iter().map(|(n, _)| *n))
            .chain(SPECIAL.iter().map(|(n, _)| *n))
            .collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(all, names.len());
    }
}
