//! The codec's carrier over tonic metadata. Binary (`-bin`) metadata is never read or written.

use prodbox_core::codec::{Carrier, CarrierMut, InvalidHeader, is_binary_metadata};
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};

/// Lets the codec read and write a [`MetadataMap`] (ASCII entries only).
#[derive(Debug)]
pub struct MetadataCarrier<'a>(pub &'a mut MetadataMap);

impl Carrier for MetadataCarrier<'_> {
    fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]>
    where
        Self: 'a,
    {
        let values = if is_binary_metadata(name) {
            None
        } else {
            Some(self.0.get_all(name))
        };
        values
            .into_iter()
            .flat_map(|all| all.into_iter().map(|v| v.as_encoded_bytes()))
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().filter_map(|key| match key {
            KeyRef::Ascii(key) => Some(key.as_str()),
            KeyRef::Binary(_) => None,
        })
    }
}

impl CarrierMut for MetadataCarrier<'_> {
    fn set(&mut self, name: &str, value: String) -> Result<(), InvalidHeader> {
        let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(name.as_bytes()),
            MetadataValue::try_from(value),
        ) else {
            return Err(InvalidHeader {
                name: name.to_owned(),
            });
        };
        self.0.insert(key, value);
        Ok(())
    }

    fn remove(&mut self, name: &str) {
        self.0.remove(name);
    }
}
