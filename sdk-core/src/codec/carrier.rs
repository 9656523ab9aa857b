//! How the codec reads and writes a protocol's headers.

use crate::sandbox::Sandbox;

/// Read access to a protocol's headers (HTTP headers, gRPC metadata, Kafka record headers).
///
/// Names are compared ASCII case-insensitively, as HTTP does.
pub trait Carrier {
    /// Every value of header `name`, in the order they arrived.
    fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]>
    where
        Self: 'a;

    /// Every header name, used to find the legacy `ot-baggage-*` and `uberctx-*` carriers.
    fn names(&self) -> impl Iterator<Item = &str>;
}

/// A header the carrier cannot hold (an invalid name or value for its protocol).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the carrier cannot hold header {name:?} with the given value")]
pub struct InvalidHeader {
    /// The header's name.
    pub name: String,
}

/// Write access to a protocol's headers.
pub trait CarrierMut: Carrier {
    /// Replaces every value of header `name` with `value`.
    fn set(&mut self, name: &str, value: String) -> Result<(), InvalidHeader>;

    /// Removes every value of header `name`.
    fn remove(&mut self, name: &str);

    /// Replaces every `baggage` value with exactly the canonical members of `sandbox`, which
    /// `encoded` holds. The default calls [`set`](Self::set); a carrier may reuse a value it
    /// built before for the same sandbox.
    fn set_sandbox_baggage(
        &mut self,
        sandbox: &Sandbox,
        encoded: &str,
    ) -> Result<(), InvalidHeader> {
        let _ = sandbox;
        self.set(crate::codec::BAGGAGE, encoded.to_owned())
    }
}

/// A carrier of `(name, value)` pairs, handy in tests and for protocols without a header map.
impl Carrier for Vec<(String, Vec<u8>)> {
    fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]>
    where
        Self: 'a,
    {
        let name = name.to_owned();
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, v)| v.as_slice())
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(n, _)| n.as_str())
    }
}

impl CarrierMut for Vec<(String, Vec<u8>)> {
    fn set(&mut self, name: &str, value: String) -> Result<(), InvalidHeader> {
        CarrierMut::remove(self, name);
        self.push((name.to_owned(), value.into_bytes()));
        Ok(())
    }

    fn remove(&mut self, name: &str) {
        self.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }
}

#[cfg(feature = "http")]
mod http_impl {
    use super::{Carrier, CarrierMut, InvalidHeader};
    use crate::sandbox::Sandbox;
    use http::{HeaderMap, HeaderName, HeaderValue};

    impl Carrier for HeaderMap {
        fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]>
        where
            Self: 'a,
        {
            let values = if name == crate::codec::BAGGAGE {
                // The header read on every request: a prebuilt name skips parsing it.
                HeaderMap::get_all(
                    self,
                    const { HeaderName::from_static(crate::codec::BAGGAGE) },
                )
            } else {
                HeaderMap::get_all(self, name)
            };
            values.into_iter().map(HeaderValue::as_bytes)
        }

        fn names(&self) -> impl Iterator<Item = &str> {
            self.keys().map(HeaderName::as_str)
        }
    }

    impl CarrierMut for HeaderMap {
        fn set(&mut self, name: &str, value: String) -> Result<(), InvalidHeader> {
            let header = if name == crate::codec::BAGGAGE {
                // The header written on every call: skip parsing its name.
                Ok(const { HeaderName::from_static(crate::codec::BAGGAGE) })
            } else {
                HeaderName::from_bytes(name.as_bytes())
            };
            let (Ok(header), Ok(value)) = (header, HeaderValue::try_from(value)) else {
                return Err(InvalidHeader {
                    name: name.to_owned(),
                });
            };
            self.insert(header, value);
            Ok(())
        }

        fn remove(&mut self, name: &str) {
            HeaderMap::remove(self, name);
        }

        fn set_sandbox_baggage(
            &mut self,
            sandbox: &Sandbox,
            encoded: &str,
        ) -> Result<(), InvalidHeader> {
            // The value is built once per sandbox; each request shares its bytes.
            let Some(value) = sandbox.header_value(encoded) else {
                return self.set(crate::codec::BAGGAGE, encoded.to_owned());
            };
            self.insert(
                const { HeaderName::from_static(crate::codec::BAGGAGE) },
                value.clone(),
            );
            Ok(())
        }
    }
}
