//! The fuzzer's bytes as a stream of choices, and the same encoding
//! written out for the seed corpora (`examples/seeds.rs`).
//!
//! Every read succeeds: past the end of the input a reader gets zeros, so a
//! target never has to handle "too short" and the fuzzer's mutations of
//! length stay meaningful.

/// Choices read from the fuzzer's input, little-endian.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Bytes left.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// A number in `0..n` (`n` ≥ 1), from one byte (or two when `n` > 256).
    pub fn below(&mut self, n: usize) -> usize {
        if n <= 256 {
            usize::from(self.u8()) % n
        } else {
            usize::from(self.u16()) % n
        }
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// Fill `out` with the next bytes (zeros past the end of the input).
    pub fn fill(&mut self, out: &mut [u8]) {
        let b = self.bytes(out.len());
        out[..b.len()].copy_from_slice(b);
        out[b.len()..].fill(0);
    }

    /// A length-prefixed (u16) byte string of at most `max` bytes.
    pub fn blob(&mut self, max: usize) -> &'a [u8] {
        let n = usize::from(self.u16()) % (max + 1);
        self.bytes(n)
    }
}

/// The writer of the same encoding, for seeds.
#[derive(Default)]
pub struct Seed(pub Vec<u8>);

impl Seed {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }

    /// The inverse of [`Input::blob`] (`b.len()` must not exceed the reader's `max`).
    pub fn blob(&mut self, b: &[u8]) -> &mut Self {
        self.u16(b.len() as u16).bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_read_back() {
        let mut s = Seed::default();
        s.u8(7)
            .bool(true)
            .u16(0x1234)
            .u32(0xdead_beef)
            .u64(u64::MAX - 1);
        s.blob(b"abc");
        let mut i = Input::new(&s.0);
        assert_eq!(
            (i.u8(), i.bool(), i.u16(), i.u32(), i.u64()),
            (7, true, 0x1234, 0xdead_beef, u64::MAX - 1)
        );
        assert_eq!(i.blob(10), b"abc");
        assert!(i.is_empty());
        assert_eq!(i.u32(), 0, "zeros past the end");
    }
}
