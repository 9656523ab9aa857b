//! The command table: where each Redis command's keys are, from the server's own key specs
//! (`COMMAND`, Redis 7, read once per handle), with what it is for a sandbox
//! ([`reviewed`]).

mod reviewed;

pub use reviewed::classify;
pub(crate) use reviewed::{Special, Treatment, treatment};

use std::collections::HashMap;

use redis::Value;

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
}
