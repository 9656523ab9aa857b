//! Runnable prodbox demos; each binary's first doc line says how to run it.
//!
//! The library holds the shop demo's services ([`shop`]), which its binaries and the soak test
//! run, and the code of the README and docs/ADOPTING.md, compiled and run as doc tests so that
//! the snippets people copy cannot rot.

pub mod shop;

/// The README's snippets.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// docs/ADOPTING.md's snippets.
#[cfg(doctest)]
#[doc = include_str!("../../docs/ADOPTING.md")]
struct AdoptingDoctests;
