//! Value and key encoding for the sled trees.

use super::{StoreError, StoreResult};
use serde::{de::DeserializeOwned, Serialize};

/// Format version byte written in front of every postcard value.
const VALUE_V1: u8 = 1;

/// Version byte of a record holding several values of one kind: `SEQUENCE_V2 ‖
/// postcard(sequence)`, written by [`encode_many`] (a user stream's events appended in
/// one burst: one sled insert instead of one per event).
const SEQUENCE_V2: u8 = 2;

/// Encodes a value as `VALUE_V1 ‖ postcard`.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard to a Vec only fails for types serde cannot express, never for ours. The
    // size is measured first so the buffer is allocated once, not grown from empty.
    let size = postcard::experimental::serialized_size(value)
        .expect("postcard encoding of a store record");
    let mut out = Vec::with_capacity(1 + size);
    out.push(VALUE_V1);
    postcard::to_extend(value, out).expect("postcard encoding of a store record")
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> StoreResult<T> {
    match bytes.split_first() {
        Some((&VALUE_V1, rest)) => postcard::from_bytes(rest).map_err(|e| StoreError::Corrupt {
            tree,
            detail: e.to_string(),
        }),
        Some((version, _)) => Err(StoreError::Corrupt {
            tree,
            detail: format!("unknown value version {version}"),
        }),
        None => Err(StoreError::Corrupt {
            tree,
            detail: "empty value".into(),
        }),
    }
}

/// Encodes `values` as one record: a single value exactly as [`encode`] writes it, more
/// than one as `SEQUENCE_V2 ‖ postcard(sequence)`.
pub fn encode_many<T: Serialize>(values: &[&T]) -> Vec<u8> {
    if let [one] = values {
        return encode(*one);
    }
    // As in `encode`: measured first, never fails for the hub's own types.
    let size = postcard::experimental::serialized_size(values)
        .expect("postcard encoding of a store record");
    let mut out = Vec::with_capacity(1 + size);
    out.push(SEQUENCE_V2);
    postcard::to_extend(values, out).expect("postcard encoding of a store record")
}

/// Decodes a record written by [`encode_many`] (or by [`encode`]: one value).
pub fn decode_many<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> StoreResult<Vec<T>> {
    match bytes.split_first() {
        Some((&SEQUENCE_V2, rest)) => {
            let values: Vec<T> = postcard::from_bytes(rest).map_err(|e| StoreError::Corrupt {
                tree,
                detail: e.to_string(),
            })?;
            if values.is_empty() {
                return Err(StoreError::Corrupt {
                    tree,
                    detail: "a record of no values".into(),
                });
            }
            Ok(values)
        }
        _ => decode(tree, bytes).map(|one| vec![one]),
    }
}

/// Big-endian key of two u64s (sorts numerically by the first, then the second).
pub fn pair_key(first: u64, second: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&first.to_be_bytes());
    key[8..].copy_from_slice(&second.to_be_bytes());
    key
}

/// Reads a big-endian u64 at `offset` of a key.
pub fn be_u64(tree: &'static str, bytes: &[u8], offset: usize) -> StoreResult<u64> {
    bytes
        .get(offset..offset + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(StoreError::Corrupt {
            tree,
            detail: format!("key of {} bytes, wanted a u64 at {offset}", bytes.len()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_is_written_as_a_plain_record_and_many_read_back_in_order() {
        let one = encode_many(&[&7u32]);
        assert_eq!(one, encode(&7u32), "a record of one is a plain value");
        assert_eq!(decode_many::<u32>("t", &one).unwrap(), vec![7]);
        let many = encode_many(&[&1u32, &2, &300]);
        assert_eq!(many[0], SEQUENCE_V2);
        assert_eq!(decode_many::<u32>("t", &many).unwrap(), vec![1, 2, 300]);
        assert!(
            decode::<u32>("t", &many).is_err(),
            "a sequence is not a plain value"
        );
        let empty = [SEQUENCE_V2, 0];
        assert!(decode_many::<u32>("t", &empty).is_err());
        assert!(decode_many::<u32>("t", &[9, 1]).is_err(), "unknown version");
    }
}
