//! `prodbox`: manage sandboxes in the directory, mint signed tokens, and look after sandbox
//! schemas. Run `prodbox --help` for the guide.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use prodbox_core::directory::{ForkAddress, SandboxEntry};
use prodbox_core::token::TokenKeys;
use prodbox_core::{Sandbox, SandboxBuilder, SandboxKey};
use prodbox_db::SandboxPool;
use prodbox_db::directory::{DirectoryStore, StoreError, validate_fork};
use serde_json::{Value, json};
use sqlx::postgres::{PgPool, PgPoolOptions};

const ABOUT: &str = "Test in production with request-level isolation: manage prodbox sandboxes.";

const LONG_ABOUT: &str = "\
Test in production with request-level isolation: manage prodbox sandboxes.

A sandbox is a routing key (pr-42) that test requests carry in W3C baggage. Services that use
prodbox read the sandbox directory from PostgreSQL and see every change made here within a
second: which sandboxes exist, which services each one forks (and where the fork listens),
when each expires, and whether it is disabled (the kill switch).

Typical session:
  export DATABASE_URL=postgres://prodbox@db.internal/shop
  prodbox sandbox create pr-42 --actor alice --origin pr-42 \\
      --forks billing=http://10.0.0.5:8080 --ttl 2h
  export PRODBOX_TOKEN_SECRET=...            # the secret your edge verifies with
  prodbox token mint pr-42 --key-id 2026-11 --ttl 30m   # for this incarnation of pr-42
  curl -H \"baggage: prodbox.token=<token>\" https://shop.example.com/orders
  prodbox sandbox delete pr-42               # also drops its database schema";

const EXIT_CODES: &str = "\
Exit codes: 0 done; 1 refused (no such sandbox, already exists);
2 bad usage or input (invalid key, TTL, fork or label, missing secret);
3 database unreachable or failing.
Add --json to any command for machine-readable output on stdout; errors go to stderr.";

#[derive(Parser)]
#[command(name = "prodbox", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXIT_CODES)]
struct Cli {
    /// PostgreSQL URL of the database holding the directory and the sandbox schemas.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,

    /// Print JSON on stdout (for scripts) instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list, extend, disable and delete sandboxes in the directory.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// Mint signed, expiring tokens for an edge with `Signed` trust.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List and drop sandbox database schemas (prodbox-db).
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Subcommand)]
enum SandboxCommand {
    /// Register a new sandbox.
    #[command(
        after_help = "Example:\n  prodbox sandbox create pr-42 --actor alice --origin pr-42 \\\n      --forks billing=http://10.0.0.5:8080,orders=http://10.0.0.6:50051 --ttl 2h"
    )]
    Create {
        /// Routing key: 1 to 63 of a-z, 0-9 and '-', starting with a letter or digit.
        #[arg(value_parser = parse_key)]
        key: SandboxKey,
        /// Who starts it (a person or a CI job).
        #[arg(long)]
        actor: Option<String>,
        /// The PR or dev session it belongs to.
        #[arg(long)]
        origin: Option<String>,
        /// Services this sandbox forks, as SERVICE=URL; repeat or separate with commas.
        #[arg(long = "forks", alias = "fork", value_name = "SERVICE=URL", value_delimiter = ',', value_parser = parse_fork)]
        forks: Vec<(String, ForkAddress)>,
        /// Services whose baseline traffic this sandbox's fork receives sampled copies of
        /// (shadowing); each must also be in --forks. Repeat or separate with commas.
        #[arg(long, value_name = "SERVICE", value_delimiter = ',')]
        shadows: Vec<String>,
        /// Lifetime, such as 30m, 2h or 1day.
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: Duration,
        /// Create it with the kill switch on.
        #[arg(long)]
        disabled: bool,
    },
    /// List sandboxes (expired ones only with --all).
    List {
        /// Include expired sandboxes.
        #[arg(long)]
        all: bool,
    },
    /// Show one sandbox.
    Show {
        /// The sandbox key.
        #[arg(value_parser = parse_key)]
        key: SandboxKey,
    },
    /// Give a sandbox a new lifetime, counted from now.
    Extend {
        /// The sandbox key.
        #[arg(value_parser = parse_key)]
        key: SandboxKey,
        /// New lifetime from now, such as 2h.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Turn the kill switch on: every service refuses the sandbox at once.
    Disable {
        /// The sandbox key.
        #[arg(value_parser = parse_key)]
        key: SandboxKey,
    },
    /// Turn the kill switch off again.
    Enable {
        /// The sandbox key.
        #[arg(value_parser = parse_key)]
        key: SandboxKey,
    },
    /// Remove a sandbox: turn its kill switch on, drop its database schema and role, then
    /// delete it from the directory.
    Delete {
        /// The sandbox key.
        #[arg(value_parser = parse_key)]
        key: SandboxKey,
        /// Keep the database schema (drop it later with `prodbox db drop`).
        #[arg(long)]
        keep_schema: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a signed token for a sandbox. Send it as `baggage: prodbox.token=<token>`.
    #[command(
        after_help = "The sandbox is read from the directory: the token admits only this \
incarnation of it (not one deleted and made again under the same key), never outlives it, and \
carries its actor and origin unless --actor or --origin say otherwise. A disabled, expired or \
unknown sandbox gets no token (exit 1). --no-directory mints without the database: such a token \
is refused by edges whose directory knows the sandbox.

The secret is read from the environment variable named by --secret-env \
(PRODBOX_TOKEN_SECRET by default) or from --secret-file, never from the command line, and must be \
at least 32 bytes. The edge must know the same secret under the same key id. Tokens live at most \
24h (verifiers refuse longer ones)."
    )]
    Mint {
        /// The sandbox key.
        #[arg(value_parser = parse_key)]
        key: SandboxKey,
        /// Key id of the secret (lets the edge rotate secrets).
        #[arg(long)]
        key_id: String,
        /// Who the token is for.
        #[arg(long)]
        actor: Option<String>,
        /// The PR or dev session.
        #[arg(long)]
        origin: Option<String>,
        /// Lifetime, such as 30m (at most 24h).
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// Mint without reading the directory (the token names no incarnation).
        #[arg(long)]
        no_directory: bool,
        /// Environment variable holding the secret.
        #[arg(long, default_value = "PRODBOX_TOKEN_SECRET")]
        secret_env: String,
        /// File holding the secret (a trailing newline is ignored).
        #[arg(long, conflicts_with = "secret_env")]
        secret_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DbCommand {
    /// List sandbox schemas.
    List,
    /// Drop one sandbox's schema and role.
    Drop {
        /// The sandbox key.
        #[arg(value_parser = parse_key)]
        key: SandboxKey,
    },
    /// Drop the schemas of expired sandboxes (by the schema catalogue or the directory).
    Gc {
        /// Also drop schemas whose sandbox is not in the directory at all.
        #[arg(long)]
        orphans: bool,
        /// Only print what would be dropped.
        #[arg(long)]
        dry_run: bool,
    },
}

fn parse_key(text: &str) -> Result<SandboxKey, String> {
    text.parse::<SandboxKey>().map_err(|e| e.to_string())
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(text).map_err(|e| format!("{e} (try 30m, 2h or 1day)"))?;
    if ttl.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    if ttl > Duration::from_secs(366 * 24 * 3600) {
        return Err("must be at most a year".to_owned());
    }
    Ok(ttl)
}

fn parse_fork(text: &str) -> Result<(String, ForkAddress), String> {
    let (service, address) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not SERVICE=URL"))?;
    let address = validate_fork(service, address).map_err(|e| e.to_string())?;
    Ok((service.to_owned(), address))
}

/// What went wrong, and the exit code it gets.
#[derive(Debug)]
enum Failure {
    Refused(String),
    Usage(String),
    Database(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Self::Refused(_) => 1,
            Self::Usage(_) => 2,
            Self::Database(_) => 3,
        }
    }

    fn message(&self) -> &str {
        match self {
            Self::Refused(m) | Self::Usage(m) | Self::Database(m) => m,
        }
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Database(e) => Self::Database(format!("database error: {e}")),
            other => Self::Refused(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(format!("database error: {error}"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(output) => {
            if json {
                println!("{}", output.json);
            } else {
                println!("{}", output.text.trim_end());
            }
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("error: {}", failure.message());
            ExitCode::from(failure.code())
        }
    }
}

struct Output {
    text: String,
    json: Value,
}

async fn connect(url: Option<&str>) -> Result<PgPool, Failure> {
    let url = url.ok_or_else(|| {
        Failure::Usage("no database: pass --database-url or set DATABASE_URL".to_owned())
    })?;
    let options = url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .map_err(|e| Failure::Usage(format!("invalid --database-url: {e}")))?
        .application_name("prodbox-cli");
    // One plain connection first: a pool would only report that it timed out, not why.
    let probe = <sqlx::postgres::PgConnection as sqlx::Connection>::connect_with(&options);
    match tokio::time::timeout(Duration::from_secs(10), probe).await {
        Ok(Ok(conn)) => {
            let _ = sqlx::Connection::close(conn).await;
        }
        Ok(Err(e)) => {
            return Err(Failure::Database(format!(
                "cannot connect to the database: {e}"
            )));
        }
        Err(_) => {
            return Err(Failure::Database(
                "cannot connect to the database: no answer within 10 s".to_owned(),
            ));
        }
    }
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options))
}

async fn run(cli: Cli) -> Result<Output, Failure> {
    match cli.command {
        Command::Token(TokenCommand::Mint {
            key,
            key_id,
            actor,
            origin,
            ttl,
            no_directory,
            secret_env,
            secret_file,
        }) => {
            let sandbox = if no_directory {
                Sandbox::new(key)
            } else {
                let pool = connect(cli.database_url.as_deref()).await?;
                registered(&DirectoryStore::new(pool), &key).await?
            };
            mint(
                sandbox,
                &key_id,
                actor,
                origin,
                ttl,
                &secret_env,
                secret_file,
            )
        }
        Command::Sandbox(command) => {
            let pool = connect(cli.database_url.as_deref()).await?;
            sandbox(command, pool).await
        }
        Command::Db(command) => {
            let pool = connect(cli.database_url.as_deref()).await?;
            db(command, pool).await
        }
    }
}

fn entry_json(entry: &SandboxEntry, now: SystemTime) -> Value {
    let mut value = serde_json::to_value(entry).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("status".to_owned(), json!(status(entry, now)));
    }
    value
}

fn status(entry: &SandboxEntry, now: SystemTime) -> &'static str {
    if entry.is_expired_at(now) {
        "expired"
    } else if entry.disabled {
        "disabled"
    } else {
        "active"
    }
}

fn when(at: Option<SystemTime>, now: SystemTime) -> String {
    let Some(at) = at else {
        return "never".to_owned();
    };
    let stamp = humantime::format_rfc3339_seconds(at);
    match at.duration_since(now) {
        Ok(left) => format!(
            "{stamp} (in {})",
            humantime::format_duration(Duration::from_secs(left.as_secs()))
        ),
        Err(ago) => format!(
            "{stamp} ({} ago)",
            humantime::format_duration(Duration::from_secs(ago.duration().as_secs()))
        ),
    }
}

fn describe(entry: &SandboxEntry, now: SystemTime) -> String {
    let forks = if entry.forks.is_empty() {
        "none".to_owned()
    } else {
        entry
            .forks
            .iter()
            .map(|(s, a)| format!("{s}={a}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let shadows = if entry.shadows.is_empty() {
        "none".to_owned()
    } else {
        entry.shadows.iter().cloned().collect::<Vec<_>>().join(", ")
    };
    format!(
        "sandbox {key}: {status}\n  actor:   {actor}\n  origin:  {origin}\n  forks:   {forks}\n  shadows: {shadows}\n  created: {created}\n  expires: {expires}\n",
        key = entry.key,
        status = status(entry, now),
        actor = entry.actor.as_deref().unwrap_or("-"),
        origin = entry.origin.as_deref().unwrap_or("-"),
        created = entry
            .created_at
            .map_or("-".to_owned(), |t| humantime::format_rfc3339_seconds(t)
                .to_string()),
        expires = when(entry.expires_at, now),
    )
}

async fn sandbox(command: SandboxCommand, pool: PgPool) -> Result<Output, Failure> {
    let store = DirectoryStore::new(pool.clone());
    let now = SystemTime::now();
    let shown = |verb: &str, entry: SandboxEntry| Output {
        text: format!("{verb}{}", describe(&entry, now)),
        json: entry_json(&entry, now),
    };
    match command {
        SandboxCommand::Create {
            key,
            actor,
            origin,
            forks,
            shadows,
            ttl,
            disabled,
        } => {
            let mut entry = SandboxEntry::new(key);
            entry.actor = actor;
            entry.origin = origin;
            let count = forks.len();
            entry.forks = forks.into_iter().collect::<BTreeMap<_, _>>();
            if entry.forks.len() != count {
                return Err(Failure::Usage(
                    "--forks names a service twice; give each service one address".to_owned(),
                ));
            }
            entry.shadows = shadows.into_iter().collect();
            entry.expires_at = Some(now + ttl);
            entry.disabled = disabled;
            let created = store.create(&entry).await.map_err(|e| match e {
                StoreError::Invalid(m) => Failure::Usage(m),
                other => other.into(),
            })?;
            Ok(shown("created ", created))
        }
        SandboxCommand::List { all } => {
            let entries: Vec<_> = store
                .list()
                .await?
                .into_iter()
                .filter(|e| all || !e.is_expired_at(now))
                .collect();
            let mut text = format!(
                "{:<24} {:<9} {:<12} {:<14} {:<22} FORKS\n",
                "KEY", "STATUS", "ACTOR", "ORIGIN", "EXPIRES"
            );
            for e in &entries {
                let expires = e.expires_at.map_or("never".to_owned(), |t| {
                    humantime::format_rfc3339_seconds(t).to_string()
                });
                let forks: Vec<_> = e.forks.iter().map(|(s, a)| format!("{s}={a}")).collect();
                text.push_str(&format!(
                    "{:<24} {:<9} {:<12} {:<14} {:<22} {}\n",
                    e.key.as_str(),
                    status(e, now),
                    e.actor.as_deref().unwrap_or("-"),
                    e.origin.as_deref().unwrap_or("-"),
                    expires,
                    if forks.is_empty() {
                        "-".to_owned()
                    } else {
                        forks.join(",")
                    }
                ));
            }
            if entries.is_empty() {
                text = if all {
                    "no sandboxes".to_owned()
                } else {
                    "no active sandboxes (--all shows expired ones)".to_owned()
                };
            }
            Ok(Output {
                text,
                json: Value::Array(entries.iter().map(|e| entry_json(e, now)).collect()),
            })
        }
        SandboxCommand::Show { key } => match store.get(&key).await? {
            Some(entry) => Ok(shown("", entry)),
            None => Err(StoreError::NotFound(key).into()),
        },
        SandboxCommand::Extend { key, ttl } => Ok(shown(
            "extended ",
            store.set_expiry(&key, Some(now + ttl)).await?,
        )),
        SandboxCommand::Disable { key } => {
            Ok(shown("disabled ", store.set_disabled(&key, true).await?))
        }
        SandboxCommand::Enable { key } => {
            Ok(shown("enabled ", store.set_disabled(&key, false).await?))
        }
        SandboxCommand::Delete { key, keep_schema } => {
            // Kill switch first, and a moment for every service to see it (the directory's
            // propagation bound is a second): while the schema goes, the sandbox is refused,
            // not unknown, so nothing provisions it again.
            let schema_dropped = if keep_schema {
                false
            } else {
                match store.set_disabled(&key, true).await {
                    Ok(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                    Err(StoreError::NotFound(_)) => {}
                    Err(other) => return Err(other.into()),
                }
                SandboxPool::new(pool).drop_sandbox(&key).await?
            };
            let deleted = store.delete(&key).await?;
            if !deleted && !schema_dropped {
                return Err(StoreError::NotFound(key).into());
            }
            let mut text = if deleted {
                format!("deleted sandbox {key} from the directory")
            } else {
                format!("sandbox {key} was not in the directory")
            };
            if schema_dropped {
                text.push_str(&format!(
                    "; dropped its schema {}",
                    prodbox_db::names::schema_name(&key)
                ));
            } else if !keep_schema {
                text.push_str("; it had no schema");
            }
            Ok(Output {
                text,
                json: json!({"key": key.as_str(), "deleted": deleted, "schema_dropped": schema_dropped}),
            })
        }
    }
}

/// The sandbox `key` as the directory has it, if a token may be minted for it.
async fn registered(store: &DirectoryStore, key: &SandboxKey) -> Result<Sandbox, Failure> {
    let entry = store.get(key).await?.ok_or_else(|| {
        Failure::Refused(format!(
            "sandbox {key} is not in the directory: create it first (or mint with --no-directory)"
        ))
    })?;
    if entry.disabled {
        return Err(Failure::Refused(format!(
            "sandbox {key} is disabled; enable it first"
        )));
    }
    if entry.is_expired_at(SystemTime::now()) {
        return Err(Failure::Refused(format!(
            "sandbox {key} has expired; extend it first"
        )));
    }
    Ok(entry.sandbox())
}

fn mint(
    sandbox: Sandbox,
    key_id: &str,
    actor: Option<String>,
    origin: Option<String>,
    ttl: Duration,
    secret_env: &str,
    secret_file: Option<PathBuf>,
) -> Result<Output, Failure> {
    let secret = match secret_file {
        Some(path) => {
            let mut bytes = std::fs::read(&path).map_err(|e| {
                Failure::Usage(format!("cannot read secret file {}: {e}", path.display()))
            })?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            bytes
        }
        None => std::env::var_os(secret_env)
            .map(|v| v.into_encoded_bytes())
            .ok_or_else(|| {
                Failure::Usage(format!(
                    "no signing secret: set {secret_env} or pass --secret-file"
                ))
            })?,
    };
    let keys = TokenKeys::new()
        .with_key(key_id, &secret)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    // The command line's labels win over the directory's.
    let mut builder = SandboxBuilder::from_key(sandbox.key().clone());
    if let Some(actor) = actor.as_deref().or(sandbox.actor()) {
        builder = builder
            .actor(actor)
            .map_err(|e| Failure::Usage(format!("--actor: {e}")))?;
    }
    if let Some(origin) = origin.as_deref().or(sandbox.origin()) {
        builder = builder
            .origin(origin)
            .map_err(|e| Failure::Usage(format!("--origin: {e}")))?;
    }
    if let Some(at) = sandbox.expires_at() {
        builder = builder.expires_at(at);
    }
    if let Some(at) = sandbox.created_at() {
        builder = builder.created_at(at);
    }
    let sandbox = builder.build();
    let now = SystemTime::now();
    let token = keys
        .mint_at(&sandbox, now, ttl)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let key = sandbox.key();
    // The token stops at the sandbox's expiry if that comes first.
    let expires = sandbox
        .expires_at()
        .map_or(now + ttl, |at| at.min(now + ttl));
    Ok(Output {
        text: format!(
            "{token}\n# sandbox {key}, key id {key_id}, expires {}\n# send as: baggage: prodbox.token={token}",
            humantime::format_rfc3339_seconds(expires)
        ),
        json: json!({
            "token": token,
            "key": key.as_str(),
            "key_id": key_id,
            "expires_at": humantime::format_rfc3339_seconds(expires).to_string(),
            "header": format!("prodbox.token={token}"),
            "incarnation": sandbox.created_at().map(|t| humantime::format_rfc3339_micros(t).to_string()),
        }),
    })
}

async fn db(command: DbCommand, pool: PgPool) -> Result<Output, Failure> {
    let schemas = SandboxPool::new(pool.clone());
    let now = SystemTime::now();
    match command {
        DbCommand::List => {
            let records = schemas.schemas().await?;
            let mut text = format!(
                "{:<24} {:<28} {:<22} EXPIRES\n",
                "KEY", "SCHEMA", "LAST USED"
            );
            for r in &records {
                text.push_str(&format!(
                    "{:<24} {:<28} {:<22} {}\n",
                    r.key.as_str(),
                    r.schema,
                    humantime::format_rfc3339_seconds(r.last_used_at).to_string(),
                    when(r.expires_at, now),
                ));
            }
            if records.is_empty() {
                text = "no sandbox schemas".to_owned();
            }
            let json = records
                .iter()
                .map(|r| {
                    json!({
                        "key": r.key.as_str(),
                        "schema": r.schema,
                        "role": r.role,
                        "created_at": humantime::format_rfc3339_seconds(r.created_at).to_string(),
                        "last_used_at": humantime::format_rfc3339_seconds(r.last_used_at).to_string(),
                        "expires_at": r.expires_at.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                    })
                })
                .collect();
            Ok(Output {
                text,
                json: Value::Array(json),
            })
        }
        DbCommand::Drop { key } => {
            if !schemas.drop_sandbox(&key).await? {
                return Err(Failure::Refused(format!("sandbox {key} has no schema")));
            }
            Ok(Output {
                text: format!(
                    "dropped the schema {} and role of sandbox {key}",
                    prodbox_db::names::schema_name(&key)
                ),
                json: json!({"key": key.as_str(), "dropped": true}),
            })
        }
        DbCommand::Gc { orphans, dry_run } => {
            let directory: std::collections::HashMap<SandboxKey, SandboxEntry> =
                DirectoryStore::new(pool)
                    .list()
                    .await?
                    .into_iter()
                    .map(|e| (e.key.clone(), e))
                    .collect();
            let mut doomed = Vec::new();
            for record in schemas.schemas().await? {
                let why = match directory.get(&record.key) {
                    _ if record.expires_at.is_some_and(|at| at <= now) => "schema expired",
                    Some(entry) if entry.is_expired_at(now) => "sandbox expired",
                    None if orphans => "not in the directory",
                    _ => continue,
                };
                doomed.push((record.key, why));
            }
            let mut dropped = Vec::new();
            if dry_run {
                dropped = doomed;
            } else {
                // Expired schemas go through the janitor's path, which spares one a process
                // started using again since the listing.
                let report = schemas.drop_expired(now).await?;
                for key in report.dropped {
                    dropped.push((key, "schema expired"));
                }
                for (key, why) in doomed
                    .into_iter()
                    .filter(|(_, why)| *why != "schema expired")
                {
                    if schemas.drop_sandbox(&key).await? {
                        dropped.push((key, why));
                    }
                }
                // The others went; these stay for the next run, and the exit code says so.
                if !report.failed.is_empty() {
                    let failed: Vec<String> = report
                        .failed
                        .iter()
                        .map(|(key, error)| format!("{key} ({error})"))
                        .collect();
                    return Err(Failure::Database(format!(
                        "dropped {}; could not drop {}",
                        dropped.len(),
                        failed.join("; ")
                    )));
                }
            }
            let verb = if dry_run { "would drop" } else { "dropped" };
            let mut text = String::new();
            for (key, why) in &dropped {
                text.push_str(&format!("{verb} {key} ({why})\n"));
            }
            if dropped.is_empty() {
                text = "nothing to drop".to_owned();
            }
            Ok(Output {
                text,
                json: json!({
                    "dry_run": dry_run,
                    "dropped": dropped.iter().map(|(k, why)| json!({"key": k.as_str(), "reason": why})).collect::<Vec<_>>(),
                }),
            })
        }
    }
}
