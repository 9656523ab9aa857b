//! What a refused or failed database call says: [`SandboxDbError`], its stable audit reasons,
//! and the one place where PostgreSQL's own refusals of a sandbox's role become typed
//! prodbox errors (`refine`).
use prodbox_core::audit::{AuditEvent, Decision, Direction, Protocol};
use prodbox_core::{Sandbox, SandboxKey};

/// Why prodbox refused or could not serve a sandboxed database call. Nothing ever falls back to
/// production: every one of these fails the call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxDbError {
    /// The sandbox's schema could not be provisioned.
    #[error("prodbox: provisioning the schema of sandbox {sandbox} failed: {source}")]
    Provisioning {
        /// The sandbox.
        sandbox: SandboxKey,
        /// What failed.
        #[source]
        source: sqlx::Error,
    },
    /// The sandbox's role could reach production: a table, column or sequence it may read or
    /// write, a schema or the database it may create objects in, a `SECURITY DEFINER` function
    /// it may run, large objects or a foreign server (granted to `PUBLIC`, usually). Checked when
    /// the sandbox is provisioned, whenever a process opens its pool, and with every use it
    /// records: the sandbox is refused rather than run with that exposure.
    #[error(
        "prodbox: sandbox {sandbox} is refused: its role could reach production through {}",
        findings.join("; ")
    )]
    ProductionExposed {
        /// The sandbox.
        sandbox: SandboxKey,
        /// What it could reach (at most 20), each with the statement that closes it.
        findings: Vec<String>,
    },
    /// The sandbox touched a table outside its own schema (a production table, say); Postgres
    /// refused, as the sandbox role has no privileges there.
    #[error("prodbox: sandbox {sandbox} may not use production data outside its schema: {message}")]
    ProductionAccessRefused {
        /// The sandbox.
        sandbox: SandboxKey,
        /// What Postgres said.
        message: String,
    },
    /// Every sandbox pool slot stayed busy for the acquire timeout.
    #[error(
        "prodbox: no sandbox pool slot for {sandbox} within the acquire timeout ({active} sandboxes active, the limit)"
    )]
    Capacity {
        /// The sandbox.
        sandbox: SandboxKey,
        /// Active sandbox pools.
        active: usize,
    },
    /// The sandbox has expired.
    #[error("prodbox: sandbox {0} has expired")]
    Expired(SandboxKey),
    /// The sandbox was deleted and made again since this process's directory last heard of it:
    /// the database holds a newer incarnation's schema, which an older one never replaces.
    #[error(
        "prodbox: sandbox {sandbox} was made again since (this process knows an older incarnation); refused until its directory catches up"
    )]
    StaleIncarnation {
        /// The sandbox.
        sandbox: SandboxKey,
    },
    /// The call was made in one context and its work first polled in another (a stream or
    /// future made inside a sandbox and awaited outside it, or the other way round): which one
    /// it belongs to cannot be known, so it runs in neither. See the rule in the crate docs.
    #[error(
        "prodbox: a database call made {} was first polled {}; it runs in neither",
        in_context(at_call.as_ref()),
        in_context(at_poll.as_ref())
    )]
    ContextChanged {
        /// The sandbox where the call was made, if any.
        at_call: Option<SandboxKey>,
        /// The sandbox where its work was first polled, if any.
        at_poll: Option<SandboxKey>,
    },
    /// A pool that requires a scope was used by work running in none: work that lost its
    /// request's context (spawned with `tokio::spawn`, on a thread, by a library's worker), or
    /// work of the service's own started outside any request. Run the latter with
    /// `prodbox_core::FutureExt::in_production`, and start the former with the helpers of
    /// `prodbox_core::task`.
    #[error(
        "prodbox: database work ran in no prodbox scope (lost its request's context, or outside any request); it might belong to a sandbox, so it is refused"
    )]
    NoScope,
    /// A pool or connection that serves one context was used in another: the production pool
    /// by a sandboxed task, or a connection taken for one sandbox by another sandbox or by
    /// production.
    #[error(
        "prodbox: a database {} of {} may not be used {}",
        if *connection { "connection" } else { "pool" },
        serving(serves.as_ref()),
        in_context(context.as_ref())
    )]
    WrongContext {
        /// The sandbox the pool or connection serves, or `None` for production.
        serves: Option<SandboxKey>,
        /// The sandbox of the task that used it, or `None` for production.
        context: Option<SandboxKey>,
        /// Whether a connection (or transaction) was used, rather than a pool.
        connection: bool,
    },
}

fn in_context(key: Option<&SandboxKey>) -> String {
    match key {
        Some(key) => format!("in sandbox {key}"),
        None => "outside any sandbox".to_owned(),
    }
}

fn serving(key: Option<&SandboxKey>) -> String {
    match key {
        Some(key) => format!("sandbox {key}"),
        None => "production".to_owned(),
    }
}

impl SandboxDbError {
    /// A short stable name for audit events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Provisioning { .. } => "db_provisioning_failed",
            Self::ProductionExposed { .. } => "db_production_exposed",
            Self::ProductionAccessRefused { .. } => "db_production_access_refused",
            Self::Capacity { .. } => "db_capacity",
            Self::Expired(_) => "sandbox_expired",
            Self::StaleIncarnation { .. } => "db_stale_incarnation",
            Self::ContextChanged { .. } => "db_context_changed",
            Self::WrongContext { .. } => "db_wrong_context",
            Self::NoScope => "db_no_scope",
        }
    }

    /// The sandbox this error concerns, if any.
    fn key(&self) -> Option<&SandboxKey> {
        match self {
            Self::Provisioning { sandbox, .. }
            | Self::ProductionExposed { sandbox, .. }
            | Self::ProductionAccessRefused { sandbox, .. }
            | Self::Capacity { sandbox, .. }
            | Self::StaleIncarnation { sandbox }
            | Self::Expired(sandbox) => Some(sandbox),
            Self::ContextChanged { at_call, at_poll } => at_call.as_ref().or(at_poll.as_ref()),
            Self::WrongContext {
                serves, context, ..
            } => context.as_ref().or(serves.as_ref()),
            Self::NoScope => None,
        }
    }

    /// Audits this error as `decision` about `sandbox` (or, without one, the sandbox the error
    /// names).
    pub(crate) fn audit(&self, sandbox: Option<&Sandbox>, decision: Decision) {
        AuditEvent::about(
            sandbox,
            Protocol::Db,
            Direction::Outbound,
            decision,
            self.reason(),
        )
        .or_key(self.key())
        .detail(self)
        .emit();
    }

    /// The prodbox error inside a `sqlx::Error` returned by a [`SandboxPool`](crate::SandboxPool)
    /// call, if any.
    pub fn of(error: &sqlx::Error) -> Option<&SandboxDbError> {
        match error {
            sqlx::Error::Configuration(source) => source.downcast_ref(),
            _ => None,
        }
    }
}

/// `error` from a statement run for `sandbox`: a permission error (the sandbox's role touched
/// something outside its schema) becomes [`SandboxDbError::ProductionAccessRefused`], audited.
pub(crate) fn refine(error: sqlx::Error, sandbox: Option<&Sandbox>) -> sqlx::Error {
    match (&error, sandbox) {
        // insufficient_privilege
        (sqlx::Error::Database(db), Some(sandbox)) if db.code().as_deref() == Some("42501") => {
            let refused = SandboxDbError::ProductionAccessRefused {
                sandbox: sandbox.key().clone(),
                message: db.message().to_owned(),
            };
            refused.audit(Some(sandbox), Decision::Rejected);
            refused.into()
        }
        _ => error,
    }
}

/// Audits that a guarded pool or connection was given up, unguarded, in `context` (which it
/// does not serve), for the reason `why`.
pub(crate) fn audit_unguarded(context: Option<&Sandbox>, why: &'static str) {
    AuditEvent::about(
        context,
        Protocol::Db,
        Direction::Outbound,
        Decision::Stripped,
        "db_unguarded",
    )
    .detail(&why)
    .emit();
}

impl From<SandboxDbError> for sqlx::Error {
    fn from(error: SandboxDbError) -> Self {
        // sqlx has no variant for a refusal by a wrapper; `Configuration` carries it boxed, and
        // `SandboxDbError::of` gets it back.
        sqlx::Error::Configuration(Box::new(error))
    }
}
