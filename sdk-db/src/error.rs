use prodbox_core::SandboxKey;

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
    /// Provisioning found production tables the sandbox role could write (granted to
    /// `PUBLIC`, say): the sandbox is refused rather than run with that exposure.
    #[error(
        "prodbox: sandbox {sandbox} could write production tables {tables:?}; revoke those grants"
    )]
    ProductionWritable {
        /// The sandbox.
        sandbox: SandboxKey,
        /// Some of the tables.
        tables: Vec<String>,
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
}

impl SandboxDbError {
    /// A short stable name for audit events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Provisioning { .. } => "db_provisioning_failed",
            Self::ProductionWritable { .. } => "db_production_writable",
            Self::ProductionAccessRefused { .. } => "db_production_access_refused",
            Self::Capacity { .. } => "db_capacity",
            Self::Expired(_) => "sandbox_expired",
        }
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

impl From<SandboxDbError> for sqlx::Error {
    fn from(error: SandboxDbError) -> Self {
        // sqlx has no variant for a refusal by a wrapper; `Configuration` carries it boxed, and
        // `SandboxDbError::of` gets it back.
        sqlx::Error::Configuration(Box::new(error))
    }
}
