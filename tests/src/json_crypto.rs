//! Client-side end-to-end crypto of the JSON ecosystem (WIRE-FACTS "JSON"): an X3DH-style
//! X25519 key agreement carried by `key_exchange.initiate` / `key_exchange.responder`, and
//! XChaCha20 encryption of message text, all base64 on the wire. The hub never sees keys.
//!
//! The scheme as the documents give it, and what this file assumes where they are silent:
//!
//! - S (initiator) publishes `ik` (long-term identity), `spk`, `opk`; R (responder)
//!   publishes `ik` and `epk`. The shared key is HKDF-SHA256 (empty salt, empty info,
//!   32 bytes) over DH(spk_S, ik_R) ‖ DH(ik_S, epk_R) ‖ DH(spk_S, epk_R) ‖ DH(opk_S, epk_R).
//!   S computes each DH with its own secret and R's public key; R with its own secret and
//!   S's public key, in the same order (X25519 is commutative).
//! - Unlike Signal's X3DH, the roles are swapped (the initiator publishes the prekeys and
//!   the responder the ephemeral key), there is no 32 × 0xFF prefix before the DH outputs,
//!   no info string and no signature on `spk`: none is mentioned, so none is used. `spk`
//!   and `opk` are fresh for every exchange (there is no prekey server); `ik` is the
//!   [`Identity`]'s long-term key. All-zero (non-contributory) DH outputs are not rejected.
//! - Messages: XChaCha20 (no Poly1305 tag, although `protocol.standard` advertises
//!   `xchacha-poly1305`) with a random 24-byte nonce and the block counter starting at 0
//!   (libsodium's `crypto_stream_xchacha20_xor`), over the UTF-8 text. Without a tag a
//!   wrong key is detected only by chance (the output is usually not UTF-8).
//! - base64 is the standard alphabet with padding.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::{Key, XChaCha20, XNonce};
use hkdf::Hkdf;
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

/// A user's long-term identity key (`ik`).
pub struct Identity {
    ik: StaticSecret,
}

impl Default for Identity {
    fn default() -> Self {
        Self::new()
    }
}

impl Identity {
    /// A fresh random identity key.
    pub fn new() -> Identity {
        Identity {
            ik: StaticSecret::random_from_rng(OsRng),
        }
    }

    /// The public identity key, base64.
    pub fn public_b64(&self) -> String {
        B64.encode(PublicKey::from(&self.ik).as_bytes())
    }
}

/// The initiator's state between sending `key_exchange.initiate` and receiving
/// `key_exchange.responder`.
pub struct Initiator {
    ik: StaticSecret,
    spk: StaticSecret,
    opk: StaticSecret,
}

/// A 32-byte key shared by the two ends.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedKey(pub [u8; 32]);

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedKey(..)")
    }
}

/// Decode a base64 X25519 public key held in `fields[name]`.
fn public_key(fields: &Value, name: &str) -> Result<PublicKey, String> {
    let text = fields
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("key field {name:?} missing or not a string"))?;
    let bytes = B64
        .decode(text)
        .map_err(|e| format!("key field {name:?} is not base64: {e}"))?;
    let raw: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("key field {name:?} has {} bytes, not 32", b.len()))?;
    Ok(PublicKey::from(raw))
}

fn b64_public(secret: &StaticSecret) -> String {
    B64.encode(PublicKey::from(secret).as_bytes())
}

/// HKDF-SHA256, empty salt and info, 32 bytes, over the four DH outputs in order.
fn derive(dhs: [[u8; 32]; 4]) -> SharedKey {
    let mut ikm = [0u8; 128];
    for (chunk, dh) in ikm.chunks_exact_mut(32).zip(dhs.iter()) {
        chunk.copy_from_slice(dh);
    }
    let hk = Hkdf::<Sha256>::new(Some(&[]), &ikm);
    let mut okm = [0u8; 32];
    hk.expand(&[], &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    SharedKey(okm)
}

/// Start a key exchange: fresh `spk` and `opk`; returns the state and the fields
/// `{"ik","spk","opk"}` of `key_exchange.initiate`.
pub fn initiate(me: &Identity) -> (Initiator, Value) {
    let spk = StaticSecret::random_from_rng(OsRng);
    let opk = StaticSecret::random_from_rng(OsRng);
    let fields = json!({
        "ik": me.public_b64(),
        "spk": b64_public(&spk),
        "opk": b64_public(&opk),
    });
    let state = Initiator {
        ik: me.ik.clone(),
        spk,
        opk,
    };
    (state, fields)
}

/// Answer a `key_exchange.initiate` (its `ik`, `spk`, `opk`; other fields ignored): returns
/// the shared key and the fields `{"ik","epk"}` of `key_exchange.responder`, or why the
/// initiate fields are unusable.
pub fn try_respond(me: &Identity, initiate_fields: &Value) -> Result<(SharedKey, Value), String> {
    let ik_s = public_key(initiate_fields, "ik")?;
    let spk_s = public_key(initiate_fields, "spk")?;
    let opk_s = public_key(initiate_fields, "opk")?;
    let epk = StaticSecret::random_from_rng(OsRng);
    let key = derive([
        me.ik.diffie_hellman(&spk_s).to_bytes(), // DH(spk_S, ik_R)
        epk.diffie_hellman(&ik_s).to_bytes(),    // DH(ik_S, epk_R)
        epk.diffie_hellman(&spk_s).to_bytes(),   // DH(spk_S, epk_R)
        epk.diffie_hellman(&opk_s).to_bytes(),   // DH(opk_S, epk_R)
    ]);
    let fields = json!({"ik": me.public_b64(), "epk": b64_public(&epk)});
    Ok((key, fields))
}

/// [`try_respond`], panicking (a test failure) on unusable fields.
pub fn respond(me: &Identity, initiate_fields: &Value) -> (SharedKey, Value) {
    match try_respond(me, initiate_fields) {
        Ok(done) => done,
        Err(why) => panic!("bad key_exchange.initiate fields: {why}: {initiate_fields}"),
    }
}

impl Initiator {
    /// Finish with the responder's `ik` and `epk` (other fields ignored), or say why they
    /// are unusable.
    pub fn try_complete(self, responder_fields: &Value) -> Result<SharedKey, String> {
        let ik_r = public_key(responder_fields, "ik")?;
        let epk_r = public_key(responder_fields, "epk")?;
        Ok(derive([
            self.spk.diffie_hellman(&ik_r).to_bytes(), // DH(spk_S, ik_R)
            self.ik.diffie_hellman(&epk_r).to_bytes(), // DH(ik_S, epk_R)
            self.spk.diffie_hellman(&epk_r).to_bytes(), // DH(spk_S, epk_R)
            self.opk.diffie_hellman(&epk_r).to_bytes(), // DH(opk_S, epk_R)
        ]))
    }

    /// [`try_complete`](Self::try_complete), panicking (a test failure) on unusable fields.
    pub fn complete(self, responder_fields: &Value) -> SharedKey {
        match self.try_complete(responder_fields) {
            Ok(key) => key,
            Err(why) => panic!("bad key_exchange.responder fields: {why}: {responder_fields}"),
        }
    }
}

impl SharedKey {
    /// Encrypt `text`: returns (nonce, ciphertext), both base64, for a `message`'s `nonce`
    /// and `message` fields.
    pub fn seal(&self, text: &str) -> (String, String) {
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        let mut buf = text.as_bytes().to_vec();
        XChaCha20::new(Key::from_slice(&self.0), XNonce::from_slice(&nonce))
            .apply_keystream(&mut buf);
        (B64.encode(nonce), B64.encode(buf))
    }

    /// Decrypt; `None` if the inputs are not base64, the nonce is not 24 bytes, or the
    /// result is not UTF-8 (the usual outcome of a wrong key: there is no tag).
    pub fn open(&self, nonce_b64: &str, ciphertext_b64: &str) -> Option<String> {
        let nonce = B64.decode(nonce_b64).ok()?;
        if nonce.len() != 24 {
            return None;
        }
        let mut buf = B64.decode(ciphertext_b64).ok()?;
        XChaCha20::new(Key::from_slice(&self.0), XNonce::from_slice(&nonce))
            .apply_keystream(&mut buf);
        String::from_utf8(buf).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_derive_the_same_key() {
        let alice = Identity::new();
        let bob = Identity::new();
        let (state, init_fields) = initiate(&alice);
        for name in ["ik", "spk", "opk"] {
            let b = B64.decode(init_fields[name].as_str().unwrap()).unwrap();
            assert_eq!(b.len(), 32, "{name}");
        }
        assert_eq!(init_fields["ik"], alice.public_b64());
        let (bob_key, resp_fields) = respond(&bob, &init_fields);
        assert_eq!(resp_fields["ik"], bob.public_b64());
        assert_eq!(
            B64.decode(resp_fields["epk"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
        let alice_key = state.complete(&resp_fields);
        assert_eq!(alice_key, bob_key);
        assert_ne!(alice_key.0, [0u8; 32]);
    }

    #[test]
    fn key_matches_the_documented_formula() {
        // Recompute from the formula with all four secrets at hand.
        let ik_s = StaticSecret::random_from_rng(OsRng);
        let spk_s = StaticSecret::random_from_rng(OsRng);
        let opk_s = StaticSecret::random_from_rng(OsRng);
        let ik_r = StaticSecret::random_from_rng(OsRng);
        let epk_r = StaticSecret::random_from_rng(OsRng);
        let p = PublicKey::from;
        let mut ikm = Vec::new();
        ikm.extend_from_slice(spk_s.diffie_hellman(&p(&ik_r)).as_bytes());
        ikm.extend_from_slice(ik_s.diffie_hellman(&p(&epk_r)).as_bytes());
        ikm.extend_from_slice(spk_s.diffie_hellman(&p(&epk_r)).as_bytes());
        ikm.extend_from_slice(opk_s.diffie_hellman(&p(&epk_r)).as_bytes());
        let mut expected = [0u8; 32];
        Hkdf::<Sha256>::new(None, &ikm)
            .expand(&[], &mut expected)
            .unwrap();

        let state = Initiator {
            ik: ik_s,
            spk: spk_s,
            opk: opk_s,
        };
        let resp = json!({"ik": b64_public(&ik_r), "epk": b64_public(&epk_r)});
        assert_eq!(state.complete(&resp).0, expected);
    }

    #[test]
    fn seal_open_round_trip() {
        let (state, init_fields) = initiate(&Identity::new());
        let (key_r, resp) = respond(&Identity::new(), &init_fields);
        let key_s = state.complete(&resp);
        for text in [
            "",
            "hello",
            "héllo wörld ✓ — a longer message with unicode 🙂",
        ] {
            let (nonce, ct) = key_s.seal(text);
            assert_eq!(B64.decode(&nonce).unwrap().len(), 24);
            assert_eq!(B64.decode(&ct).unwrap().len(), text.len());
            assert_eq!(key_r.open(&nonce, &ct).as_deref(), Some(text));
        }
        // Fresh nonce every time.
        let (n1, c1) = key_s.seal("same");
        let (n2, c2) = key_s.seal("same");
        assert_ne!(n1, n2);
        assert_ne!(c1, c2);
    }

    #[test]
    fn different_key_does_not_produce_the_text() {
        let text = "attack at dawn, bring the documents and the second set of keys";
        let key = SharedKey([7u8; 32]);
        let other = SharedKey([8u8; 32]);
        let (nonce, ct) = key.seal(text);
        assert_ne!(other.open(&nonce, &ct).as_deref(), Some(text));
        // A key from another exchange fails too.
        let (state, init_fields) = initiate(&Identity::new());
        let (_, resp) = respond(&Identity::new(), &init_fields);
        let unrelated = state.complete(&resp);
        assert_ne!(unrelated.open(&nonce, &ct).as_deref(), Some(text));
    }

    #[test]
    fn bad_inputs_are_refused() {
        let key = SharedKey([1u8; 32]);
        assert_eq!(key.open("not base64!", "AAAA"), None);
        assert_eq!(key.open(&B64.encode([0u8; 12]), "AAAA"), None);
        assert!(try_respond(&Identity::new(), &json!({"ik": "AAAA"})).is_err());
        let (state, _) = initiate(&Identity::new());
        assert!(state.try_complete(&json!({"ik": 5, "epk": "x"})).is_err());
    }
}
