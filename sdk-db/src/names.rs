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

/// The restricted role sandbox `key`'s sessions run under in `database`. Roles are shared by
/// every database of a cluster, schemas are not: the name carries 48 bits of a hash of the
/// database's name, so that the same sandbox in two databases has two roles, each with its own
/// password and privileges, dropped on its own.
pub fn role_name(database: &str, key: &SandboxKey) -> String {
    let digest = Sha256::digest(database.as_bytes());
    let tag: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    derive(&format!("sbxr_{tag}_"), key)
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
        let role = role_name("shop", &short);
        assert!(
            role.starts_with("sbxr_") && role.ends_with("_pr_42"),
            "{role}"
        );
        assert_eq!(role.len(), "sbxr_".len() + 12 + "_pr_42".len());
        // Another database, another role.
        assert_ne!(role_name("shop", &short), role_name("shop2", &short));

        let a: SandboxKey = format!("{}a", "x".repeat(62)).parse().unwrap();
        let b: SandboxKey = format!("{}b", "x".repeat(62)).parse().unwrap();
        for name in [
            schema_name(&a),
            schema_name(&b),
            role_name("shop", &a),
            role_name("shop", &b),
        ] {
            assert!(name.len() <= MAX_IDENTIFIER, "{name}");
        }
        assert_ne!(schema_name(&a), schema_name(&b));
        assert_ne!(role_name("shop", &a), role_name("shop", &b));
        assert_eq!(quote("sbx_a"), "\"sbx_a\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}
