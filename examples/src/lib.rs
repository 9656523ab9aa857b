//! Runnable prodbox demos; each binary's first doc line says how to run it.
//!
//! This library holds nothing but the README's code, compiled and run as doc tests so that the
//! snippets people copy cannot rot.

/// The README's snippets.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
