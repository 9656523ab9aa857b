//! Which offset of each partition may be committed: every message taken from the consumer's
//! stream is in flight until it is handled, skipped or dead-lettered, and a partition's stored
//! offset never passes a message still in flight, whatever order messages finish in.
//!
//! Positions are given to rdkafka in batches ([`InFlight::store_due`]): every
//! [`STORE_EVERY`] messages finished, whenever the consumer has no message ready, once a
//! second (the consumer's keeper), and before a rebalance. Storing each one (a lock on
//! librdkafka's partition, shared with its fetcher) cost more than deciding the message, and
//! a batch of 64 still cost tens of instructions a message. rdkafka commits what is stored
//! every `auto.commit.interval.ms` (5 s by default): a crash redelivers what was done since
//! the last commit, and a batch adds at most its size, or a second, to that.

use std::collections::VecDeque;

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

/// Messages finished between two batches of stored positions, at most.
pub(crate) const STORE_EVERY: u64 = 1024;

/// The consumer's messages in flight, by partition: a short list, searched in order (a
/// consumer holds a few partitions; hashing a topic name per message cost more than this).
///
/// Every message takes the lock once or twice, for a few dozen instructions, and almost always
/// nobody else holds it: a spin lock, released by a plain store, costs one atomic operation
/// where `std`'s mutex costs two (about 9 ns each here). A loop that finds it held yields its
/// thread between tries, so a holder that was preempted gets to run.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    parts: spin::mutex::SpinMutex<Parts, spin::relax::Yield>,
    /// Held while positions are given to rdkafka, which takes librdkafka's own locks: stores
    /// reach it in the order they were decided, and the spin lock is never held across them.
    storing: std::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Parts {
    list: Vec<Part>,
    /// Numbers each partition's tenure: a message taken before the partition was revoked is
    /// never stored by this consumer afterwards, even if the partition comes back.
    tenures: u64,
    /// Messages finished.
    finished: u64,
    /// Every message is of one topic (the consumer subscribed to one by name): partitions are
    /// told apart by number alone, without comparing topic names per message.
    one_topic: bool,
}

#[derive(Debug)]
struct Part {
    topic: Box<str>,
    partition: i32,
    tenure: u64,
    /// Offsets taken and not finished, ascending.
    pending: VecDeque<i64>,
    /// The highest offset finished.
    finished: Option<i64>,
    /// The position (the next offset to read) the partition may be committed to.
    decided: Option<i64>,
    /// The position last given to rdkafka.
    given: Option<i64>,
    /// Offsets taken and then left unhandled (the consumer was put back on them), until they
    /// are taken again.
    abandoned: Vec<i64>,
}

impl Parts {
    fn find(&mut self, topic: &str, partition: i32) -> Option<&mut Part> {
        let at = self.at(topic, partition)?;
        Some(&mut self.list[at])
    }

    fn at(&self, topic: &str, partition: i32) -> Option<usize> {
        self.list.iter().position(|part| {
            part.partition == partition && (self.one_topic || *part.topic == *topic)
        })
    }

    /// The part of `topic`/`partition`, new if this consumer had none.
    fn held(&mut self, topic: &str, partition: i32) -> &mut Part {
        let at = match self.at(topic, partition) {
            Some(at) => at,
            None => self.hold(topic, partition),
        };
        &mut self.list[at]
    }

    /// A new part for `topic`/`partition`; where it is. Once per partition assigned: kept out
    /// of line, so that the lookup of every message stays small.
    #[cold]
    #[inline(never)]
    fn hold(&mut self, topic: &str, partition: i32) -> usize {
        self.tenures += 1;
        self.list.push(Part {
            topic: topic.into(),
            partition,
            tenure: self.tenures,
            pending: VecDeque::new(),
            finished: None,
            decided: None,
            given: None,
            abandoned: Vec::new(),
        });
        self.list.len() - 1
    }

    /// Counts a message finished; returns whether a batch of positions is due.
    fn count_finished(&mut self) -> bool {
        self.finished += 1;
        self.finished.is_multiple_of(STORE_EVERY)
    }

    /// The positions decided since they were last given, marked given.
    fn due(&mut self) -> Option<TopicPartitionList> {
        let mut list: Option<TopicPartitionList> = None;
        for part in &mut self.list {
            let Some(decided) = part.decided.filter(|&d| part.given != Some(d)) else {
                continue;
            };
            let list = list.get_or_insert_with(TopicPartitionList::new);
            if list
                .add_partition_offset(&part.topic, part.partition, Offset::Offset(decided))
                .is_ok()
            {
                part.given = Some(decided);
            }
        }
        list
    }
}

impl Part {
    /// Notes the message at `offset` finished (no longer pending): the position moves up to
    /// the earliest message still in flight.
    fn finished_at(&mut self, offset: i64) {
        let finished = self
            .finished
            .map_or(offset, |finished| finished.max(offset));
        self.finished = Some(finished);
        // (No broker gives the offset `i64::MAX`; should one, nothing past it is stored.)
        let position = self
            .pending
            .front()
            .copied()
            .unwrap_or(finished.saturating_add(1));
        // A position at or below the message: an earlier one is still in flight.
        if position > offset && self.decided.is_none_or(|decided| decided < position) {
            self.decided = Some(position);
        }
    }
}

/// A message taken: the partition tenure it was taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

impl InFlight {
    /// For a consumer whose messages are all of one topic.
    pub(crate) fn of_one_topic() -> Self {
        Self {
            parts: spin::mutex::SpinMutex::new(Parts {
                one_topic: true,
                ..Parts::default()
            }),
            storing: std::sync::Mutex::default(),
        }
    }

    fn lock(&self) -> spin::mutex::SpinMutexGuard<'_, Parts> {
        self.parts.lock()
    }

    /// Takes the message at `offset`. A message taken again (the consumer was put back on
    /// it) stays in flight once. Messages of a partition must be taken in the order the
    /// consumer pulls them (the consumer takes them under its pull lock).
    pub(crate) fn take(&self, topic: &str, partition: i32, offset: i64) -> Ticket {
        let mut parts = self.lock();
        let part = parts.held(topic, partition);
        // Offsets come in order but after a rewind: the usual case is a push at the back.
        match part.pending.back() {
            Some(&last) if last >= offset => {
                if let Err(at) = part.pending.binary_search(&offset) {
                    part.pending.insert(at, offset);
                }
            }
            _ => part.pending.push_back(offset),
        }
        if !part.abandoned.is_empty() {
            part.abandoned.retain(|&a| a != offset);
        }
        Ticket(part.tenure)
    }

    /// Takes and finishes the message at `offset` at once, under one lock: one done with as
    /// it is pulled (a skip). Same order rule as [`take`](Self::take); returns what
    /// [`finish`](Self::finish) returns.
    pub(crate) fn pass(&self, topic: &str, partition: i32, offset: i64) -> bool {
        let mut parts = self.lock();
        let due = parts.count_finished();
        let part = parts.held(topic, partition);
        if !part.abandoned.is_empty() {
            part.abandoned.retain(|&a| a != offset);
        }
        // Taken before and left unhandled, it is still in flight: done with now.
        if part.pending.back().is_some_and(|&last| last >= offset)
            && let Ok(at) = part.pending.binary_search(&offset)
        {
            part.pending.remove(at);
        }
        part.finished_at(offset);
        due
    }

    /// Leaves the message at `offset`, taken with `ticket`, unhandled: it stays in flight (so
    /// nothing is committed past it) and must come again. Returns where to put the
    /// consumer's position back: the earliest offset left unhandled in the partition, so that
    /// two messages left in either order both come again. `None` when the partition was
    /// revoked since (its next owner starts from the committed offset, not past the message).
    pub(crate) fn abandon(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        ticket: Ticket,
    ) -> Option<i64> {
        let mut parts = self.lock();
        let part = parts
            .find(topic, partition)
            .filter(|part| part.tenure == ticket.0)?;
        if !part.abandoned.contains(&offset) {
            part.abandoned.push(offset);
        }
        part.abandoned.iter().copied().min()
    }

    /// Finishes the message at `offset`, taken with `ticket`. Returns whether a batch of
    /// positions is due ([`store_due`](Self::store_due)).
    pub(crate) fn finish(&self, topic: &str, partition: i32, offset: i64, ticket: Ticket) -> bool {
        let mut parts = self.lock();
        let due = parts.count_finished();
        let Some(part) = parts
            .find(topic, partition)
            .filter(|part| part.tenure == ticket.0)
        else {
            return due;
        };
        if part.pending.front() == Some(&offset) {
            part.pending.pop_front();
        } else if let Ok(at) = part.pending.binary_search(&offset) {
            part.pending.remove(at);
        }
        part.finished_at(offset);
        due
    }

    /// Gives `consumer` the positions decided since they were last given, marked given, in
    /// the order they were decided.
    pub(crate) fn store_due<X: ConsumerContext>(&self, consumer: &impl Consumer<X>) {
        let _storing = self
            .storing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = self.lock().due();
        if let Some(list) = due
            && let Err(error) = consumer.store_offsets(&list)
        {
            // A partition moved to another member meanwhile: it re-delivers its messages.
            tracing::warn!(target: "prodbox::kafka", %error, "offsets not stored");
        }
    }

    /// Whether `topic`/`partition` is still held in the tenure `ticket` was taken in (not
    /// revoked since).
    pub(crate) fn holds(&self, topic: &str, partition: i32, ticket: Ticket) -> bool {
        self.lock()
            .find(topic, partition)
            .is_some_and(|part| part.tenure == ticket.0)
    }

    /// Forgets `partitions`, revoked from this consumer: their messages still in flight are
    /// delivered again by the partitions' next owner.
    pub(crate) fn revoke(&self, partitions: &TopicPartitionList) {
        let mut parts = self.lock();
        for element in partitions.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            parts
                .list
                .retain(|part| !(part.partition == partition && *part.topic == *topic));
        }
    }

    /// Whether any message of `topic`/`partition` is in flight.
    #[cfg(test)]
    fn any(&self, topic: &str, partition: i32) -> bool {
        self.lock()
            .find(topic, partition)
            .is_some_and(|part| !part.pending.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list's positions, as `(partition, position)`.
    fn positions(list: &TopicPartitionList) -> Vec<(i32, i64)> {
        list.elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(position) => (e.partition(), position),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    /// The positions `store_due` gives.
    fn due(in_flight: &InFlight) -> Vec<(i32, i64)> {
        in_flight
            .lock()
            .due()
            .as_ref()
            .map_or_else(Vec::new, positions)
    }

    /// Takes a message of `t`.
    fn take(in_flight: &InFlight, partition: i32, offset: i64) -> Ticket {
        in_flight.take("t", partition, offset)
    }

    #[test]
    fn in_order_the_last_message_finished_decides() {
        let in_flight = InFlight::default();
        for offset in 0..3 {
            let ticket = take(&in_flight, 0, offset);
            in_flight.finish("t", 0, offset, ticket);
        }
        assert_eq!(due(&in_flight), [(0, 3)]);
        assert_eq!(due(&in_flight), [], "given once");
        assert!(!in_flight.any("t", 0));
    }

    #[test]
    fn a_later_message_finished_first_is_not_committed_past_an_earlier_one() {
        let in_flight = InFlight::default();
        let five = take(&in_flight, 0, 5);
        let six = take(&in_flight, 0, 6);
        let seven = take(&in_flight, 0, 7);
        in_flight.finish("t", 0, 6, six);
        assert_eq!(due(&in_flight), []);
        in_flight.finish("t", 0, 5, five);
        assert_eq!(due(&in_flight), [(0, 7)]);
        in_flight.finish("t", 0, 7, seven);
        // Other partitions are their own.
        let other = take(&in_flight, 1, 9);
        in_flight.finish("t", 1, 9, other);
        assert_eq!(due(&in_flight), [(0, 8), (1, 10)]);
    }

    /// A message passed (taken and finished at once) moves the position as a finish would,
    /// never past a message still in flight, and one left unhandled before is done with.
    #[test]
    fn a_passed_message_is_taken_and_finished() {
        let in_flight = InFlight::default();
        in_flight.pass("t", 0, 0);
        assert_eq!(due(&in_flight), [(0, 1)]);
        let one = take(&in_flight, 0, 1);
        in_flight.pass("t", 0, 2);
        assert_eq!(due(&in_flight), [], "not past 1, still in flight");
        in_flight.finish("t", 0, 1, one);
        assert_eq!(due(&in_flight), [(0, 3)]);
        // Left unhandled, then skipped when it comes again.
        let three = take(&in_flight, 0, 3);
        assert_eq!(in_flight.abandon("t", 0, 3, three), Some(3));
        in_flight.pass("t", 0, 3);
        assert!(!in_flight.any("t", 0));
        assert_eq!(due(&in_flight), [(0, 4)]);
    }

    #[test]
    fn a_message_taken_again_is_in_flight_once() {
        let in_flight = InFlight::default();
        let first = take(&in_flight, 0, 3);
        let again = take(&in_flight, 0, 3);
        assert_eq!(first, again);
        in_flight.finish("t", 0, 3, again);
        assert_eq!(due(&in_flight), [(0, 4)]);
        assert!(!in_flight.any("t", 0));
    }

    #[test]
    fn messages_left_in_either_order_are_all_put_back() {
        let in_flight = InFlight::default();
        let five = take(&in_flight, 0, 5);
        let nine = take(&in_flight, 0, 9);
        assert_eq!(in_flight.abandon("t", 0, 5, five), Some(5));
        // Left second, the later one puts the position back to the earlier one still.
        assert_eq!(in_flight.abandon("t", 0, 9, nine), Some(5));
        // Taken again, 5 is no longer left; 9 is, until taken again too.
        let five = take(&in_flight, 0, 5);
        assert_eq!(in_flight.abandon("t", 0, 5, five), Some(5));
        take(&in_flight, 0, 5);
        take(&in_flight, 0, 9);
        let mut revoked = TopicPartitionList::new();
        revoked.add_partition("t", 0);
        in_flight.revoke(&revoked);
        assert_eq!(
            in_flight.abandon("t", 0, 9, nine),
            None,
            "revoked: nothing to put back"
        );
    }

    #[test]
    fn nothing_taken_before_a_revocation_is_stored_after_it() {
        let in_flight = InFlight::default();
        let old = take(&in_flight, 0, 5);
        let mut revoked = TopicPartitionList::new();
        revoked.add_partition("t", 0);
        in_flight.revoke(&revoked);
        // The partition comes back, from the committed offset.
        let new = take(&in_flight, 0, 5);
        assert_ne!(old, new);
        in_flight.finish("t", 0, 5, old);
        assert_eq!(due(&in_flight), []);
        in_flight.finish("t", 0, 5, new);
        assert_eq!(due(&in_flight), [(0, 6)]);
    }

    #[test]
    fn the_last_offset_there_is_does_not_overflow() {
        let in_flight = InFlight::default();
        let ticket = take(&in_flight, 0, i64::MAX);
        in_flight.finish("t", 0, i64::MAX, ticket);
        assert_eq!(due(&in_flight), [], "nothing past it is stored");
    }

    #[test]
    fn a_batch_is_due_every_few_messages() {
        let in_flight = InFlight::default();
        let dues = (0..STORE_EVERY as i64 * 2)
            .filter(|&offset| {
                let ticket = take(&in_flight, 0, offset);
                in_flight.finish("t", 0, offset, ticket)
            })
            .count();
        assert_eq!(dues, 2);
    }
}
