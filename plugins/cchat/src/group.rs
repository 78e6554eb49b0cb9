//! The modular groups of the key negotiation (RFC 3526 MODP groups, generator 2) and
//! the byte-level checks the hub makes on intermediates. The hub does no arithmetic on
//! the values it relays; it only checks that each is in range.

/// An RFC 3526 prime by size in bits, as lower-case hex.
pub fn rfc3526_prime(bits: u32) -> Option<&'static str> {
    match bits {
        1536 => Some(GROUP_5),
        2048 => Some(GROUP_14),
        3072 => Some(GROUP_15),
        4096 => Some(GROUP_16),
        _ => None,
    }
}

/// RFC 3526 group 5 (1536 bits).
const GROUP_5: &str = "\
    ffffffffffffffffc90fdaa22168c234c4c6628b80dc1cd129024e088a67cc74\
    020bbea63b139b22514a08798e3404ddef9519b3cd3a431b302b0a6df25f1437\
    4fe1356d6d51c245e485b576625e7ec6f44c42e9a637ed6b0bff5cb6f406b7ed\
    ee386bfb5a899fa5ae9f24117c4b1fe649286651ece45b3dc2007cb8a163bf05\
    98da48361c55d39a69163fa8fd24cf5f83655d23dca3ad961c62f356208552bb\
    9ed529077096966d670c354e4abc9804f1746c08ca237327ffffffffffffffff";
/// RFC 3526 group 14 (2048 bits): the default.
const GROUP_14: &str = "\
    ffffffffffffffffc90fdaa22168c234c4c6628b80dc1cd129024e088a67cc74\
    020bbea63b139b22514a08798e3404ddef9519b3cd3a431b302b0a6df25f1437\
    4fe1356d6d51c245e485b576625e7ec6f44c42e9a637ed6b0bff5cb6f406b7ed\
    ee386bfb5a899fa5ae9f24117c4b1fe649286651ece45b3dc2007cb8a163bf05\
    98da48361c55d39a69163fa8fd24cf5f83655d23dca3ad961c62f356208552bb\
    9ed529077096966d670c354e4abc9804f1746c08ca18217c32905e462e36ce3b\
    e39e772c180e86039b2783a2ec07a28fb5c55df06f4c52c9de2bcbf695581718\
    3995497cea956ae515d2261898fa051015728e5a8aacaa68ffffffffffffffff";
/// RFC 3526 group 15 (3072 bits).
const GROUP_15: &str = "\
    ffffffffffffffffc90fdaa22168c234c4c6628b80dc1cd129024e088a67cc74\
    020bbea63b139b22514a08798e3404ddef9519b3cd3a431b302b0a6df25f1437\
    4fe1356d6d51c245e485b576625e7ec6f44c42e9a637ed6b0bff5cb6f406b7ed\
    ee386bfb5a899fa5ae9f24117c4b1fe649286651ece45b3dc2007cb8a163bf05\
    98da48361c55d39a69163fa8fd24cf5f83655d23dca3ad961c62f356208552bb\
    9ed529077096966d670c354e4abc9804f1746c08ca18217c32905e462e36ce3b\
    e39e772c180e86039b2783a2ec07a28fb5c55df06f4c52c9de2bcbf695581718\
    3995497cea956ae515d2261898fa051015728e5a8aaac42dad33170d04507a33\
    a85521abdf1cba64ecfb850458dbef0a8aea71575d060c7db3970f85a6e1e4c7\
    abf5ae8cdb0933d71e8c94e04a25619dcee3d2261ad2ee6bf12ffa06d98a0864\
    d87602733ec86a64521f2b18177b200cbbe117577a615d6c770988c0bad946e2\
    08e24fa074e5ab3143db5bfce0fd108e4b82d120a93ad2caffffffffffffffff";
/// RFC 3526 group 16 (4096 bits).
const GROUP_16: &str = "\
    ffffffffffffffffc90fdaa22168c234c4c6628b80dc1cd129024e088a67cc74\
    020bbea63b139b22514a08798e3404ddef9519b3cd3a431b302b0a6df25f1437\
    4fe1356d6d51c245e485b576625e7ec6f44c42e9a637ed6b0bff5cb6f406b7ed\
    ee386bfb5a899fa5ae9f24117c4b1fe649286651ece45b3dc2007cb8a163bf05\
    98da48361c55d39a69163fa8fd24cf5f83655d23dca3ad961c62f356208552bb\
    9ed529077096966d670c354e4abc9804f1746c08ca18217c32905e462e36ce3b\
    e39e772c180e86039b2783a2ec07a28fb5c55df06f4c52c9de2bcbf695581718\
    3995497cea956ae515d2261898fa051015728e5a8aaac42dad33170d04507a33\
    a85521abdf1cba64ecfb850458dbef0a8aea71575d060c7db3970f85a6e1e4c7\
    abf5ae8cdb0933d71e8c94e04a25619dcee3d2261ad2ee6bf12ffa06d98a0864\
    d87602733ec86a64521f2b18177b200cbbe117577a615d6c770988c0bad946e2\
    08e24fa074e5ab3143db5bfce0fd108e4b82d120a92108011a723c12a787e6d7\
    88719a10bdba5b2699c327186af4e23c1a946834b6150bda2583e9ca2ad44ce8\
    dbbbc2db04de8ef92e8efc141fbecaa6287c59474e6bc05d99b2964fa090c3a2\
    233ba186515be7ed1f612970cee2d7afb81bdd762170481cd0069127d5b05aa9\
    93b4ea988d8fddc186ffb7dc90a6c08f4df435c934063199ffffffffffffffff";

/// The group a room negotiates in: the prime `P`, generator 2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// `P`, big-endian, no leading zeros.
    prime: Vec<u8>,
    /// `P` as sent to clients (lower-case hex, even length).
    prime_hex: String,
}

/// The generator, as the first intermediate of every negotiation.
pub const GENERATOR: [u8; 1] = [2];

impl Group {
    /// The group of a prime given in hex; at least `min_bits` bits and odd.
    pub fn from_hex(hex: &str, min_bits: usize) -> Result<Group, String> {
        let prime = strip(&parse_hex(hex).ok_or("the prime is not hex")?).to_vec();
        let bits = prime
            .first()
            .map_or(0, |b| prime.len() * 8 - b.leading_zeros() as usize);
        if bits < min_bits {
            return Err(format!(
                "the prime has {bits} bits; at least {min_bits} are needed"
            ));
        }
        if prime.last().is_none_or(|b| b & 1 == 0) {
            return Err("the prime is even".into());
        }
        let prime_hex = to_hex(&prime);
        Ok(Group { prime, prime_hex })
    }

    /// `P` in hex, as sent in `keyxchg_0` and `keyxchg_1`.
    pub fn prime_hex(&self) -> &str {
        &self.prime_hex
    }

    /// Whether `value` (big-endian) lies strictly between 1 and P − 1: the values a
    /// member may return (0, 1 and P − 1 would force a known key).
    pub fn in_range(&self, value: &[u8]) -> bool {
        let value = strip(value);
        let above_one = value.len() > 1 || value.first().is_some_and(|b| *b > 1);
        // P is odd, so P − 1 differs from P only in its last byte.
        let mut below = self.prime.clone();
        if let Some(last) = below.last_mut() {
            *last -= 1;
        }
        above_one && (value.len(), value) < (below.len(), below.as_slice())
    }
}

/// Bytes without leading zeros.
fn strip(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// Hex digits (either case, odd length allowed: a leading 0 is implied) to bytes.
pub fn parse_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let padded: Vec<u8> = if hex.len() % 2 == 1 {
        std::iter::once(b'0').chain(hex.bytes()).collect()
    } else {
        hex.bytes().collect()
    };
    padded
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// Bytes to lower-case hex (two digits a byte).
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 15) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_prime_is_rfc_3526_group_14() {
        let group = Group::from_hex(rfc3526_prime(2048).unwrap(), 2048).unwrap();
        let hex = group.prime_hex();
        assert_eq!(hex.len(), 512);
        assert!(hex.starts_with("ffffffffffffffffc90fdaa22168c234c4c6628b80dc1cd1"));
        assert!(hex.ends_with("15728e5a8aacaa68ffffffffffffffff"));
        for bits in [1536, 3072, 4096] {
            let group = Group::from_hex(rfc3526_prime(bits).unwrap(), 1024).unwrap();
            assert_eq!(group.prime_hex().len(), bits as usize / 4);
            assert!(group.prime_hex().ends_with("ffffffffffffffff"));
        }
        assert_eq!(rfc3526_prime(1024), None);
    }

    #[test]
    fn hex_parses_either_case_and_odd_lengths() {
        assert_eq!(parse_hex("02"), Some(vec![2]));
        assert_eq!(parse_hex("abC"), Some(vec![0x0a, 0xbc]));
        assert_eq!(parse_hex("0x12"), None);
        assert_eq!(parse_hex(""), None);
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(to_hex(&[0x0a, 0xbc, 0]), "0abc00");
    }

    #[test]
    fn intermediates_must_lie_strictly_between_one_and_p_minus_one() {
        let group = Group::from_hex("0b", 4).unwrap(); // P = 11
        let ok: Vec<u8> = (0..=12).filter(|v| group.in_range(&[*v])).collect();
        assert_eq!(ok, (2..=9).collect::<Vec<u8>>());
        assert!(group.in_range(&[0, 0, 5]), "leading zeros do not count");
        assert!(!group.in_range(&[1, 0]), "256 > P");
        assert!(!group.in_range(&[]));
    }

    #[test]
    fn primes_must_be_odd_and_big_enough() {
        assert!(Group::from_hex("0c", 4).is_err());
        assert!(Group::from_hex("0b", 8).is_err());
        assert!(Group::from_hex("nothex", 4).is_err());
    }
}
