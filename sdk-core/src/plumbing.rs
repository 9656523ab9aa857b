//! What prodbox's own crates share that is no part of prodbox-core's API: hidden from the docs,
//! with no stability promise (as tonic's `codegen`). Services never need it.

pub use crate::cache::{Keep, Miss, Slots};

/// The production scope prodbox's layers enter around admitted production work.
pub mod scope {
    pub use crate::scope::{Entered, enter, entered};
}
