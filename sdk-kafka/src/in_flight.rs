//! Which offset of each partition may be committed: every message taken from the consumer's
//! stream is in flight until it is handled, skipped or dead-lettered, and a partition's stored
//! offset never passes a message still in flight, whatever order messages finish in.
//!
//! Positions are given to rdkafka in batches ([`InFlight::due`]): every
//! [`STORE_EVERY`] messages finished, whenever the consumer has no message ready, and before
//! a rebalance. Storing each one (a lock on librdkafka's partition, shared with its fetcher)
//! cost more than deciding the message; a crash redelivers at most that many more.

use std::collections::VecDeque;
use std::sync::Mutex;

use rdkafka::{Offset, TopicPartitionList};

/// Messages finished between two batches of stored positions, at most.
pub(crate) const STORE_EVERY: u64 = 64;

/// The consumer's messages in flight, by partition: a short list, searched in order (a
/// consumer holds a few partitions; hashing a topic name per message cost more than this).
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    parts: Mutex<Parts>,
}

#[derive(Debug, Default)]
struct Parts {
    list: Vec<Part>,
    /// Numbers each partition's tenure: a message taken before the partition was revoked is
    /// never stored by this consumer afterwards, even if the partition comes back.
    tenures: u64,
    /// Messages finished.
    finished: u64,
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
}

impl Parts {
    fn find(&mut self, topic: &str, partition: i32) -> Option<&mut Part> {
        self.list
            .iter_mut()
            .find(|part| part.partition == partition && *part.topic == *topic)
    }
}

/// A message taken: the partition tenure it was taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, Parts> {
        self.parts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the message at `offset`. A message taken again (the consumer was put back on
    /// it) stays in flight once. Returns, besides the ticket, a position to store now when one
    /// already decided is past this message (two tasks took messages of the partition in
    /// the other order): the position is put back on it.
    pub(crate) fn take(&self, topic: &str, partition: i32, offset: i64) -> (Ticket, Option<i64>) {
        let mut parts = self.lock();
        let part = match parts.find(topic, partition) {
            Some(part) => part,
            None => {
                parts.tenures += 1;
                let tenure = parts.tenures;
                parts.list.push(Part {
                    topic: topic.into(),
                    partition,
                    tenure,
                    pending: VecDeque::new(),
                    finished: None,
                    decided: None,
                    given: None,
                });
                let last = parts.list.len() - 1;
                &mut parts.list[last]
            }
        };
        // Offsets come in order but after a rewind: the usual case is a push at the back.
        match part.pending.back() {
            Some(&last) if last >= offset => {
                if let Err(at) = part.pending.binary_search(&offset) {
                    part.pending.insert(at, offset);
                }
            }
            _ => part.pending.push_back(offset),
        }
        let back = part
            .decided
            .filter(|&decided| decided > offset)
            .map(|_| offset);
        if back.is_some() {
            part.decided = back;
            part.given = back;
        }
        (Ticket(part.tenure), back)
    }

    /// Finishes the message at `offset`, taken with `ticket`. Returns whether a batch of
    /// positions is due ([`due`](Self::due)).
    pub(crate) fn finish(&self, topic: &str, partition: i32, offset: i64, ticket: Ticket) -> bool {
        let mut parts = self.lock();
        parts.finished += 1;
        let due = parts.finished.is_multiple_of(STORE_EVERY);
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
        let finished = part
            .finished
            .map_or(offset, |finished| finished.max(offset));
        part.finished = Some(finished);
        let position = part.pending.front().copied().unwrap_or(finished + 1);
        // A position at or below the message: an earlier one is still in flight.
        if position > offset && part.decided.is_none_or(|decided| decided < position) {
            part.decided = Some(position);
        }
        due
    }

    /// The positions decided since they were last given to rdkafka, marked given.
    pub(crate) fn due(&self) -> Option<TopicPartitionList> {
        let mut parts = self.lock();
        let mut list: Option<TopicPartitionList> = None;
        for part in &mut parts.list {
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

    /// The positions `due` gives, as `(partition, position)`.
    fn due(in_flight: &InFlight) -> Vec<(i32, i64)> {
        in_flight.due().map_or_else(Vec::new, |list| {
            list.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(position) => (e.partition(), position),
                    other => panic!("{other:?}"),
                })
                .collect()
        })
    }

    #[test]
    fn in_order_the_last_message_finished_decides() {
        let in_flight = InFlight::default();
        for offset in 0..3 {
            let (ticket, back) = in_flight.take("t", 0, offset);
            assert_eq!(back, None);
            in_flight.finish("t", 0, offset, ticket);
        }
        assert_eq!(due(&in_flight), [(0, 3)]);
        assert_eq!(due(&in_flight), [], "given once");
        assert!(!in_flight.any("t", 0));
    }

    #[test]
    fn a_later_message_finished_first_is_not_committed_past_an_earlier_one() {
        let in_flight = InFlight::default();
        let (five, _) = in_flight.take("t", 0, 5);
        let (six, _) = in_flight.take("t", 0, 6);
        let (seven, _) = in_flight.take("t", 0, 7);
        in_flight.finish("t", 0, 6, six);
        assert_eq!(due(&in_flight), []);
        in_flight.finish("t", 0, 5, five);
        assert_eq!(due(&in_flight), [(0, 7)]);
        in_flight.finish("t", 0, 7, seven);
        // Other partitions are their own.
        let (other, _) = in_flight.take("t", 1, 9);
        in_flight.finish("t", 1, 9, other);
        assert_eq!(due(&in_flight), [(0, 8), (1, 10)]);
    }

    #[test]
    fn a_message_taken_again_is_in_flight_once() {
        let in_flight = InFlight::default();
        let (first, _) = in_flight.take("t", 0, 3);
        let (again, _) = in_flight.take("t", 0, 3);
        assert_eq!(first, again);
        in_flight.finish("t", 0, 3, again);
        assert_eq!(due(&in_flight), [(0, 4)]);
        assert!(!in_flight.any("t", 0));
    }

    #[test]
    fn a_message_taken_below_the_decided_position_puts_it_back() {
        let in_flight = InFlight::default();
        let (six, _) = in_flight.take("t", 0, 6);
        in_flight.finish("t", 0, 6, six);
        let (five, back) = in_flight.take("t", 0, 5);
        assert_eq!(back, Some(5), "stored at once");
        assert_eq!(due(&in_flight), []);
        in_flight.finish("t", 0, 5, five);
        assert_eq!(due(&in_flight), [(0, 7)]);
    }

    #[test]
    fn nothing_taken_before_a_revocation_is_stored_after_it() {
        let in_flight = InFlight::default();
        let (old, _) = in_flight.take("t", 0, 5);
        let mut revoked = TopicPartitionList::new();
        revoked.add_partition("t", 0);
        in_flight.revoke(&revoked);
        // The partition comes back, from the committed offset.
        let (new, _) = in_flight.take("t", 0, 5);
        assert_ne!(old, new);
        in_flight.finish("t", 0, 5, old);
        assert_eq!(due(&in_flight), []);
        in_flight.finish("t", 0, 5, new);
        assert_eq!(due(&in_flight), [(0, 6)]);
    }

    #[test]
    fn a_batch_is_due_every_few_messages() {
        let in_flight = InFlight::default();
        let dues = (0..STORE_EVERY as i64 * 2)
            .filter(|&offset| {
                let (ticket, _) = in_flight.take("t", 0, offset);
                in_flight.finish("t", 0, offset, ticket)
            })
            .count();
        assert_eq!(dues, 2);
    }
}
