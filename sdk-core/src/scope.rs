//! The production scope of work a layer admitted with nothing of prodbox to attach (no
//! baggage): a count on the thread, set while the work is polled. Cheaper than attaching a
//! context, which matters for every production request; [`in_scope`](crate::in_scope) reads it.

use std::cell::Cell;
use std::marker::PhantomData;

thread_local! {
    static ENTERED: Cell<u32> = const { Cell::new(0) };
}

/// Marks the current thread as running admitted production work until dropped.
#[must_use]
pub struct Entered(PhantomData<*const ()>);

/// Enters the production scope on this thread (plumbing for prodbox's layers).
pub fn enter() -> Entered {
    let _ = ENTERED.try_with(|n| n.set(n.get().saturating_add(1)));
    Entered(PhantomData)
}

impl Drop for Entered {
    fn drop(&mut self) {
        let _ = ENTERED.try_with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// Whether this thread runs in an entered scope.
pub fn entered() -> bool {
    ENTERED.try_with(|n| n.get() > 0).unwrap_or(false)
}
