//! The hash of prodbox's direct-mapped caches and label tables: FxHash-style mixing, eight
//! bytes at a time. Fast, and not collision resistant, which they do not need: every hit
//! compares the whole value, so a collision only evicts.

/// A hash being built.
#[derive(Clone, Copy)]
pub(crate) struct WordHash(u64);

const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl WordHash {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Mixes in one word.
    pub(crate) fn word(self, word: u64) -> Self {
        Self((self.0.rotate_left(5) ^ word).wrapping_mul(K))
    }

    /// Mixes in `bytes`, eight at a time, the last word padded with zeros, then their length
    /// (so that fields hashed one after the other stay apart).
    pub(crate) fn bytes(self, bytes: &[u8]) -> Self {
        let mut hash = self;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            hash = hash.word(u64::from_le_bytes(word));
        }
        let mut word = [0; 8];
        for (to, from) in word.iter_mut().zip(chunks.remainder()) {
            *to = *from;
        }
        hash.word(u64::from_le_bytes(word)).word(bytes.len() as u64)
    }

    /// The hash itself.
    pub(crate) fn finish(self) -> u64 {
        self.0
    }
}
