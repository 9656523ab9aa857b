//! The directory table itself: its DDL (the Kafka cuts' table and triggers included, made in
//! the same step), and how a row is checked and read into an entry.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use prodbox_core::directory::{ForkAddress, InvalidForkAddress, SandboxEntry};
use prodbox_core::{Sandbox, SandboxKey};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};

use super::StoreError;
use crate::provision::{ensure_ddl, time};

/// How long creating the table waits for another process doing the same.
const DDL_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the table, its triggers and every column are in place.
const DDL_READY: &str = "
SELECT EXISTS (SELECT 1 FROM pg_trigger
               WHERE tgname = 'sandboxes_notify' AND tgrelid = to_regclass('prodbox.sandboxes'))
   AND EXISTS (SELECT 1 FROM pg_trigger
               WHERE tgname = 'sandboxes_truncate' AND tgrelid = to_regclass('prodbox.sandboxes'))
   AND EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = 'prodbox' AND table_name = 'sandboxes'
                 AND column_name = 'shadows')
   AND EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = 'prodbox' AND table_name = 'sandboxes'
                 AND column_name = 'stubs')
   AND to_regclass('prodbox.kafka_cuts') IS NOT NULL
   AND EXISTS (SELECT 1 FROM pg_trigger
               WHERE tgname = 'sandboxes_cuts_gone' AND tgrelid = to_regclass('prodbox.sandboxes'))";

const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS prodbox.sandboxes (
    key text PRIMARY KEY CHECK (key ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    actor text,
    origin text,
    forks jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(forks) = 'object'),
    shadows jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(shadows) = 'array'),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    disabled boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE prodbox.sandboxes ADD COLUMN IF NOT EXISTS
    shadows jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(shadows) = 'array');
ALTER TABLE prodbox.sandboxes ADD COLUMN IF NOT EXISTS
    stubs jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(stubs) = 'object');
CREATE OR REPLACE FUNCTION prodbox.sandboxes_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('prodbox_directory', OLD.key);
    END IF;
    IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.key <> OLD.key) THEN
        PERFORM pg_notify('prodbox_directory', NEW.key);
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER sandboxes_notify
    AFTER INSERT OR UPDATE OR DELETE ON prodbox.sandboxes
    FOR EACH ROW EXECUTE FUNCTION prodbox.sandboxes_notify();
CREATE OR REPLACE FUNCTION prodbox.sandboxes_notify_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('prodbox_directory', '*');
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER sandboxes_truncate
    AFTER TRUNCATE ON prodbox.sandboxes
    FOR EACH STATEMENT EXECUTE FUNCTION prodbox.sandboxes_notify_all();
-- The Kafka cuts (prodbox_core::directory::cuts): per baseline group, topic, partition and
-- sandbox, the offsets each incarnation's fork handles. Written by baseline consumers only.
CREATE TABLE IF NOT EXISTS prodbox.kafka_cuts (
    grp text NOT NULL,
    topic text NOT NULL,
    part integer NOT NULL,
    sandbox text NOT NULL,
    incarnations bigint[] NOT NULL DEFAULT '{}',
    starts bigint[] NOT NULL DEFAULT '{}',
    ends bigint[] NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (grp, topic, part, sandbox),
    CHECK (cardinality(incarnations) = cardinality(starts)
           AND cardinality(starts) = cardinality(ends))
);
-- A gone sandbox's cuts are kept a retention after it went (its fork may still be draining
-- records the baseline gave it), not after their last change: its going stamps them.
CREATE OR REPLACE FUNCTION prodbox.kafka_cuts_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE prodbox.kafka_cuts SET updated_at = now();
    ELSE
        UPDATE prodbox.kafka_cuts SET updated_at = now() WHERE sandbox = OLD.key;
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER sandboxes_cuts_gone
    AFTER DELETE ON prodbox.sandboxes
    FOR EACH ROW EXECUTE FUNCTION prodbox.kafka_cuts_gone();
CREATE OR REPLACE TRIGGER sandboxes_cuts_all_gone
    AFTER TRUNCATE ON prodbox.sandboxes
    FOR EACH STATEMENT EXECUTE FUNCTION prodbox.kafka_cuts_gone();
"#;

pub(super) const COLUMNS: &str =
    "key, actor, origin, forks::text AS forks, shadows::text AS shadows, stubs::text AS stubs,
    extract(epoch FROM created_at)::float8 AS created,
    extract(epoch FROM expires_at)::float8 AS expires,
    disabled";

/// Creates the directory table, its notify trigger and the `prodbox` schema if missing.
/// Idempotent and safe when several processes race.
pub async fn ensure_table(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    ensure_ddl(&mut conn, DDL_READY, DDL, DDL_TIMEOUT).await
}

/// Checks what the table's constraints do not: labels that can travel in baggage and fork
/// addresses a router can use.
pub(super) fn validate(entry: &SandboxEntry) -> Result<(), StoreError> {
    let mut builder =
        Sandbox::builder(entry.key.as_str()).map_err(|e| StoreError::Invalid(e.to_string()))?;
    if let Some(actor) = &entry.actor {
        builder = builder
            .actor(actor)
            .map_err(|e| StoreError::Invalid(format!("actor: {e}")))?;
    }
    if let Some(origin) = &entry.origin {
        builder = builder
            .origin(origin)
            .map_err(|e| StoreError::Invalid(format!("origin: {e}")))?;
    }
    drop(builder);
    for service in entry.forks.keys().chain(entry.stubs.keys()) {
        validate_service(service)?;
    }
    if let Some(service) = entry.shadows.iter().find(|s| !entry.forks.contains_key(*s)) {
        return Err(StoreError::Invalid(format!(
            "shadows {service} but has no fork of it: add --forks {service}=URL"
        )));
    }
    Ok(())
}

/// A service name (`billing`, `orders.v2`) and a fork address (`http://host[:port]` or
/// `https://host[:port]`, as [`ForkAddress`] parses it).
pub fn validate_fork(service: &str, address: &str) -> Result<ForkAddress, StoreError> {
    validate_service(service)?;
    address
        .parse()
        .map_err(|e: InvalidForkAddress| StoreError::Invalid(e.to_string()))
}

fn validate_service(service: &str) -> Result<(), StoreError> {
    let service_ok = !service.is_empty()
        && service.len() <= 63
        && service
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if !service_ok {
        return Err(StoreError::Invalid(format!(
            "service name {service:?}: use 1 to 63 of a-z, 0-9, '-', '_', '.'"
        )));
    }
    Ok(())
}

pub(super) fn entry_of(row: &PgRow) -> Result<SandboxEntry, String> {
    let (mut entry, problems) = parse(row)?;
    if !problems.is_empty() {
        // A row edited by hand into something prodbox would not write. Forgetting it could
        // admit the sandbox as unknown; keeping its bad address could route to it. So it
        // stays, refused everywhere: disabled, with no forks, shadows or labels.
        tracing::warn!(
            target: "prodbox::directory",
            sandbox = %entry.key,
            problems = %problems.join("; "),
            "invalid directory row: the sandbox is treated as disabled until it is fixed"
        );
        entry.disabled = true;
        entry.forks.clear();
        entry.shadows.clear();
        entry.stubs.clear();
        entry.actor = None;
        entry.origin = None;
    }
    Ok(entry)
}

/// The row as it is, and what is wrong with it (nothing, for a row prodbox wrote); `Err` when
/// its key is no sandbox key.
pub(super) fn parse(row: &PgRow) -> Result<(SandboxEntry, Vec<String>), String> {
    let key: String = row.try_get("key").map_err(|e| e.to_string())?;
    let key: SandboxKey = key.parse().map_err(|e| format!("key {key:?}: {e}"))?;
    let mut problems = Vec::new();
    let mut json = |column: &str| -> Option<String> {
        row.try_get::<String, _>(column)
            .map_err(|e| problems.push(format!("{column}: {e}")))
            .ok()
    };
    let forks = json("forks");
    let shadows = json("shadows");
    let stubs = json("stubs");
    let mut entry = SandboxEntry::new(key);
    for (column, text, into) in [
        ("forks", forks, &mut entry.forks),
        ("stubs", stubs, &mut entry.stubs),
    ] {
        match text.map(|f| serde_json::from_str::<BTreeMap<String, ForkAddress>>(&f)) {
            Some(Ok(addresses)) => *into = addresses,
            Some(Err(e)) => problems.push(format!("{column}: {e}")),
            None => {}
        }
    }
    match shadows.map(|s| serde_json::from_str::<BTreeSet<String>>(&s)) {
        Some(Ok(shadows)) => entry.shadows = shadows,
        Some(Err(e)) => problems.push(format!("shadows: {e}")),
        None => {}
    }
    match (row.try_get("actor"), row.try_get("origin")) {
        (Ok(actor), Ok(origin)) => (entry.actor, entry.origin) = (actor, origin),
        (Err(e), _) | (_, Err(e)) => problems.push(e.to_string()),
    }
    match row.try_get::<f64, _>("created") {
        Ok(created) => entry.created_at = Some(time(created)),
        Err(e) => problems.push(e.to_string()),
    }
    match row.try_get::<Option<f64>, _>("expires") {
        Ok(expires) => entry.expires_at = expires.map(time),
        Err(e) => problems.push(e.to_string()),
    }
    match row.try_get::<bool, _>("disabled") {
        Ok(disabled) => entry.disabled = disabled,
        Err(e) => problems.push(e.to_string()),
    }
    if let Err(e) = validate(&entry) {
        problems.push(e.to_string());
    }
    Ok((entry, problems))
}

pub(super) fn entries_of(rows: &[PgRow]) -> Vec<SandboxEntry> {
    rows.iter()
        .filter_map(|row| match entry_of(row) {
            Ok(entry) => Some(entry),
            Err(error) => {
                // Only a key that is not a sandbox key gets here (the table's check refuses
                // those): nothing could ever name that sandbox.
                tracing::warn!(target: "prodbox::directory", %error, "ignoring a directory row without a valid key");
                None
            }
        })
        .collect()
}
