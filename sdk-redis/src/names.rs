//! The names prodbox-redis gives a sandbox's Redis objects: its key and channel prefix and its
//! ACL user. One place, so that the wrapper, teardown and the CLI agree.

use prodbox_core::SandboxKey;

/// The prefix of every key and channel of sandbox `key`: `sbx:{pr-42}:`. The braces are a
/// Redis Cluster hash tag, so all of a sandbox's keys share one slot and multi-key commands
/// keep working; sandbox keys hold only `a-z`, `0-9` and `-`, none of them special in a glob.
pub fn prefix(key: &SandboxKey) -> String {
    // Not `format!`: this runs for every sandboxed command.
    let mut prefix = String::with_capacity(key.as_str().len() + 7);
    prefix.push_str("sbx:{");
    prefix.push_str(key.as_str());
    prefix.push_str("}:");
    prefix
}

/// The ACL user of sandbox `key`: `prodbox-sbx-pr-42`.
pub fn user(key: &SandboxKey) -> String {
    format!("{USER_PREFIX}{key}")
}

/// The key that marks sandbox `key` torn down (for [`TOMBSTONE_SECONDS`]), kept in the
/// manager's keyspace: `prodbox:redis:torn:pr-42`.
pub fn tombstone(key: &SandboxKey) -> String {
    format!("prodbox:redis:torn:{key}")
}

/// `at` in Unix microseconds, as sandbox incarnations are counted: a tombstone holds its
/// teardown's time so.
pub(crate) fn micros(at: std::time::SystemTime) -> i64 {
    at.duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// How long a torn-down sandbox's tombstone lasts: a replica that still serves it within
/// that time does not make its objects again.
pub const TOMBSTONE_SECONDS: u64 = 24 * 60 * 60;

/// What every prodbox sandbox user's name starts with.
pub const USER_PREFIX: &str = "prodbox-sbx-";

/// The sandbox whose ACL user is `user`, if it is one of prodbox's.
pub fn sandbox_of_user(user: &str) -> Option<SandboxKey> {
    user.strip_prefix(USER_PREFIX)?.parse().ok()
}

/// The sandbox whose key `key` is, if it is in a sandbox's namespace.
pub fn sandbox_of_key(key: &[u8]) -> Option<SandboxKey> {
    let rest = key.strip_prefix(b"sbx:{")?;
    let end = rest.iter().position(|&b| b == b'}')?;
    if rest.get(end + 1) != Some(&b':') {
        return None;
    }
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let key: SandboxKey = "pr-42".parse().expect("key");
        assert_eq!(prefix(&key), "sbx:{pr-42}:");
        assert_eq!(user(&key), "prodbox-sbx-pr-42");
        assert_eq!(sandbox_of_user(&user(&key)), Some(key.clone()));
        assert_eq!(sandbox_of_user("default"), None);
        assert_eq!(sandbox_of_key(b"sbx:{pr-42}:user:1"), Some(key));
        assert_eq!(sandbox_of_key(b"sbx:{pr-42}user:1"), None);
        assert_eq!(sandbox_of_key(b"user:1"), None);
        assert_eq!(sandbox_of_key(b"sbx:{PR}:x"), None);
    }
}
