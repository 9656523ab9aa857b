//! Which offset of each partition may be committed: every message taken from the consumer's
//! stream is in flight until it is handled, skipped or dead-lettered, and a partition's stored
//! offset never passes a message still in flight, whatever order messages finish in.

use std::collections::VecDeque;
use std::sync::Mutex;

use rdkafka::TopicPartitionList;

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
    /// The position stored for commit (the next offset to read).
    stored: Option<i64>,
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

/// What finishing a message lets the consumer store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Store {
    /// Nothing new: an earlier message is still in flight, or the partition was revoked.
    Nothing,
    /// The finished message's own offset (rdkafka stores the position after it).
    Message,
    /// This position (the next offset to read), when it is not the message's own.
    Position(i64),
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, Parts> {
        self.parts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the message at `offset`. A message taken again (the consumer was put back on
    /// it) stays in flight once. Returns, besides the ticket, a position to store when one
    /// already stored is past this message (two tasks took messages of the partition in
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
                    stored: None,
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
            .stored
            .filter(|&stored| stored > offset)
            .map(|_| offset);
        if back.is_some() {
            part.stored = Some(offset);
        }
        (Ticket(part.tenure), back)
    }

    /// Finishes the message at `offset`, taken with `ticket`.
    pub(crate) fn finish(&self, topic: &str, partition: i32, offset: i64, ticket: Ticket) -> Store {
        let mut parts = self.lock();
        let Some(part) = parts
            .find(topic, partition)
            .filter(|part| part.tenure == ticket.0)
        else {
            return Store::Nothing;
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
        if position <= offset || part.stored.is_some_and(|stored| stored >= position) {
            return Store::Nothing;
        }
        part.stored = Some(position);
        if position == offset + 1 {
            Store::Message
        } else {
            Store::Position(position)
        }
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

    #[test]
    fn in_order_each_message_stores_itself() {
        let in_flight = InFlight::default();
        for offset in 0..3 {
            let (ticket, back) = in_flight.take("t", 0, offset);
            assert_eq!(back, None);
            assert_eq!(in_flight.finish("t", 0, offset, ticket), Store::Message);
        }
        assert!(!in_flight.any("t", 0));
    }

    #[test]
    fn a_later_message_finished_first_is_not_committed_past_an_earlier_one() {
        let in_flight = InFlight::default();
        let (five, _) = in_flight.take("t", 0, 5);
        let (six, _) = in_flight.take("t", 0, 6);
        let (seven, _) = in_flight.take("t", 0, 7);
        assert_eq!(in_flight.finish("t", 0, 6, six), Store::Nothing);
        assert_eq!(in_flight.finish("t", 0, 5, five), Store::Position(7));
        assert_eq!(in_flight.finish("t", 0, 7, seven), Store::Message);
        // Other partitions are their own.
        let (other, _) = in_flight.take("t", 1, 9);
        assert_eq!(in_flight.finish("t", 1, 9, other), Store::Message);
    }

    #[test]
    fn a_message_taken_again_is_in_flight_once() {
        let in_flight = InFlight::default();
        let (first, _) = in_flight.take("t", 0, 3);
        let (again, _) = in_flight.take("t", 0, 3);
        assert_eq!(first, again);
        assert_eq!(in_flight.finish("t", 0, 3, again), Store::Message);
        assert!(!in_flight.any("t", 0));
    }

    #[test]
    fn a_message_taken_below_the_stored_position_puts_it_back() {
        let in_flight = InFlight::default();
        let (six, _) = in_flight.take("t", 0, 6);
        assert_eq!(in_flight.finish("t", 0, 6, six), Store::Message);
        let (five, back) = in_flight.take("t", 0, 5);
        assert_eq!(back, Some(5));
        assert_eq!(in_flight.finish("t", 0, 5, five), Store::Position(7));
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
        assert_eq!(in_flight.finish("t", 0, 5, old), Store::Nothing);
        assert_eq!(in_flight.finish("t", 0, 5, new), Store::Message);
    }
}
