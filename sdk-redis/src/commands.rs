//! The command table: what each Redis command is for a sandbox (rewritten by the server's key
//! specs, rewritten by prodbox's own rule, harmless, or refused) and where its keys are.
//!
//! Key positions come from the server: `COMMAND` (Redis 7) lists every command and subcommand
//! with its key specifications, read once per handle. What a command *is* for a sandbox is
//! prodbox's decision, written here as one list per treatment; a command the server knows and
//! these lists do not is refused, so a newer server's commands fail closed until they are
//! reviewed (the `command_table` test lists them).

use std::collections::HashMap;

use redis::Value;

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

/// Where a key spec's search begins.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Begin {
    /// At this argument.
    Index(usize),
    /// After the first argument equal to `keyword` (ASCII case-insensitive), searching from
    /// `from` (negative: from the end, backwards).
    Keyword {
        keyword: Vec<u8>,
        from: i64,
    },
    Unknown,
}

/// Which arguments from the beginning are keys.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Find {
    /// Up to `last` (negative: from the end), every `step`-th; with `limit` > 1 and a
    /// negative `last`, only the first 1/`limit` of what remains.
    Range {
        last: i64,
        step: usize,
        limit: usize,
    },
    /// The number of keys is at `count` (relative to the beginning), the first at `first`.
    Keynum {
        count: usize,
        first: usize,
        step: usize,
    },
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct KeySpec {
    begin: Begin,
    find: Find,
}

/// A command's entry: how prodbox treats it and its key specs.
#[derive(Debug, Clone)]
pub(crate) struct Command {
    pub(crate) treatment: Treatment,
    specs: Vec<KeySpec>,
    /// Whether it has subcommands (the entry to use is `name|sub`).
    has_subcommands: bool,
}

/// Why a command's keys could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeysError {
    #[error("the command's key specs do not say where all its keys are")]
    Incomplete,
    #[error("the command's arguments do not match its key specs ({0})")]
    Malformed(&'static str),
}

impl Command {
    /// The positions of `args`' keys (`args[0]` is the command name).
    pub(crate) fn key_positions(&self, args: &[&[u8]]) -> Result<Vec<usize>, KeysError> {
        let mut keys = Vec::new();
        for spec in &self.specs {
            let Some(first) = spec.begin(args)? else {
                continue;
            };
            spec.find(args, first, &mut keys)?;
        }
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }
}

impl KeySpec {
    fn begin(&self, args: &[&[u8]]) -> Result<Option<usize>, KeysError> {
        match &self.begin {
            Begin::Index(i) => Ok(Some(*i)),
            Begin::Keyword { keyword, from } => {
                let argc = args.len() as i64;
                let found = if *from >= 0 {
                    (*from..argc).find(|&i| args[i as usize].eq_ignore_ascii_case(keyword))
                } else {
                    (1..=argc + from)
                        .rev()
                        .find(|&i| args[i as usize].eq_ignore_ascii_case(keyword))
                };
                // A keyword given twice: which one the command obeys is the command's own
                // business (GEORADIUS stores into the last STORE while its spec names the
                // first), so no reading of it is trusted.
                let times = args
                    .iter()
                    .skip(1)
                    .filter(|a| a.eq_ignore_ascii_case(keyword))
                    .count();
                if times > 1 {
                    return Err(KeysError::Malformed(
                        "a key-introducing keyword given twice",
                    ));
                }
                Ok(found.map(|i| i as usize + 1))
            }
            Begin::Unknown => Err(KeysError::Incomplete),
        }
    }

    fn find(&self, args: &[&[u8]], first: usize, keys: &mut Vec<usize>) -> Result<(), KeysError> {
        let argc = args.len();
        if first >= argc {
            // An optional keyword's keys, absent (`GEORADIUS` without `STORE`).
            return match self.begin {
                Begin::Keyword { .. } => Ok(()),
                _ => Err(KeysError::Malformed("no key where the key spec begins")),
            };
        }
        match self.find {
            Find::Range { last, step, limit } => {
                let last = if last >= 0 {
                    usize::try_from(last)
                        .ok()
                        .and_then(|last| first.checked_add(last))
                        .ok_or(KeysError::Malformed("range past the last argument"))?
                } else if limit <= 1 {
                    argc.checked_add_signed(last as isize)
                        .ok_or(KeysError::Malformed("range before the command"))?
                } else {
                    let span = (argc - first) / limit;
                    (first + span)
                        .checked_add_signed(last as isize)
                        .ok_or(KeysError::Malformed("range before the command"))?
                };
                if last >= argc {
                    return Err(KeysError::Malformed("a key past the last argument"));
                }
                keys.extend((first..=last).step_by(step.max(1)));
                Ok(())
            }
            Find::Keynum {
                count,
                first: at,
                step,
            } => {
                let past = KeysError::Malformed("a key past the last argument");
                let count_at = first.checked_add(count).ok_or(past.clone())?;
                let n: usize = args
                    .get(count_at)
                    .and_then(|n| std::str::from_utf8(n).ok())
                    .and_then(|n| n.parse().ok())
                    .ok_or(KeysError::Malformed("the number of keys is not a number"))?;
                // More keys than arguments cannot be; checked before any arithmetic with it.
                if n > argc {
                    return Err(past);
                }
                let start = first.checked_add(at).ok_or(past.clone())?;
                let step = step.max(1);
                let end = match n.checked_sub(1) {
                    None => start,
                    Some(k) => k
                        .checked_mul(step)
                        .and_then(|span| start.checked_add(span))
                        .ok_or(past.clone())?,
                };
                if n > 0 && end >= argc {
                    return Err(past);
                }
                keys.extend((0..n).map(|k| start + k * step));
                Ok(())
            }
            Find::Unknown => Err(KeysError::Incomplete),
        }
    }
}

/// Every command of one server, by lowercase name (`container|sub` for subcommands).
#[derive(Debug, Clone, Default)]
pub(crate) struct CommandTable {
    commands: HashMap<Box<str>, Command>,
}

impl CommandTable {
    /// Reads the reply of `COMMAND`.
    pub(crate) fn from_reply(reply: &Value) -> Result<Self, &'static str> {
        let mut table = Self::default();
        for entry in items(reply).ok_or("COMMAND did not answer an array")? {
            table.add(entry)?;
        }
        if table.commands.is_empty() {
            return Err("COMMAND listed no commands");
        }
        Ok(table)
    }

    fn add(&mut self, entry: &Value) -> Result<(), &'static str> {
        let fields = items(entry).ok_or("a COMMAND entry is not an array")?;
        let name = fields
            .first()
            .and_then(text)
            .ok_or("a COMMAND entry has no name")?
            .to_ascii_lowercase();
        let specs = match fields.get(8).and_then(items) {
            Some(specs) => specs.iter().map(key_spec).collect::<Result<_, _>>()?,
            // Before Redis 7 there are no key specs: nothing is keyed, everything refused.
            None => Vec::new(),
        };
        let subcommands = fields.get(9).and_then(items).unwrap_or(&[]);
        for sub in subcommands {
            self.add(sub)?;
        }
        let treatment = treatment(&name).unwrap_or(Treatment::Refused(
            "is not one prodbox has reviewed for sandboxes",
        ));
        // A keyed command whose specs do not name every key is refused rather than guessed.
        let treatment = match treatment {
            Treatment::Keys
                if specs.is_empty()
                    || specs.iter().any(|s: &KeySpec| {
                        s.begin == Begin::Unknown || s.find == Find::Unknown
                    }) =>
            {
                Treatment::Refused("has key specs that do not say where all its keys are")
            }
            other => other,
        };
        self.commands.insert(
            name.into_boxed_str(),
            Command {
                treatment,
                specs,
                has_subcommands: !subcommands.is_empty(),
            },
        );
        Ok(())
    }

    /// The entry for `args` (`args[0]` the command, `args[1]` a subcommand where it has them).
    pub(crate) fn lookup(&self, args: &[&[u8]]) -> Option<(String, &Command)> {
        let name = std::str::from_utf8(args.first()?)
            .ok()?
            .to_ascii_lowercase();
        let command = self.commands.get(name.as_str())?;
        if !command.has_subcommands {
            return Some((name, command));
        }
        let sub = std::str::from_utf8(args.get(1)?).ok()?.to_ascii_lowercase();
        let full = format!("{name}|{sub}");
        let command = self.commands.get(full.as_str())?;
        Some((full, command))
    }

    /// Refuses `names` to sandboxes, for `why`.
    pub(crate) fn refuse(&mut self, names: &[&str], why: &'static str) {
        for name in names {
            if let Some(command) = self.commands.get_mut(*name) {
                command.treatment = Treatment::Refused(why);
            }
        }
    }

    /// Every command's name and treatment, for the ACL and the tests.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &Command)> {
        self.commands.iter().map(|(name, c)| (&**name, c))
    }
}

fn key_spec(spec: &Value) -> Result<KeySpec, &'static str> {
    let fields = pairs(spec).ok_or("a key spec is not a map")?;
    let begin = fields
        .get("begin_search")
        .and_then(|b| pairs(b))
        .ok_or("a key spec has no begin_search")?;
    let find = fields
        .get("find_keys")
        .and_then(|f| pairs(f))
        .ok_or("a key spec has no find_keys")?;
    let begin_spec = begin.get("spec").and_then(|s| pairs(s)).unwrap_or_default();
    let find_spec = find.get("spec").and_then(|s| pairs(s)).unwrap_or_default();
    let int = |m: &HashMap<String, &Value>, k: &str| -> Result<i64, &'static str> {
        match m.get(k) {
            Some(Value::Int(i)) => Ok(*i),
            _ => Err("a key spec field is not an integer"),
        }
    };
    let begin = match begin.get("type").and_then(|t| text(t)).as_deref() {
        Some("index") => Begin::Index(
            usize::try_from(int(&begin_spec, "index")?).map_err(|_| "a negative key index")?,
        ),
        Some("keyword") => Begin::Keyword {
            keyword: begin_spec
                .get("keyword")
                .and_then(|k| text(k))
                .ok_or("a keyword key spec without keyword")?
                .into_bytes(),
            from: int(&begin_spec, "startfrom")?,
        },
        _ => Begin::Unknown,
    };
    let unsigned = |v: i64| usize::try_from(v).map_err(|_| "a negative key spec step");
    let find = match find.get("type").and_then(|t| text(t)).as_deref() {
        Some("range") => Find::Range {
            last: int(&find_spec, "lastkey")?,
            step: unsigned(int(&find_spec, "keystep")?)?,
            limit: unsigned(int(&find_spec, "limit")?)?,
        },
        Some("keynum") => Find::Keynum {
            count: unsigned(int(&find_spec, "keynumidx")?)?,
            first: unsigned(int(&find_spec, "firstkey")?)?,
            step: unsigned(int(&find_spec, "keystep")?)?,
        },
        _ => Find::Unknown,
    };
    Ok(KeySpec { begin, find })
}

fn items(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// A RESP2 flat array or a RESP3 map of names to values.
fn pairs(value: &Value) -> Option<HashMap<String, &Value>> {
    match value {
        Value::Map(map) => Some(
            map.iter()
                .filter_map(|(k, v)| Some((text(k)?, v)))
                .collect(),
        ),
        Value::Array(flat) => Some(
            flat.chunks(2)
                .filter_map(|kv| Some((text(kv.first()?)?, kv.get(1)?)))
                .collect(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(begin: Begin, find: Find) -> Command {
        Command {
            treatment: Treatment::Keys,
            specs: vec![KeySpec { begin, find }],
            has_subcommands: false,
        }
    }

    fn args(line: &str) -> Vec<&[u8]> {
        line.split(' ').map(str::as_bytes).collect()
    }

    #[test]
    fn ranges_keynums_and_keywords_find_their_keys() {
        let mset = spec(
            Begin::Index(1),
            Find::Range {
                last: -1,
                step: 2,
                limit: 0,
            },
        );
        assert_eq!(mset.key_positions(&args("MSET a 1 b 2")), Ok(vec![1, 3]));
        let eval = spec(
            Begin::Index(2),
            Find::Keynum {
                count: 0,
                first: 1,
                step: 1,
            },
        );
        assert_eq!(eval.key_positions(&args("EVAL s 2 a b x")), Ok(vec![3, 4]));
        assert_eq!(eval.key_positions(&args("EVAL s 0 x")), Ok(vec![]));
        assert!(eval.key_positions(&args("EVAL s 3 a b")).is_err());
        assert!(eval.key_positions(&args("EVAL s many a")).is_err());
        let xread = spec(
            Begin::Keyword {
                keyword: b"streams".to_vec(),
                from: 1,
            },
            Find::Range {
                last: -1,
                step: 1,
                limit: 2,
            },
        );
        assert_eq!(
            xread.key_positions(&args("XREAD COUNT 2 STREAMS s1 s2 0 0")),
            Ok(vec![4, 5])
        );
        let store = spec(
            Begin::Keyword {
                keyword: b"store".to_vec(),
                from: 6,
            },
            Find::Range {
                last: 0,
                step: 1,
                limit: 0,
            },
        );
        assert_eq!(
            store.key_positions(&args("GEORADIUS k 1 2 3 m")),
            Ok(vec![])
        );
        assert_eq!(
            store.key_positions(&args("GEORADIUS k 1 2 3 m STORE d")),
            Ok(vec![7])
        );
        let unknown = spec(Begin::Unknown, Find::Unknown);
        assert_eq!(
            unknown.key_positions(&args("SORT k")),
            Err(KeysError::Incomplete)
        );
    }

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
