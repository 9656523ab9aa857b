//! The codec's carrier over Kafka record headers.

use prodbox_core::codec::{Carrier, CarrierMut, InvalidHeader};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use smallvec::SmallVec;

/// Lets the codec read any rdkafka [`Headers`] (owned or borrowed).
#[derive(Debug)]
pub struct HeaderReader<'a, H: ?Sized>(pub &'a H);

impl<H: Headers + ?Sized> Carrier for HeaderReader<'_, H> {
    fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]>
    where
        Self: 'a,
    {
        (0..self.0.count())
            .filter_map(|i| self.0.try_get(i))
            .filter(move |h| h.key.eq_ignore_ascii_case(name))
            .filter_map(|h| h.value)
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        (0..self.0.count())
            .filter_map(|i| self.0.try_get(i))
            .map(|h| h.key)
    }
}

/// Headers of up to this many entries are read onto the stack.
const INLINE: usize = 16;

type Entry<'a> = (&'a str, Option<&'a [u8]>);

/// A message's headers, read once. rdkafka reads each header through its C API (a call, a
/// `strlen` and a UTF-8 check), and the codec looks at them more than once (the `baggage`
/// values, then every name for legacy carriers). On the stack up to [`INLINE`] headers, and
/// left uninitialised until read (`SmallVec`; zeroing the slots cost a tenth of a skip).
pub(crate) struct HeaderSnapshot<'a> {
    entries: SmallVec<[Entry<'a>; INLINE]>,
}

impl<'a> HeaderSnapshot<'a> {
    pub(crate) fn new() -> Self {
        Self {
            entries: SmallVec::new(),
        }
    }

    /// Reads `headers` into this (empty) snapshot, which is filled in place rather than returned:
    /// it is a few hundred bytes. rdkafka panics on a name that is not UTF-8: call it inside
    /// the filter's `readable`.
    pub(crate) fn read<H: Headers + ?Sized>(&mut self, headers: &'a H) {
        self.entries.extend(
            (0..headers.count())
                .filter_map(|i| headers.try_get(i))
                .map(|h| (h.key, h.value)),
        );
    }

    fn entries(&self) -> &[Entry<'a>] {
        &self.entries
    }
}

impl Carrier for HeaderSnapshot<'_> {
    fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]>
    where
        Self: 'a,
    {
        self.entries()
            .iter()
            // The exact name first: producers nearly always write it as given, and a byte
            // comparison is a fraction of a case-insensitive one.
            .filter(move |(key, _)| *key == name || key.eq_ignore_ascii_case(name))
            .filter_map(|(_, value)| *value)
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.entries().iter().map(|(key, _)| *key)
    }
}

/// Headers being written: rdkafka's headers cannot remove entries, so the codec edits a list
/// that becomes [`OwnedHeaders`] at the end, in order.
#[derive(Debug, Default)]
pub(crate) struct HeaderList(pub(crate) Vec<(String, Option<Vec<u8>>)>);

impl HeaderList {
    pub(crate) fn from_headers(headers: Option<&OwnedHeaders>) -> Self {
        let Some(headers) = headers else {
            return Self::default();
        };
        Self(
            headers
                .iter()
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .collect(),
        )
    }

    pub(crate) fn into_headers(self) -> OwnedHeaders {
        self.0.into_iter().fold(
            OwnedHeaders::new_with_capacity(4),
            |headers, (key, value)| {
                headers.insert(Header {
                    key: &key,
                    value: value.as_deref(),
                })
            },
        )
    }
}

impl Carrier for HeaderList {
    fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]>
    where
        Self: 'a,
    {
        let name = name.to_owned();
        self.0
            .iter()
            .filter(move |(key, _)| key.eq_ignore_ascii_case(&name))
            .filter_map(|(_, value)| value.as_deref())
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(key, _)| key.as_str())
    }
}

impl CarrierMut for HeaderList {
    fn set(&mut self, name: &str, value: String) -> Result<(), InvalidHeader> {
        // Keep the header's position when it exists; Kafka header order is visible to consumers.
        match self
            .0
            .iter()
            .position(|(key, _)| key.eq_ignore_ascii_case(name))
        {
            Some(first) => {
                self.0[first].1 = Some(value.into_bytes());
                let mut index = 0;
                self.0.retain(|(key, _)| {
                    let keep = index == first || !key.eq_ignore_ascii_case(name);
                    index += 1;
                    keep
                });
            }
            None => self.0.push((name.to_owned(), Some(value.into_bytes()))),
        }
        Ok(())
    }

    fn remove(&mut self, name: &str) {
        self.0.retain(|(key, _)| !key.eq_ignore_ascii_case(name));
    }
}
