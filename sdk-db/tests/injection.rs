//! Keys that look like SQL never become sandboxes (they fail validation), and valid keys that
//! look like Postgres names map to distinct, quoted, short-enough sandbox names that provision.

mod common;

use std::collections::BTreeSet;

use common::{catalogue_rows, migrator, orders_in, role_of, sandbox, schema_of};
use prodbox_core::{FutureExt, KeyError, Sandbox, SandboxKey};
use prodbox_db::SandboxPool;
use prodbox_db::names::{role_name, schema_name};
use prodbox_testkit::pg::{
    TestDatabase, cluster_lock, count_rows, require_postgres, role_exists, run_id, schema_exists,
};
use sha2::{Digest, Sha256};

#[test]
fn keys_that_look_like_sql_fail_validation() {
    let cases: &[(&str, KeyError)] = &[
        (
            "x'; drop table orders; --",
            KeyError::InvalidChar {
                found: '\'',
                index: 1,
            },
        ),
        (
            "a\"b",
            KeyError::InvalidChar {
                found: '"',
                index: 1,
            },
        ),
        (
            "PUBLIC",
            KeyError::InvalidChar {
                found: 'P',
                index: 0,
            },
        ),
        (
            "pg_catalog",
            KeyError::InvalidChar {
                found: '_',
                index: 2,
            },
        ),
        (
            "..",
            KeyError::InvalidChar {
                found: '.',
                index: 0,
            },
        ),
        (
            "Orders",
            KeyError::InvalidChar {
                found: 'O',
                index: 0,
            },
        ),
        (
            "pr-42\"; DROP SCHEMA public CASCADE; --",
            KeyError::InvalidChar {
                found: '"',
                index: 5,
            },
        ),
        (
            "a;b",
            KeyError::InvalidChar {
                found: ';',
                index: 1,
            },
        ),
        (
            "a b",
            KeyError::InvalidChar {
                found: ' ',
                index: 1,
            },
        ),
        (
            "a\0b",
            KeyError::InvalidChar {
                found: '\0',
                index: 1,
            },
        ),
        (
            "$1",
            KeyError::InvalidChar {
                found: '$',
                index: 0,
            },
        ),
        (
            "a/*b*/",
            KeyError::InvalidChar {
                found: '/',
                index: 1,
            },
        ),
        (
            "a\\b",
            KeyError::InvalidChar {
                found: '\\',
                index: 1,
            },
        ),
        (
            "sbx_x",
            KeyError::InvalidChar {
                found: '_',
                index: 3,
            },
        ),
        (
            "pub\u{131}ic",
            KeyError::InvalidChar {
                found: '\u{131}',
                index: 3,
            },
        ),
        ("", KeyError::Empty),
        ("-x", KeyError::LeadingHyphen),
        ("x-", KeyError::TrailingHyphen),
        ("--", KeyError::LeadingHyphen),
    ];
    for (key, expected) in cases {
        assert_eq!(SandboxKey::validate(key).as_ref(), Err(expected), "{key:?}");
        assert_eq!(
            SandboxKey::new(key).err().as_ref(),
            Some(expected),
            "{key:?}"
        );
        assert!(key.parse::<SandboxKey>().is_err(), "{key:?}");
        assert!(SandboxKey::try_from(*key).is_err(), "{key:?}");
        // Without a key there is no sandbox, so nothing of the string can reach SQL.
        assert!(Sandbox::builder(key).is_err(), "{key:?}");
    }
    let long = "a".repeat(64);
    assert_eq!(
        SandboxKey::validate(&long),
        Err(KeyError::TooLong { len: 64 })
    );
}

/// Valid keys in `a-z0-9-`, from a fixed pseudo-random sequence.
fn generated_keys(count: usize) -> Vec<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut keys = Vec::new();
    while keys.len() < count {
        let len = 1 + (next() % 63) as usize;
        let key: String = (0..len)
            .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize] as char)
            .collect();
        if SandboxKey::validate(&key).is_ok() {
            keys.push(key);
        }
    }
    keys
}

#[test]
fn derived_names_are_plain_short_and_one_to_one() {
    let mut keys = generated_keys(5000);
    let a62 = "a".repeat(62);
    keys.extend([
        "public".to_owned(),
        "pg-catalog".to_owned(),
        "0".to_owned(),
        "a-b".to_owned(),
        "a--b".to_owned(),
        format!("{a62}b"),
        format!("{a62}c"),
        "x".repeat(58),
        "x".repeat(59),
        "x".repeat(60),
        "x".repeat(63),
    ]);
    keys.sort();
    keys.dedup();
    let mut schemas = BTreeSet::new();
    let mut roles = BTreeSet::new();
    for key in &keys {
        let key: SandboxKey = key.parse().unwrap();
        let (schema, role) = (schema_name(&key), role_name("shop", &key));
        for name in [&schema, &role] {
            assert!(name.len() <= 63, "{name} ({} bytes)", name.len());
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
        }
        assert!(schema.starts_with("sbx_") && role.starts_with("sbxr_"));
        assert!(schemas.insert(schema.clone()), "schema {schema} twice");
        assert!(roles.insert(role.clone()), "role {role} twice");
    }
    // Short keys map exactly; keys too long for a name keep a prefix and get a hash suffix.
    let key: SandboxKey = "pg-catalog".parse().unwrap();
    assert_eq!(schema_name(&key), "sbx_pg_catalog");
    let role = role_name("shop", &key);
    assert!(
        role.starts_with("sbxr_") && role.ends_with("_pg_catalog"),
        "{role}"
    );
    // Plain names stay under 63 bytes; a name that would reach 63 is shortened and hashed to
    // exactly 63, so no plain name can equal a shortened one.
    let key: SandboxKey = "x".repeat(58).parse().unwrap();
    assert_eq!(schema_name(&key), format!("sbx_{}", "x".repeat(58)));
    let key: SandboxKey = "x".repeat(59).parse().unwrap();
    assert_eq!(schema_name(&key).len(), 63);
    assert_ne!(schema_name(&key), format!("sbx_{}", "x".repeat(59)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tricky_valid_keys_provision_distinct_schemas() {
    require_postgres().await;
    // These keys are fixed (not unique per run) and roles are cluster-wide: one test process
    // at a time.
    let _lock = cluster_lock("prodbox-db-injection-fixed-keys").await;
    let a62 = "a".repeat(62);
    let keys: Vec<String> = vec![
        "public".to_owned(),
        "pg-catalog".to_owned(),
        "pg-toast".to_owned(),
        "information-schema".to_owned(),
        "prodbox".to_owned(),
        "0".to_owned(),
        format!("{a62}b"),
        format!("{a62}c"),
        "y".repeat(59),
        "y".repeat(60),
    ];
    let db = TestDatabase::create_with(5).await;
    migrator("orders")
        .await
        .run(db.pool())
        .await
        .expect("migrate production");
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .connections_per_sandbox(1)
        .build();
    // A run that crashed may have left these roles behind; they must not be reused blindly.
    for key in &keys {
        let _ = pool.drop_sandbox(&key.parse().unwrap()).await;
    }

    for key in &keys {
        sqlx::query("INSERT INTO orders (item) VALUES ($1)")
            .bind(key)
            .execute(&pool)
            .in_sandbox(sandbox(key))
            .await
            .unwrap_or_else(|e| panic!("sandbox {key:?}: {e}"));
    }

    let expected: BTreeSet<String> = keys.iter().map(|k| schema_of(k)).collect();
    assert_eq!(expected.len(), keys.len(), "derived schema names collide");
    let present: BTreeSet<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace
         WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'",
    )
    .fetch_all(db.pool())
    .await
    .unwrap()
    .into_iter()
    .collect();
    let mut all = expected.clone();
    all.extend(["public".to_owned(), "prodbox".to_owned()]);
    assert_eq!(present, all);
    for key in &keys {
        assert_eq!(
            orders_in(db.pool(), &schema_of(key)).await,
            [(1, key.clone())],
            "{key}"
        );
        assert!(role_exists(&role_of(&db, key)).await, "{key}");
        assert_eq!(catalogue_rows(db.pool(), key).await, 1);
    }
    // Production and the system schemas are untouched.
    assert_eq!(count_rows(db.pool(), "public", "orders").await, 0);
    for system in ["pg_catalog", "pg_toast", "information_schema"] {
        let owner: String = sqlx::query_scalar(
            "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = $1",
        )
        .bind(system)
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(owner, "postgres", "{system}");
    }

    for key in &keys {
        assert!(pool.drop_sandbox(&key.parse().unwrap()).await.unwrap());
        assert!(!role_exists(&role_of(&db, key)).await);
    }
    db.cleanup().await;
}

/// A valid key of exactly 63 characters, unique to this run.
fn long_key(tag: &str) -> String {
    let mut key = format!("{tag}-{}-", run_id());
    while key.len() < 63 {
        key.push('x');
    }
    key
}

/// The 12 hex digits `names` appends to a shortened name of `key`.
/// The hash suffix of shortened names: the first 8 bytes of SHA-256, in hex.
fn hash16(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_key_cannot_take_the_schema_of_a_long_one() {
    require_postgres().await;
    let victim = long_key("vic");
    let victim_body = victim.replace('-', "_");
    // Built from public information only: the victim's key and SHA-256.
    let attacker = format!("{}-{}", &victim[..42], hash16(&victim));
    // A role name is `sbxr_`, 12 hex digits of the database and `_` (18 bytes), then the key.
    let role_attacker = format!("{}-{}", &victim[..28], hash16(&victim));
    assert!(SandboxKey::validate(&attacker).is_ok());
    assert_ne!(attacker, victim);
    assert_eq!(
        schema_of(&victim),
        format!("sbx_{}_{}", &victim_body[..42], hash16(&victim))
    );
    let db = TestDatabase::create_with(5).await;
    let same_schema = schema_of(&attacker) == schema_of(&victim);
    let same_role = role_of(&db, &role_attacker) == role_of(&db, &victim);

    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .build();
    sqlx::query("INSERT INTO orders (item) VALUES ('victim data')")
        .execute(&pool)
        .in_sandbox(sandbox(&victim))
        .await
        .unwrap();
    let attacked = sqlx::query("SELECT 1")
        .execute(&pool)
        .in_sandbox(sandbox(&attacker))
        .await;
    let survived = schema_exists(db.pool(), &schema_of(&victim)).await;
    for key in [&victim, &attacker] {
        let _ = pool.drop_sandbox(&key.parse().unwrap()).await;
    }
    let victim_role = role_of(&db, &victim);
    db.cleanup().await;
    assert!(
        !same_schema && !same_role && survived,
        "key {attacker:?} maps to schema {} of key {victim:?}: {same_schema}; key \
         {role_attacker:?} maps to its role {}: {same_role}; provisioning {attacker:?} \
         returned {attacked:?} and the victim's schema survived: {survived}",
        schema_of(&attacker),
        victim_role
    );
}
