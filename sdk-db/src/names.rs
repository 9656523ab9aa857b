//! Postgres names derived from sandbox keys: always valid, always quoted, never colliding.

use prodbox_core::SandboxKey;
use sha2::{Digest, Sha256};

/// Postgres truncates identifiers to 63 bytes; names are built to fit.
const MAX_IDENTIFIER: usize = 63;

/// The schema of sandbox `key`: `sbx_` plus the key with `-` as `_`. Keys hold only `a-z`,
/// `0-9` and `-`, and `_` is not among them, so the mapping is one to one. A key too long to
/// fit is shortened and given a 64-bit hash suffix, to exactly 63 bytes, so that Postgres's
/// truncation can never merge two keys, and no plain name (at most 62 bytes) can equal a
/// shortened one.
pub fn schema_name(key: &SandboxKey) -> String {
    derive("sbx_", key)
}

/// The restricted role sandbox `key`'s sessions run under.
pub fn role_name(key: &SandboxKey) -> String {
    derive("sbxr_", key)
}

fn derive(prefix: &str, key: &SandboxKey) -> String {
    let body = key.as_str().replace('-', "_");
    // Plain names stay shorter than shortened ones (which are exactly 63 bytes), so a key can
    // never be chosen to land on another key's shortened name.
    if prefix.len() + body.len() < MAX_IDENTIFIER {
        return format!("{prefix}{body}");
    }
    let digest = Sha256::digest(key.as_str().as_bytes());
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let keep = MAX_IDENTIFIER - prefix.len() - 1 - hash.len();
    format!("{prefix}{}_{hash}", &body[..keep])
}

/// `ident` as a quoted Postgres identifier. Derived names need no escaping, but every name
/// reaches SQL through here all the same.
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_postgres_and_stay_distinct() {
        let short: SandboxKey = "pr-42".parse().unwrap();
        assert_eq!(schema_name(&short), "sbx_pr_42");
        assert_eq!(role_name(&short), "sbxr_pr_42");

        let a: SandboxKey = format!("{}a", "x".repeat(62)).parse().unwrap();
        let b: SandboxKey = format!("{}b", "x".repeat(62)).parse().unwrap();
        for name in [
            schema_name(&a),
            schema_name(&b),
            role_name(&a),
            role_name(&b),
        ] {
            assert!(name.len() <= MAX_IDENTIFIER, "{name}");
        }
        assert_ne!(schema_name(&a), schema_name(&b));
        assert_ne!(role_name(&a), role_name(&b));
        assert_eq!(quote("sbx_a"), "\"sbx_a\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}
