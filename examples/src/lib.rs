//! Runnable prodbox demos; each binary's first doc line says how to run it.
//!
//! The library holds the shop demo's services ([`shop`]), which its binaries and the soak test
//! run, and the README's code, compiled and run as doc tests so that the snippets people copy
//! cannot rot.

pub mod shop;

/// The README's snippets.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
