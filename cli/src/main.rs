//! `prodbox`: manage sandboxes in the directory, mint signed tokens, and look after sandbox
//! schemas. Run `prodbox --help` for the guide.

mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use prodbox_core::directory::ForkAddress;
use prodbox_core::{Sandbox, SandboxKey};
use prodbox_db::directory::{DirectoryStore, StoreError, validate_fork};
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};

const ABOUT: &str = "Test in production with request-level isolation: manage prodbox sandboxes.";

const LONG_ABOUT: &str = "\
Test in production with request-level isolation: manage prodbox sandboxes.

A sandbox is a routing key (pr-42) that test requests carry in W3C baggage. Services that use
prodbox read the sandbox directory from PostgreSQL and see every change made here within a
second: which sandboxes exist, which services each one forks (and where the fork listens),
when each expires, and whether it is disabled (the kill switch).

Typical session:
  export PRODBOX_DATABASE_URL=postgres://prodbox@db.internal/shop   # or DATABASE_URL
  prodbox sandbox create pr-42 --actor alice --origin pr-42 \\
      --forks billing=http://10.0.0.5:8080 --ttl 2h
  export PRODBOX_TOKEN_SECRET=...            # the secret your edge verifies with
  TOKEN=$(prodbox token mint pr-42 --key-id 2026-11 --ttl 30m)   # this incarnation of pr-42
  curl -H \"baggage: prodbox.token=$TOKEN\" https://shop.example.com/orders
  prodbox sandbox update pr-42 --forks billing=http://10.0.0.7:8080 --ttl 4h
  prodbox sandbox delete pr-42               # also drops its database schema";

const EXIT_CODES: &str = "\
Exit codes: 0 done; 1 refused (no such sandbox, already exists);
2 bad usage or input (invalid key, TTL, fork or label, missing secret);
3 database or Redis unreachable or failing.
Add --json to any command for machine-readable output on stdout; errors go to stderr, as
{\"error\": {\"kind\": ..., \"message\": ..., \"exit_code\": ...}} under --json.
Shell completions: prodbox completions bash|zsh|fish|elvish|powershell.";

#[derive(Parser)]
#[command(name = "prodbox", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXIT_CODES)]
struct Cli {
    /// PostgreSQL URL of the database holding the directory and the sandbox schemas; when
    /// neither this nor PRODBOX_DATABASE_URL is given, DATABASE_URL.
    #[arg(
        long,
        env = "PRODBOX_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    database_url: Option<String>,

    /// Redis URL of the server holding sandbox keys (prodbox-redis), for `sandbox delete` and
    /// `redis`; its user needs `ACL DELUSER`, `ACL USERS`, and `SCAN`/`UNLINK` on `sbx:*`.
    #[arg(long, env = "PRODBOX_REDIS_URL", global = true, hide_env_values = true)]
    redis_url: Option<String>,

    /// Print JSON on stdout (for scripts) instead of text, and errors as JSON on stderr.
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
    /// List and delete sandboxes' Redis keys and ACL users (prodbox-redis).
    #[command(subcommand)]
    Redis(RedisCommand),
    /// Check a production database (and Redis, with --redis-url) for what would make
    /// sandboxes unsafe or unusable; each finding names the statement that fixes it.
    #[command(
        after_help = "Run it as the login the services' SandboxPool uses. It makes one throwaway role \
(sbxr_doctor_..., dropped again) to see what a sandbox's role could reach and whether it can log \
in, and changes nothing else.\n\nExit codes: 0 healthy (warnings and notes only); 1 findings that \
make sandboxes unsafe or unusable (the report is on stdout); 2 bad usage; 3 database or Redis \
unreachable."
    )]
    Doctor,
    /// Print a completion script for `shell`, such as
    /// `prodbox completions bash > /etc/bash_completion.d/prodbox`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
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
        /// Third parties whose calls from this sandbox a stub service of its own answers, as
        /// DESTINATION=URL (the destination's name in the services' egress policy); repeat or
        /// separate with commas.
        #[arg(long = "stubs", alias = "stub", value_name = "DESTINATION=URL", value_delimiter = ',', value_parser = parse_fork)]
        stubs: Vec<(String, ForkAddress)>,
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
    /// Change what a sandbox forks, shadows or stubs, or its lifetime; what is not given stays.
    #[command(
        after_help = "Example:\n  prodbox sandbox update pr-42 --forks billing=http://10.0.0.7:8080 --ttl 4h\n\nServices see the new routes within a second. A Kafka baseline that stops seeing a fork\nkeeps the sandbox's records from there on (the cut closes where the fork stopped)."
    )]
    Update {
        /// The sandbox key.
        #[arg(value_parser = parse_key)]
        key: SandboxKey,
        /// The services it forks from now on, as SERVICE=URL (replacing the list); repeat or
        /// separate with commas.
        #[arg(long = "forks", alias = "fork", value_name = "SERVICE=URL", value_delimiter = ',', value_parser = parse_fork, conflicts_with = "no_forks")]
        forks: Option<Vec<(String, ForkAddress)>>,
        /// Fork nothing any more (and shadow nothing).
        #[arg(long)]
        no_forks: bool,
        /// The services it shadows from now on (each must be forked).
        #[arg(
            long,
            value_name = "SERVICE",
            value_delimiter = ',',
            conflicts_with = "no_shadows"
        )]
        shadows: Option<Vec<String>>,
        /// Shadow nothing any more.
        #[arg(long)]
        no_shadows: bool,
        /// Its stub services from now on, as DESTINATION=URL (replacing the list).
        #[arg(long = "stubs", alias = "stub", value_name = "DESTINATION=URL", value_delimiter = ',', value_parser = parse_fork, conflicts_with = "no_stubs")]
        stubs: Option<Vec<(String, ForkAddress)>>,
        /// Stub nothing any more.
        #[arg(long)]
        no_stubs: bool,
        /// New lifetime from now, such as 2h.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
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
        /// Keep the sandbox's Redis keys and user (deleted otherwise when --redis-url or
        /// PRODBOX_REDIS_URL is given; later with `prodbox redis drop`).
        #[arg(long)]
        keep_redis: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a signed token for a sandbox (only the token; --details for more). Send it as
    /// `baggage: prodbox.token=<token>`.
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
        #[command(flatten)]
        secret: SecretSource,
        /// Also print the sandbox, key id, expiry and the header to send.
        #[arg(long)]
        details: bool,
    },
    /// Check a token as an edge with `Signed` trust would: signature, expiry, claims, and
    /// (unless --no-directory) that the directory has its sandbox, in the incarnation it
    /// names, enabled and unexpired. Exit 1, with the audit reason, when an edge would refuse it.
    Verify {
        /// The token (`-`: read it from stdin).
        token: String,
        /// Key id the secret is known under at the edge.
        #[arg(long)]
        key_id: String,
        /// Check the token alone, not the directory.
        #[arg(long)]
        no_directory: bool,
        #[command(flatten)]
        secret: SecretSource,
    },
}

/// Where a token secret comes from: never the command line.
#[derive(clap::Args)]
struct SecretSource {
    /// Environment variable holding the secret.
    #[arg(long, default_value = "PRODBOX_TOKEN_SECRET")]
    secret_env: String,
    /// File holding the secret (a trailing newline is ignored).
    #[arg(long, conflicts_with = "secret_env")]
    secret_file: Option<PathBuf>,
}

/// The one sandbox a command is about.
#[derive(clap::Args)]
struct Target {
    /// The sandbox key.
    #[arg(value_parser = parse_key)]
    key: SandboxKey,
}

#[derive(Subcommand)]
enum DbCommand {
    /// List sandbox schemas.
    List,
    /// Drop one sandbox's schema and role.
    Drop(Target),
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

#[derive(Subcommand)]
enum RedisCommand {
    /// List the sandboxes with a Redis ACL user or keys.
    List,
    /// Delete one sandbox's ACL user, then its keys (SCAN and UNLINK, never blocking Redis).
    Drop(Target),
    /// Delete the Redis objects of every sandbox the directory no longer has, or has expired.
    Gc {
        /// Only print what would be deleted.
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
        return Err("must be at most 366 days".to_owned());
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
enum Failure {
    Refused(String),
    Usage(String),
    Database(String),
    /// A report of what is wrong (`doctor`): printed as output, with exit code 1.
    Unhealthy(Output),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Self::Refused(_) | Self::Unhealthy(_) => 1,
            Self::Usage(_) => 2,
            Self::Database(_) => 3,
        }
    }

    fn message(&self) -> &str {
        match self {
            Self::Refused(m) | Self::Usage(m) | Self::Database(m) => m,
            Self::Unhealthy(_) => "findings",
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Refused(_) | Self::Unhealthy(_) => "refused",
            Self::Usage(_) => "usage",
            Self::Database(_) => "unavailable",
        }
    }

    /// Writes the failure on stderr (as JSON under `--json`) and gives its exit code.
    fn report(&self, json: bool) -> ExitCode {
        if let Self::Unhealthy(output) = self {
            output.print(json);
            return ExitCode::from(self.code());
        }
        if json {
            let error = serde_json::json!({
                "error": {"kind": self.kind(), "message": self.message(), "exit_code": self.code()}
            });
            eprintln!("{error}");
        } else {
            eprintln!("error: {}", self.message());
        }
        ExitCode::from(self.code())
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
    let mut cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    let json = cli.json;
    // clap reads one variable per flag: the generic name is the fallback.
    if cli.database_url.as_deref().is_none_or(str::is_empty) {
        cli.database_url = std::env::var("DATABASE_URL")
            .ok()
            .filter(|url| !url.is_empty());
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return Failure::Refused(format!("cannot start: {e}")).report(json),
    };
    match runtime.block_on(run(cli)) {
        Ok(output) => {
            output.print(json);
            ExitCode::SUCCESS
        }
        Err(failure) => failure.report(json),
    }
}

/// What clap refused: its own text, or under `--json` (which clap could not parse yet) the
/// same JSON as every other failure. Help and version go to stdout as usual.
fn usage_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let informational = matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if informational || !std::env::args_os().any(|arg| arg == "--json") {
        let _ = error.print();
        return ExitCode::from(if error.use_stderr() { 2 } else { 0 });
    }
    // clap's first line says what is wrong; the rest is usage text for people.
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default();
    Failure::Usage(first.trim_start_matches("error: ").to_owned()).report(true)
}

struct Output {
    text: String,
    json: Value,
}

impl Output {
    /// On stdout, as JSON under `--json`.
    fn print(&self, json: bool) {
        use std::io::Write as _;
        let text = if json {
            self.json.to_string()
        } else {
            self.text.trim_end().to_owned()
        };
        // A reader that stops early (`| head`) is no failure of ours.
        let _ = writeln!(std::io::stdout().lock(), "{text}");
    }
}

/// How to connect to the database `url` names.
fn connect_options(url: Option<&str>) -> Result<sqlx::postgres::PgConnectOptions, Failure> {
    let url = url.ok_or_else(|| {
        Failure::Usage(
            "no database: pass --database-url or set PRODBOX_DATABASE_URL (or DATABASE_URL)"
                .to_owned(),
        )
    })?;
    Ok(url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .map_err(|e| Failure::Usage(format!("invalid --database-url: {e}")))?
        .application_name("prodbox-cli"))
}

async fn connect(url: Option<&str>) -> Result<PgPool, Failure> {
    let options = connect_options(url)?;
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
            secret,
            details,
        }) => {
            let sandbox = if no_directory {
                Sandbox::new(key)
            } else {
                let pool = connect(cli.database_url.as_deref()).await?;
                cmd::token::registered(&DirectoryStore::new(pool), &key).await?
            };
            cmd::token::mint(sandbox, &key_id, actor, origin, ttl, secret, details)
        }
        Command::Token(TokenCommand::Verify {
            token,
            key_id,
            no_directory,
            secret,
        }) => {
            let token = if token == "-" {
                std::io::read_to_string(std::io::stdin())
                    .map_err(|e| Failure::Usage(format!("cannot read the token from stdin: {e}")))?
            } else {
                token
            };
            let store = if no_directory {
                None
            } else {
                Some(DirectoryStore::new(
                    connect(cli.database_url.as_deref()).await?,
                ))
            };
            cmd::token::verify(&token, &key_id, secret, store.as_ref()).await
        }
        Command::Doctor => {
            // Reachable first, with connect's clear errors; then examined.
            let options = connect_options(cli.database_url.as_deref())?;
            connect(cli.database_url.as_deref()).await?.close().await;
            let redis = match cli.redis_url.as_deref() {
                Some(url) => Some(cmd::redis::connect(url).await?),
                None => None,
            };
            cmd::doctor::run(&options, redis).await
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "prodbox", &mut script);
            let script = String::from_utf8_lossy(&script).into_owned();
            Ok(Output {
                json: serde_json::json!({ "shell": shell.to_string(), "script": script }),
                text: script,
            })
        }
        Command::Sandbox(command) => {
            let pool = connect(cli.database_url.as_deref()).await?;
            let redis = match (&command, cli.redis_url.as_deref()) {
                (
                    SandboxCommand::Delete {
                        keep_redis: false, ..
                    },
                    Some(url),
                ) => Some(cmd::redis::connect(url).await?),
                _ => None,
            };
            cmd::sandbox::run(command, pool, redis).await
        }
        Command::Redis(command) => {
            let url = cli.redis_url.as_deref().ok_or_else(|| {
                Failure::Usage("no Redis: pass --redis-url or set PRODBOX_REDIS_URL".to_owned())
            })?;
            let redis = cmd::redis::connect(url).await?;
            let pool = match command {
                RedisCommand::Gc { .. } => Some(connect(cli.database_url.as_deref()).await?),
                _ => None,
            };
            cmd::redis::run(command, redis, pool).await
        }
        Command::Db(command) => {
            let pool = connect(cli.database_url.as_deref()).await?;
            cmd::db::run(command, pool).await
        }
    }
}
