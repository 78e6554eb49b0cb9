//! Retro public keys: the PUBKEY payload (RSA SPKI PEM, newline, Ed25519 SPKI PEM),
//! validated before anything is stored, and HELLO signature checks.

use ed25519_dalek::pkcs8::DecodePublicKey as _;
use ed25519_dalek::{Signature, VerifyingKey};
use rsa::traits::PublicKeyParts;

/// Key kinds stored in the core for a Retro user.
pub const KIND_PEM: &str = "retro/pubkey-pem";
/// The Ed25519 key alone (32 raw bytes), for login checks.
pub const KIND_ED25519: &str = "retro/ed25519-raw";

const END: &str = "-----END PUBLIC KEY-----";

/// A validated key pair as the client sent it.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientKeys {
    /// The payload as sent (returned verbatim by GET_PUBKEY).
    pub pem: Vec<u8>,
    /// The Ed25519 verifying key.
    pub ed25519: [u8; 32],
}

/// Parses and validates a PUBKEY payload.
pub fn parse_pubkey_payload(payload: &[u8]) -> Result<ClientKeys, String> {
    let text =
        std::str::from_utf8(payload).map_err(|_| "public keys are not UTF-8 PEM".to_owned())?;
    let first_end = text
        .find(END)
        .ok_or_else(|| "no PEM public key found".to_owned())?
        + END.len();
    let (rsa_pem, rest) = text.split_at(first_end);
    let ed_pem = rest.trim();
    if !ed_pem.contains(END) {
        return Err("expected two PEM public keys (RSA, then Ed25519)".into());
    }
    let rsa_key = rsa::RsaPublicKey::from_public_key_pem(rsa_pem.trim())
        .map_err(|e| format!("the first key is not an RSA public key: {e}"))?;
    // The message header is one RSA-2048 block (256 bytes): no other size can be used.
    let bits = rsa_key.size() * 8;
    if bits != 2048 {
        return Err(format!("RSA key of {bits} bits; Retro uses RSA-2048"));
    }
    let ed_key = VerifyingKey::from_public_key_pem(ed_pem)
        .map_err(|e| format!("the second key is not an Ed25519 public key: {e}"))?;
    Ok(ClientKeys {
        pem: payload.to_vec(),
        ed25519: ed_key.to_bytes(),
    })
}

/// Checks an Ed25519 signature (strict verification: no malleable signatures).
pub fn verify(public: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let (Ok(public), Ok(signature)) = (
        <[u8; 32]>::try_from(public),
        <[u8; 64]>::try_from(signature),
    ) else {
        return false;
    };
    match VerifyingKey::from_bytes(&public) {
        Ok(key) => key
            .verify_strict(message, &Signature::from_bytes(&signature))
            .is_ok(),
        Err(_) => false,
    }
}
