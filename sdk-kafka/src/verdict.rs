//! What one consumer does with one message: the filter's answer, which the consumer loop and
//! the filter's memory of recent verdicts both speak.

use prodbox_core::codec::BaggageError;
use prodbox_core::{SandboxContext, SandboxKey};

/// What to do with one message.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Run the handler, inside the message's context (its sandbox, when it has one).
    Process(Option<SandboxContext>),
    /// A record of a sandbox: handle it inside its context, unless the cuts give it to the
    /// other role (see [`prodbox_core::directory::cuts`]). `forking` is the incarnation of the
    /// sandbox that forks the service now, as the baseline sees it (`None`: none does).
    Cut {
        /// The record's context.
        context: SandboxContext,
        /// The incarnation that forks the service, for the baseline.
        forking: Option<i64>,
    },
    /// Another consumer handles it; its offset is stored all the same, so lag returns to zero.
    Skip {
        /// Why, as a short stable name.
        reason: &'static str,
        /// The message's sandbox.
        sandbox: Option<SandboxKey>,
    },
    /// Its sandbox headers are malformed or ambiguous: it goes to the dead-letter topic.
    DeadLetter(BaggageError),
}
