//! prodbox for PostgreSQL (sqlx): sandboxed queries in isolated schemas.
//!
//! Not implemented yet: this crate is a placeholder in the workspace until its issue
//! ("Database: sqlx wrapper that sends sandboxed queries to isolated Postgres schemas") is done.
