//! How a sandbox's command becomes the command sent for it: keys and channels put in its
//! namespace, the keyspace commands answered over the namespace only, and key names in replies
//! given back without the prefix. Pure: no I/O, so every rule is unit-tested.

use redis::{Cmd, Value};

use crate::commands::{CommandTable, Special, Treatment};
use crate::error::SandboxRedisError;
use prodbox_core::SandboxKey;

/// One sandbox's namespace.
#[derive(Debug, Clone)]
pub(crate) struct Namespace {
    pub(crate) key: SandboxKey,
    /// `sbx:{key}:`
    pub(crate) prefix: Vec<u8>,
}

impl Namespace {
    pub(crate) fn new(key: &SandboxKey) -> Self {
        Self {
            key: key.clone(),
            prefix: crate::names::prefix(key).into_bytes(),
        }
    }

    fn add(&self, name: &[u8]) -> Vec<u8> {
        let mut named = Vec::with_capacity(self.prefix.len() + name.len());
        named.extend_from_slice(&self.prefix);
        named.extend_from_slice(name);
        named
    }

    /// `name` without the prefix (names from the server are always in the namespace; one that
    /// is not is left as it is).
    pub(crate) fn strip(&self, value: &mut Value) {
        if let Value::BulkString(name) = value
            && name.starts_with(&self.prefix)
        {
            name.drain(..self.prefix.len());
        }
    }
}

/// What to do with a sandbox's command.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Send `cmd` (over the manager's connection when `via_manager`, else the sandbox's),
    /// then fix its reply by `reply`.
    Send {
        cmd: Cmd,
        reply: Reply,
        via_manager: bool,
    },
    /// Answer from `SCAN ... MATCH pattern` over the namespace: the key names (`KEYS`) or
    /// their number (`DBSIZE`).
    ScanAll { pattern: Vec<u8>, count_only: bool },
}

/// Which key names a reply carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    AsIs,
    /// `[cursor, [key...]]`
    Scan,
    /// `[key, ...]` (blocking pops, `LMPOP`, `ZMPOP`)
    FirstKey,
    /// `[[key, entries]...]` or a map of key to entries (`XREAD`)
    Streams,
    /// `[name...]` (`PUBSUB CHANNELS`)
    Names,
    /// `[name, n, name, n...]` (`PUBSUB NUMSUB`)
    NamePairs,
}

/// The arguments of a packed command (`*N\r\n$len\r\narg\r\n...`), or `None` if it is not one.
pub(crate) fn unpack(packed: &[u8]) -> Option<Vec<Vec<u8>>> {
    fn line(bytes: &[u8], at: &mut usize, tag: u8) -> Option<usize> {
        if bytes.get(*at) != Some(&tag) {
            return None;
        }
        let end = *at + bytes.get(*at..)?.windows(2).position(|w| w == b"\r\n")?;
        let n = std::str::from_utf8(&bytes[*at + 1..end])
            .ok()?
            .parse()
            .ok()?;
        *at = end + 2;
        Some(n)
    }
    let mut at = 0;
    let n = line(packed, &mut at, b'*')?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let len = line(packed, &mut at, b'$')?;
        let arg = packed.get(at..at.checked_add(len)?)?;
        args.push(arg.to_vec());
        at += len;
        if packed.get(at..at + 2)? != b"\r\n" {
            return None;
        }
        at += 2;
    }
    (at == packed.len()).then_some(args)
}

/// The most keys one `SCAN` step of a sandbox's may walk (the handle's own steps included).
pub(crate) const SCAN_COUNT: usize = 1000;

/// The longest glob pattern a sandbox may send (`KEYS`, `SCAN`/`HSCAN`/`SSCAN`/`ZSCAN
/// MATCH`, `PUBSUB CHANNELS`, `PSUBSCRIBE`): Redis before 7.2.6 matches patterns recursively,
/// and a long one (`a*a*...`) overflows its stack (CVE-2024-31228).
pub const MAX_PATTERN_LEN: usize = 256;

/// Refuses a glob pattern longer than [`MAX_PATTERN_LEN`].
pub(crate) fn checked_pattern<'p>(
    ns: &Namespace,
    name: &str,
    pattern: &'p [u8],
) -> Result<&'p [u8], SandboxRedisError> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(refused(
            ns,
            name,
            "has a glob pattern longer than prodbox allows (Redis before 7.2.6 can crash on one)",
        ));
    }
    Ok(pattern)
}

/// The plan for `args` of sandbox `ns`, or why it is refused. `name` is filled with the
/// command's name, for errors and audit.
pub(crate) fn plan(
    table: &CommandTable,
    ns: &Namespace,
    mut args: Vec<Vec<u8>>,
) -> Result<Plan, SandboxRedisError> {
    let views: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    let Some((name, command)) = table.lookup(&views) else {
        let name = views
            .first()
            .map(|n| String::from_utf8_lossy(n).to_ascii_lowercase())
            .unwrap_or_default();
        return Err(refused(ns, &name, "is not a command this server lists"));
    };
    let reply = match command.treatment {
        Treatment::Refused(why) => return Err(refused(ns, &name, why)),
        Treatment::Harmless => Reply::AsIs,
        Treatment::Keys => {
            let positions = command
                .key_positions(&views)
                .map_err(|why| SandboxRedisError::unmapped(&ns.key, &name, why))?;
            for at in positions {
                args[at] = ns.add(&args[at]);
            }
            if matches!(name.as_str(), "hscan" | "sscan" | "zscan") {
                // Their MATCH patterns name fields and members, not keys: only their length.
                let mut options = args.iter().skip(3);
                while let Some(option) = options.next() {
                    let value = options.next();
                    if option.eq_ignore_ascii_case(b"match")
                        && let Some(pattern) = value
                    {
                        checked_pattern(ns, &name, pattern)?;
                    }
                }
            }
            match name.as_str() {
                "blpop" | "brpop" | "bzpopmin" | "bzpopmax" | "blmpop" | "bzmpop" | "lmpop"
                | "zmpop" => Reply::FirstKey,
                "xread" | "xreadgroup" => Reply::Streams,
                _ => Reply::AsIs,
            }
        }
        Treatment::Special(special) => return special_plan(special, ns, &name, args),
    };
    Ok(Plan::Send {
        cmd: command_of(args),
        reply,
        via_manager: false,
    })
}

fn special_plan(
    special: Special,
    ns: &Namespace,
    name: &str,
    mut args: Vec<Vec<u8>>,
) -> Result<Plan, SandboxRedisError> {
    let reply = match special {
        Special::Scan => {
            // SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]: the pattern is always the
            // namespace's, followed by the caller's own.
            let mut rest = args.split_off(2.min(args.len()));
            let mut pattern = b"*".to_vec();
            let mut kept = Vec::new();
            while !rest.is_empty() {
                let option = rest.remove(0);
                let Some(value) = (!rest.is_empty()).then(|| rest.remove(0)) else {
                    return Err(refused(ns, name, "has an option without its value"));
                };
                if option.eq_ignore_ascii_case(b"match") {
                    pattern = value;
                } else if option.eq_ignore_ascii_case(b"count") {
                    // The manager walks production's keyspace for it: one step at most
                    // SCAN_COUNT keys, whatever the caller asks.
                    let count: u64 = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|n| n.parse().ok())
                        .ok_or_else(|| refused(ns, name, "has a COUNT that is not a number"))?;
                    let count = count.clamp(1, SCAN_COUNT as u64);
                    kept.extend([option, count.to_string().into_bytes()]);
                } else {
                    kept.extend([option, value]);
                }
            }
            checked_pattern(ns, name, &pattern)?;
            args.extend([b"MATCH".to_vec(), ns.add(&pattern)]);
            args.extend(kept);
            Reply::Scan
        }
        Special::Keys | Special::Dbsize => {
            let pattern = match special {
                Special::Keys => args
                    .get(1)
                    .cloned()
                    .ok_or_else(|| refused(ns, name, "has no pattern"))?,
                _ => b"*".to_vec(),
            };
            checked_pattern(ns, name, &pattern)?;
            return Ok(Plan::ScanAll {
                pattern: ns.add(&pattern),
                count_only: special == Special::Dbsize,
            });
        }
        Special::Sort => {
            if args.len() < 2 {
                return Err(refused(ns, name, "has no key"));
            }
            args[1] = ns.add(&args[1]);
            let mut at = 2;
            while at < args.len() {
                let option = args[at].to_ascii_lowercase();
                let value = args.get(at + 1);
                match option.as_slice() {
                    b"by" if value.is_some_and(|v| !v.eq_ignore_ascii_case(b"nosort")) => {
                        return Err(refused(
                            ns,
                            name,
                            "has a BY pattern, which names keys from the sorted values",
                        ));
                    }
                    b"get" if value.is_some_and(|v| v.as_slice() != b"#") => {
                        return Err(refused(
                            ns,
                            name,
                            "has a GET pattern, which names keys from the sorted values",
                        ));
                    }
                    b"store" if value.is_some() => {
                        args[at + 1] = ns.add(&args[at + 1]);
                        at += 1;
                    }
                    b"limit" => at += 2,
                    b"by" | b"get" => at += 1,
                    _ => {}
                }
                at += 1;
            }
            Reply::AsIs
        }
        Special::Copy => {
            if args.len() < 3 {
                return Err(refused(ns, name, "has fewer than two keys"));
            }
            if args[3..].iter().any(|a| a.eq_ignore_ascii_case(b"db")) {
                return Err(refused(
                    ns,
                    name,
                    "copies into another database, outside the sandbox's teardown",
                ));
            }
            args[1] = ns.add(&args[1]);
            args[2] = ns.add(&args[2]);
            Reply::AsIs
        }
        Special::Publish => {
            if args.len() < 2 {
                return Err(refused(ns, name, "has no channel"));
            }
            args[1] = ns.add(&args[1]);
            Reply::AsIs
        }
        Special::PubsubChannels => {
            let pattern = args.get(2).cloned().unwrap_or_else(|| b"*".to_vec());
            checked_pattern(ns, name, &pattern)?;
            args.truncate(2);
            args.push(ns.add(&pattern));
            Reply::Names
        }
        Special::Subscribe => {
            return Err(refused(
                ns,
                name,
                "subscribes on the handle's shared connection: use SandboxRedis::pubsub",
            ));
        }
        Special::Transaction => {
            return Err(refused(
                ns,
                name,
                "would leave a transaction open on the sandbox's shared connection: use an atomic pipeline (redis::pipe().atomic())",
            ));
        }
        Special::PubsubNumsub => {
            for channel in args.iter_mut().skip(2) {
                *channel = ns.add(channel);
            }
            Reply::NamePairs
        }
    };
    Ok(Plan::Send {
        cmd: command_of(args),
        reply,
        via_manager: special.via_manager(),
    })
}

fn refused(ns: &Namespace, name: &str, why: &'static str) -> SandboxRedisError {
    SandboxRedisError::Refused {
        sandbox: ns.key.clone(),
        command: name.to_owned(),
        why,
    }
}

fn command_of(args: Vec<Vec<u8>>) -> Cmd {
    let mut cmd = Cmd::new();
    for arg in args {
        cmd.arg(arg);
    }
    cmd
}

/// Gives back the key names in `value`, the reply to a command planned with `reply`, without
/// the namespace's prefix.
pub(crate) fn fix_reply(ns: &Namespace, reply: Reply, value: &mut Value) {
    match (reply, value) {
        (Reply::AsIs, _) => {}
        (Reply::Scan, Value::Array(parts)) => {
            if let Some(Value::Array(keys)) = parts.get_mut(1) {
                keys.iter_mut().for_each(|k| ns.strip(k));
            }
        }
        (Reply::FirstKey, Value::Array(parts)) => {
            if let Some(key) = parts.first_mut() {
                ns.strip(key);
            }
        }
        (Reply::Streams, Value::Array(streams)) => {
            for stream in streams {
                if let Value::Array(parts) = stream
                    && let Some(key) = parts.first_mut()
                {
                    ns.strip(key);
                }
            }
        }
        (Reply::Streams, Value::Map(streams)) => {
            streams.iter_mut().for_each(|(key, _)| ns.strip(key));
        }
        (Reply::Names, Value::Array(names) | Value::Set(names)) => {
            names.iter_mut().for_each(|n| ns.strip(n));
        }
        (Reply::NamePairs, Value::Array(pairs)) => {
            pairs.iter_mut().step_by(2).for_each(|n| ns.strip(n));
        }
        (Reply::NamePairs, Value::Map(pairs)) => {
            pairs.iter_mut().for_each(|(n, _)| ns.strip(n));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> Namespace {
        Namespace::new(&"pr-42".parse().expect("key"))
    }

    #[test]
    fn unpack_reads_what_redis_rs_packs() {
        let mut cmd = redis::cmd("SET");
        cmd.arg("user:42").arg(b"a\r\nb".as_slice());
        assert_eq!(
            unpack(&cmd.get_packed_command()),
            Some(vec![
                b"SET".to_vec(),
                b"user:42".to_vec(),
                b"a\r\nb".to_vec()
            ])
        );
        let mut scan = redis::cmd("SCAN");
        scan.cursor_arg(17);
        assert_eq!(
            unpack(&scan.get_packed_command()),
            Some(vec![b"SCAN".to_vec(), b"17".to_vec()])
        );
        assert_eq!(unpack(b"*1\r\n$3\r\nGET"), None);
        assert_eq!(unpack(b"*1\r\n$3\r\nGET\r\nextra"), None);
        assert_eq!(unpack(b"$3\r\nGET\r\n"), None);
    }

    #[test]
    fn replies_lose_the_prefix() {
        let ns = ns();
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let mut scan = Value::Array(vec![bulk("0"), Value::Array(vec![bulk("sbx:{pr-42}:a")])]);
        fix_reply(&ns, Reply::Scan, &mut scan);
        assert_eq!(
            scan,
            Value::Array(vec![bulk("0"), Value::Array(vec![bulk("a")])])
        );
        let mut pop = Value::Array(vec![bulk("sbx:{pr-42}:q"), bulk("sbx:{pr-42}:v")]);
        fix_reply(&ns, Reply::FirstKey, &mut pop);
        assert_eq!(pop, Value::Array(vec![bulk("q"), bulk("sbx:{pr-42}:v")]));
        let mut numsub = Value::Array(vec![bulk("sbx:{pr-42}:c"), Value::Int(2)]);
        fix_reply(&ns, Reply::NamePairs, &mut numsub);
        assert_eq!(numsub, Value::Array(vec![bulk("c"), Value::Int(2)]));
    }
}
