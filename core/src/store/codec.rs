//! Value and key encoding for the sled trees.

use super::{StoreError, StoreResult};
use serde::{de::DeserializeOwned, Serialize};

/// Format version byte written in front of every postcard value.
const VALUE_V1: u8 = 1;

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
