//! The protocol's cryptography, from RustCrypto: RSA-OAEP (SHA-1) for the handshake,
//! RSA-PSS (SHA-512, any salt length) for client signatures, AES-256-CBC with PKCS#7 and
//! a random IV for frames. Randomness comes from the OS (`getrandom`), as the crates
//! expect; it is not I/O the hub owns.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use rand_core::{OsRng, RngCore};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, Pss, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha512};

/// Length of the AES keys both sides use.
pub const AES_KEY_LEN: usize = 32;
/// AES block and IV length.
const BLOCK: usize = 16;
/// SHA-512 output length, the PSS hash.
const H_LEN: usize = 64;

/// Fills a fresh random array.
pub fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

/// The hub's RSA key pair.
pub struct ServerKey(RsaPrivateKey);

impl ServerKey {
    /// Reads a PKCS#8 PEM private key.
    pub fn from_pem(pem: &str) -> Result<ServerKey, String> {
        RsaPrivateKey::from_pkcs8_pem(pem)
            .map(ServerKey)
            .map_err(|e| format!("the server key is not a PKCS#8 RSA key: {e}"))
    }

    /// Decrypts a handshake hello (RSA-OAEP, SHA-1); `None` if it does not decrypt.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Option<Vec<u8>> {
        if ciphertext.len() != self.0.size() {
            return None;
        }
        self.0
            .decrypt_blinded(&mut OsRng, Oaep::new::<sha1::Sha1>(), ciphertext)
            .ok()
    }
}

/// A client's registered public key.
#[derive(Clone, Debug)]
pub struct ClientKey(RsaPublicKey);

impl ClientKey {
    /// Reads an SPKI (`PUBLIC KEY`) or PKCS#1 (`RSA PUBLIC KEY`) PEM.
    pub fn from_pem(pem: &str) -> Result<ClientKey, String> {
        let pem = pem.trim();
        RsaPublicKey::from_public_key_pem(pem)
            .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
            .map(ClientKey)
            .map_err(|_| "not an RSA public key in SPKI or PKCS#1 PEM".to_owned())
    }

    /// Encrypts the handshake reply (RSA-OAEP, SHA-1); `None` if it is too long for the key.
    pub fn encrypt(&self, message: &[u8]) -> Option<Vec<u8>> {
        self.0
            .encrypt(&mut OsRng, Oaep::new::<sha1::Sha1>(), message)
            .ok()
    }

    /// Whether `signature` is a valid RSA-PSS (SHA-512, MGF1-SHA-512) signature of
    /// `data`, whatever salt length it used. rsa verifies one salt length at a time, so
    /// the maximum (what real clients use) is tried first, then the digest length, then
    /// every other.
    pub fn verify(&self, data: &[u8], signature: &[u8]) -> bool {
        if signature.len() != self.0.size() {
            return false;
        }
        let hashed = Sha512::digest(data);
        let em_len = (self.0.n().bits() - 1).div_ceil(8);
        let Some(max_salt) = em_len.checked_sub(H_LEN + 2) else {
            return false;
        };
        let others = (0..max_salt).rev().filter(|len| *len != H_LEN);
        std::iter::once(max_salt)
            .chain((H_LEN < max_salt).then_some(H_LEN))
            .chain(others)
            .any(|salt| {
                self.0
                    .verify(Pss::new_with_salt::<Sha512>(salt), &hashed, signature)
                    .is_ok()
            })
    }
}

/// AES-256-CBC with PKCS#7 padding and the IV in front: one direction of a session.
pub struct Cipher([u8; AES_KEY_LEN]);

impl Cipher {
    /// A cipher with `key` (exactly 32 bytes).
    pub fn new(key: &[u8]) -> Option<Cipher> {
        key.try_into().ok().map(Cipher)
    }

    /// `IV ‖ AES-CBC(PKCS7(plaintext))` with a fresh random IV.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let iv: [u8; BLOCK] = random();
        let encryptor = cbc::Encryptor::<aes::Aes256>::new(&self.0.into(), &iv.into());
        let mut out = iv.to_vec();
        out.extend(encryptor.encrypt_padded_vec_mut::<Pkcs7>(plaintext));
        out
    }

    /// The plaintext of `IV ‖ ciphertext`; `None` for a wrong length or padding.
    pub fn open(&self, frame: &[u8]) -> Option<Vec<u8>> {
        if frame.len() < 2 * BLOCK || !frame.len().is_multiple_of(BLOCK) {
            return None;
        }
        let (iv, ciphertext) = frame.split_at(BLOCK);
        let iv: [u8; BLOCK] = iv.try_into().ok()?;
        cbc::Decryptor::<aes::Aes256>::new(&self.0.into(), &iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
            .ok()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    use rsa::pss::SigningKey;
    use rsa::signature::{RandomizedSigner, SignatureEncoding};
    use std::sync::OnceLock;

    /// One RSA-2048 key for all tests (key generation is slow).
    pub fn test_key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| RsaPrivateKey::new(&mut OsRng, 2048).unwrap())
    }

    pub fn private_pem() -> String {
        test_key().to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
    }

    pub fn public_pem() -> String {
        test_key()
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    }

    pub fn sign(data: &[u8], salt: usize) -> Vec<u8> {
        let signer = SigningKey::<Sha512>::new_with_salt_len(test_key().clone(), salt);
        signer.sign_with_rng(&mut OsRng, data).to_vec()
    }

    #[test]
    fn signatures_verify_with_any_salt_length_and_only_for_their_data() {
        let client = ClientKey::from_pem(&public_pem()).unwrap();
        for salt in [190, 64, 32, 0] {
            let sig = sign(b"data to sign", salt);
            assert!(client.verify(b"data to sign", &sig), "salt {salt}");
            assert!(!client.verify(b"other data", &sig));
        }
        let mut sig = sign(b"x", 190);
        sig[10] ^= 1;
        assert!(!client.verify(b"x", &sig));
        assert!(!client.verify(b"x", &sig[1..]), "wrong length");
    }

    #[test]
    fn oaep_round_trips_and_refuses_garbage() {
        let server = ServerKey::from_pem(&private_pem()).unwrap();
        let client = ClientKey::from_pem(&public_pem()).unwrap();
        let sealed = client.encrypt(b"hello").unwrap();
        assert_eq!(server.decrypt(&sealed).as_deref(), Some(&b"hello"[..]));
        assert_eq!(server.decrypt(&[7u8; 256]), None);
        assert_eq!(server.decrypt(b"short"), None);
        // PKCS#1 PEM works as well as SPKI.
        use rsa::pkcs1::EncodeRsaPublicKey;
        let pkcs1 = test_key()
            .to_public_key()
            .to_pkcs1_pem(LineEnding::LF)
            .unwrap();
        assert!(ClientKey::from_pem(&pkcs1).is_ok());
        assert!(ClientKey::from_pem("nonsense").is_err());
    }

    #[test]
    fn frames_get_fresh_ivs_and_tampering_is_caught() {
        let cipher = Cipher::new(&[9u8; 32]).unwrap();
        let a = cipher.seal(b"same text");
        let b = cipher.seal(b"same text");
        assert_ne!(a, b, "a fresh IV per frame");
        assert_eq!(cipher.open(&a).as_deref(), Some(&b"same text"[..]));
        assert_eq!(a.len(), 32);
        let mut tampered = a.clone();
        *tampered.last_mut().unwrap() ^= 0x55;
        assert_ne!(cipher.open(&tampered).as_deref(), Some(&b"same text"[..]));
        assert_eq!(cipher.open(&a[..31]), None);
        assert!(Cipher::new(&[0u8; 16]).is_none());
    }
}
