//! Subscriptions: inside a sandbox, on a connection logged in as its user, to channels in its
//! namespace, with messages given back under the names the application subscribed to.
//!
//! Redis compares a `PSUBSCRIBE` pattern with a user's channel patterns literally, so a sandbox
//! may subscribe to any of its channels and to the pattern of all of them (`*`), while narrower
//! patterns are refused by Redis (`NOPERM`, a typed [`SandboxRedisError::ServerRefused`]).

use futures_util::{Stream, StreamExt};
use prodbox_core::Sandbox;
use redis::{Msg, RedisResult, Value};

use crate::error::SandboxRedisError;
use crate::handle::SandboxRedis;
use crate::rewrite::Namespace;

/// A pub/sub connection opened by [`SandboxRedis::pubsub`]: production's own outside a
/// sandbox, the sandbox's inside one.
pub struct SandboxPubSub {
    inner: redis::aio::PubSub,
    sandbox: Option<(Sandbox, Namespace)>,
}

impl std::fmt::Debug for SandboxPubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxPubSub")
            .field("sandbox", &self.sandbox.as_ref().map(|(s, _)| s.key()))
            .finish_non_exhaustive()
    }
}

const KEYSPACE: &[u8] = b"__keyspace@";

impl SandboxPubSub {
    /// The name sent for `channel`: in the namespace (after the `__keyspace@N__:` part of a
    /// keyspace notification channel).
    fn named(&self, channel: &[u8]) -> Vec<u8> {
        let Some((_, ns)) = &self.sandbox else {
            return channel.to_vec();
        };
        let split = keyspace_split(channel);
        let (head, rest) = channel.split_at(split);
        [head, &ns.prefix, rest].concat()
    }

    /// Refuses use from another context than the one it was opened in: a subscription opened
    /// in production and used by a sandboxed request (or the other way round) would read
    /// another namespace's messages.
    fn same_context(&self) -> RedisResult<()> {
        crate::handle::same_at_poll(self.sandbox.as_ref().map(|(s, _)| s))
    }

    /// Subscribes to `channel`.
    pub async fn subscribe(&mut self, channel: impl AsRef<[u8]>) -> RedisResult<()> {
        self.same_context()?;
        let named = self.named(channel.as_ref());
        let result = self.inner.subscribe(named).await;
        self.checked("subscribe", result)
    }

    /// Subscribes to the channels matching `pattern` (see the module docs for what Redis
    /// allows a sandbox).
    pub async fn psubscribe(&mut self, pattern: impl AsRef<[u8]>) -> RedisResult<()> {
        self.same_context()?;
        if let Some((sandbox, ns)) = &self.sandbox {
            crate::rewrite::checked_pattern(ns, "psubscribe", pattern.as_ref())
                .map_err(|refused| refused.refuse(Some(sandbox)))?;
        }
        let named = self.named(pattern.as_ref());
        let result = self.inner.psubscribe(named).await;
        self.checked("psubscribe", result)
    }

    /// Unsubscribes from `channel`.
    pub async fn unsubscribe(&mut self, channel: impl AsRef<[u8]>) -> RedisResult<()> {
        let named = self.named(channel.as_ref());
        self.inner.unsubscribe(named).await
    }

    /// Unsubscribes from `pattern`.
    pub async fn punsubscribe(&mut self, pattern: impl AsRef<[u8]>) -> RedisResult<()> {
        let named = self.named(pattern.as_ref());
        self.inner.punsubscribe(named).await
    }

    fn checked(&self, command: &str, result: RedisResult<()>) -> RedisResult<()> {
        match (result, &self.sandbox) {
            (Err(error), Some((sandbox, _))) if crate::error::is_acl_refusal(&error) => {
                Err(SandboxRedisError::ServerRefused {
                    sandbox: sandbox.key().clone(),
                    command: command.to_owned(),
                    detail: error.detail().unwrap_or("NOPERM").to_owned(),
                }
                .refuse(Some(sandbox)))
            }
            (result, _) => result,
        }
    }

    /// The messages, their channel (and pattern) named as subscribed.
    pub fn into_on_message(self) -> impl Stream<Item = Msg> + Send {
        let prefix = self.sandbox.map(|(_, ns)| ns.prefix);
        self.inner.into_on_message().filter_map(move |msg| {
            let msg = match &prefix {
                None => Some(msg),
                Some(prefix) => unnamed(prefix, &msg),
            };
            std::future::ready(msg)
        })
    }
}

/// Where the channel name proper starts: after `__keyspace@N__:`, else at 0.
fn keyspace_split(channel: &[u8]) -> usize {
    if !channel.starts_with(KEYSPACE) {
        return 0;
    }
    channel
        .windows(3)
        .position(|w| w == b"__:")
        .filter(|&at| at >= KEYSPACE.len())
        .map_or(0, |at| at + 3)
}

fn strip(prefix: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    let split = keyspace_split(name);
    let (head, rest) = name.split_at(split);
    Some([head, rest.strip_prefix(prefix)?].concat())
}

/// `msg` under the names the application used; `None` (dropped) for one outside the
/// namespace, which the sandbox's user cannot have subscribed to.
fn unnamed(prefix: &[u8], msg: &Msg) -> Option<Msg> {
    let channel = strip(prefix, &msg.get_channel::<Vec<u8>>().ok()?)?;
    let payload = Value::BulkString(msg.get_payload_bytes().to_vec());
    let value = if msg.from_pattern() {
        let pattern = strip(prefix, &msg.get_pattern::<Vec<u8>>().ok()?)?;
        Value::Array(vec![
            Value::BulkString(b"pmessage".to_vec()),
            Value::BulkString(pattern),
            Value::BulkString(channel),
            payload,
        ])
    } else {
        Value::Array(vec![
            Value::BulkString(b"message".to_vec()),
            Value::BulkString(channel),
            payload,
        ])
    };
    Msg::from_owned_value(value)
}

impl<C> SandboxRedis<C> {
    /// A pub/sub connection for the current context: inside a sandbox, logged in as its user,
    /// its channels namespaced as commands' are; outside, the service's own.
    pub async fn pubsub(&self) -> RedisResult<SandboxPubSub> {
        match prodbox_core::current() {
            None => Ok(SandboxPubSub {
                inner: self.shared.client.get_async_pubsub().await?,
                sandbox: None,
            }),
            Some(sandbox) => {
                let ns = Namespace::new(sandbox.key());
                let opened = match self.shared.login(&sandbox).await {
                    Ok(client) => client.get_async_pubsub().await.map_err(|source| {
                        SandboxRedisError::Connect {
                            sandbox: sandbox.key().clone(),
                            source,
                        }
                    }),
                    Err(refused) => Err(refused),
                };
                let inner = opened.map_err(|refused| refused.refuse(Some(&sandbox)))?;
                Ok(SandboxPubSub {
                    inner,
                    sandbox: Some((sandbox, ns)),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_channels_are_namespaced_after_their_head() {
        let p = b"sbx:{pr-42}:";
        assert_eq!(keyspace_split(b"__keyspace@0__:user:1"), 15);
        assert_eq!(keyspace_split(b"news"), 0);
        assert_eq!(
            strip(p, b"__keyspace@0__:sbx:{pr-42}:user:1"),
            Some(b"__keyspace@0__:user:1".to_vec())
        );
        assert_eq!(strip(p, b"sbx:{pr-42}:news"), Some(b"news".to_vec()));
        assert_eq!(strip(p, b"news"), None);
    }
}
