//! XDR (RFC 4506), the subset the protocol uses: `int`/`enum`, `unsigned int`, `hyper`,
//! `double` and variable-length `opaque` (4-byte length, bytes, zero padding to 4).
//! Written by hand: the format is small and the crates for it are unmaintained.

/// Why bytes are not the XDR expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XdrError {
    /// The data ends inside a field.
    Truncated,
    /// A padding byte is not zero.
    BadPadding,
    /// Bytes are left after the last field.
    Trailing(usize),
}

impl std::fmt::Display for XdrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XdrError::Truncated => f.write_str("XDR data ends inside a field"),
            XdrError::BadPadding => f.write_str("XDR padding is not zero"),
            XdrError::Trailing(n) => write!(f, "{n} bytes after the last XDR field"),
        }
    }
}

/// Appends XDR fields to a buffer.
#[derive(Default, Debug)]
pub struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Writer {
        Writer::default()
    }

    /// `int` / `enum`.
    pub fn int(&mut self, value: i32) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// `unsigned int`.
    pub fn uint(&mut self, value: u32) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// `hyper`.
    pub fn hyper(&mut self, value: i64) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// `double`.
    pub fn double(&mut self, value: f64) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_bits().to_be_bytes());
        self
    }

    /// Variable-length `opaque` (also `string`). Lengths over `u32::MAX` cannot occur:
    /// every input is bounded by the frame limit.
    pub fn opaque(&mut self, value: &[u8]) -> &mut Self {
        self.uint(value.len() as u32);
        self.bytes.extend_from_slice(value);
        self.bytes
            .resize(self.bytes.len() + padding(value.len()), 0);
        self
    }

    /// The bytes written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Zero bytes after an opaque of `len` bytes.
fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Reads XDR fields from a slice, front to back.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `bytes`.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], XdrError> {
        if self.rest.len() < n {
            return Err(XdrError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn word(&mut self) -> Result<[u8; 4], XdrError> {
        let bytes = self.take(4)?;
        Ok([bytes[0], bytes[1], bytes[2], bytes[3]])
    }

    /// The next 4 bytes as an `unsigned int`, without consuming them.
    pub fn peek_uint(&self) -> Option<u32> {
        self.rest
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// `int` / `enum`.
    pub fn int(&mut self) -> Result<i32, XdrError> {
        Ok(i32::from_be_bytes(self.word()?))
    }

    /// `unsigned int`.
    pub fn uint(&mut self) -> Result<u32, XdrError> {
        Ok(u32::from_be_bytes(self.word()?))
    }

    /// `hyper`.
    pub fn hyper(&mut self) -> Result<i64, XdrError> {
        let bytes = self.take(8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        Ok(i64::from_be_bytes(word))
    }

    /// `double` (the hub only writes doubles; reading them is for its tests).
    #[cfg(test)]
    pub fn double(&mut self) -> Result<f64, XdrError> {
        let bytes = self.take(8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        Ok(f64::from_bits(u64::from_be_bytes(word)))
    }

    /// Variable-length `opaque`; the padding must be zero.
    pub fn opaque(&mut self) -> Result<&'a [u8], XdrError> {
        let len = self.uint()? as usize;
        let value = self.take(len)?;
        if self.take(padding(len))?.iter().any(|b| *b != 0) {
            return Err(XdrError::BadPadding);
        }
        Ok(value)
    }

    /// Fails unless everything was read.
    pub fn finish(&self) -> Result<(), XdrError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(XdrError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaques_are_padded_to_four_with_zeros() {
        for len in 0..=9usize {
            let value: Vec<u8> = (1..=len as u8).collect();
            let mut w = Writer::new();
            w.opaque(&value);
            let bytes = w.into_bytes();
            assert_eq!(bytes.len(), 4 + len.div_ceil(4) * 4, "length {len}");
            assert_eq!(&bytes[..4], &(len as u32).to_be_bytes());
            assert!(bytes[4 + len..].iter().all(|b| *b == 0));
            let mut r = Reader::new(&bytes);
            assert_eq!(r.opaque().unwrap(), &value[..]);
            r.finish().unwrap();
        }
    }

    #[test]
    fn numbers_are_big_endian_and_round_trip() {
        let mut w = Writer::new();
        w.int(-2).uint(7).hyper(-1).hyper(1 << 40).double(1.5);
        let bytes = w.into_bytes();
        assert_eq!(&bytes[..4], &[0xff, 0xff, 0xff, 0xfe]);
        assert_eq!(&bytes[8..16], &[0xff; 8]);
        assert_eq!(&bytes[24..32], &1.5f64.to_bits().to_be_bytes());
        let mut r = Reader::new(&bytes);
        assert_eq!(r.int(), Ok(-2));
        assert_eq!(r.uint(), Ok(7));
        assert_eq!(r.hyper(), Ok(-1));
        assert_eq!(r.hyper(), Ok(1 << 40));
        assert_eq!(r.double(), Ok(1.5));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn bad_input_is_refused_not_panicked_on() {
        assert_eq!(Reader::new(&[0, 0, 0]).uint(), Err(XdrError::Truncated));
        // A length running past the end.
        assert_eq!(
            Reader::new(&[0, 0, 0, 9, 1, 2]).opaque(),
            Err(XdrError::Truncated)
        );
        assert_eq!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff]).opaque(),
            Err(XdrError::Truncated)
        );
        // Non-zero padding.
        assert_eq!(
            Reader::new(&[0, 0, 0, 1, 7, 0, 1, 0]).opaque(),
            Err(XdrError::BadPadding)
        );
        // Missing padding.
        assert_eq!(
            Reader::new(&[0, 0, 0, 1, 7]).opaque(),
            Err(XdrError::Truncated)
        );
        let mut r = Reader::new(&[0, 0, 0, 1, 9]);
        r.uint().unwrap();
        assert_eq!(r.finish(), Err(XdrError::Trailing(1)));
    }
}
