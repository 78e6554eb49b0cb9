//! Accounts and credentials: password hashing (argon2id, PBKDF2-HMAC-SHA256), session
//! tokens from the OS CSPRNG, handle rules.
//!
//! Hashing is CPU-heavy (tens of milliseconds by design): callers run it on a blocking
//! thread, never on an actor's thread.

use crate::store::{Account, Storage, StoreError, TokenRecord};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use hub_plugin_sdk::{Answer, CoreError, PasswordScheme, UserRef};
use ring::rand::{SecureRandom, SystemRandom};
use std::num::NonZeroU32;

/// Longest handle, in bytes.
pub const MAX_HANDLE_BYTES: usize = 64;
/// Longest password, in bytes (argon2 and PBKDF2 accept more; a bound keeps hashing cheap).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Credential settings (from config).
#[derive(Clone, Debug)]
pub struct AccountPolicy {
    /// PBKDF2 iterations for the "sha256" scheme.
    pub pbkdf2_iterations: u32,
    /// Session token lifetime in milliseconds.
    pub token_ttl_ms: u64,
}

impl Default for AccountPolicy {
    fn default() -> Self {
        AccountPolicy {
            pbkdf2_iterations: 600_000,
            token_ttl_ms: 30 * 24 * 3600 * 1000,
        }
    }
}

fn internal(e: StoreError) -> CoreError {
    CoreError::Internal(e.to_string())
}

/// Checks a handle: 1–64 bytes, no control characters, no leading `#` (rooms) or
/// surrounding white space.
pub fn validate_handle(handle: &str) -> Result<(), CoreError> {
    let ok = !handle.is_empty()
        && handle.len() <= MAX_HANDLE_BYTES
        && !handle.starts_with('#')
        && handle.trim() == handle
        && !handle.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(CoreError::BadHandle)
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The OS CSPRNG does not fail on Linux once booted.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random source");
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Hashes a password into a PHC-style string.
pub fn hash_password(
    scheme: PasswordScheme,
    password: &str,
    policy: &AccountPolicy,
) -> Result<String, CoreError> {
    match scheme {
        PasswordScheme::Argon2id => {
            let salt = SaltString::encode_b64(&random_bytes::<16>())
                .map_err(|e| CoreError::Internal(format!("salt: {e}")))?;
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| CoreError::Internal(format!("argon2: {e}")))
        }
        PasswordScheme::Pbkdf2Sha256 => {
            let salt = random_bytes::<16>();
            let iterations =
                NonZeroU32::new(policy.pbkdf2_iterations.max(1)).expect("max(1) is non-zero");
            let mut out = [0u8; 32];
            ring::pbkdf2::derive(
                ring::pbkdf2::PBKDF2_HMAC_SHA256,
                iterations,
                &salt,
                password.as_bytes(),
                &mut out,
            );
            Ok(format!(
                "$pbkdf2-sha256$i={iterations}${}${}",
                hex(&salt),
                hex(&out)
            ))
        }
    }
}

/// Checks a password against a string made by [`hash_password`].
pub fn verify_password(stored: &str, password: &str) -> bool {
    if let Some(rest) = stored.strip_prefix("$pbkdf2-sha256$i=") {
        let mut parts = rest.split('$');
        let (Some(iterations), Some(salt), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let (Some(iterations), Some(salt), Some(hash)) = (
            iterations.parse::<u32>().ok().and_then(NonZeroU32::new),
            unhex(salt),
            unhex(hash),
        ) else {
            return false;
        };
        ring::pbkdf2::verify(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            password.as_bytes(),
            &hash,
        )
        .is_ok()
    } else {
        match PasswordHash::new(stored) {
            Ok(hash) => Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok(),
            Err(_) => false,
        }
    }
}

/// A new session token: 128 bits from the CSPRNG, shaped like a UUID (as clients expect).
pub fn new_token() -> String {
    let mut b = random_bytes::<16>();
    // Version 4 / variant 1 bits, so the token is a well-formed UUID.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The key a token is stored under: its SHA-256, so a stolen database holds no tokens.
pub fn token_hash(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn issue_token(
    store: &dyn Storage,
    account: &Account,
    now_unix_ms: u64,
    policy: &AccountPolicy,
) -> Result<Answer, CoreError> {
    let token = new_token();
    let expires_unix_ms = now_unix_ms + policy.token_ttl_ms;
    store
        .put_token(
            token_hash(&token),
            &TokenRecord {
                user: account.id,
                expires_unix_ms,
            },
        )
        .map_err(internal)?;
    Ok(Answer::Session {
        token,
        user: UserRef {
            id: account.id,
            handle: account.handle.clone(),
        },
        expires_unix_ms,
    })
}

/// Creates an account and issues a token (blocking: hashes the password).
pub fn signup(
    store: &dyn Storage,
    handle: &str,
    password: &str,
    scheme: PasswordScheme,
    now_unix_ms: u64,
    policy: &AccountPolicy,
) -> Result<Answer, CoreError> {
    validate_handle(handle)?;
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(CoreError::Invalid("password too long".into()));
    }
    if store.account_by_handle(handle).map_err(internal)?.is_some() {
        return Err(CoreError::HandleTaken);
    }
    let credential = hash_password(scheme, password, policy)?;
    let account = match store.create_account(handle, &credential, now_unix_ms) {
        Ok(account) => account,
        Err(StoreError::HandleTaken) => return Err(CoreError::HandleTaken),
        Err(e) => return Err(internal(e)),
    };
    issue_token(store, &account, now_unix_ms, policy)
}

/// Checks a password and issues a token (blocking: verifies the hash).
pub fn signin(
    store: &dyn Storage,
    handle: &str,
    password: &str,
    now_unix_ms: u64,
    policy: &AccountPolicy,
) -> Result<Answer, CoreError> {
    let account = store
        .account_by_handle(handle)
        .map_err(internal)?
        .ok_or(CoreError::NoSuchUser)?;
    if password.len() > MAX_PASSWORD_BYTES || !verify_password(&account.credential, password) {
        return Err(CoreError::BadPassword);
    }
    if account.disabled {
        return Err(CoreError::Disabled);
    }
    issue_token(store, &account, now_unix_ms, policy)
}

/// Looks up a token.
pub fn check_token(
    store: &dyn Storage,
    token: &str,
    now_unix_ms: u64,
) -> Result<Answer, CoreError> {
    let record = store
        .token(token_hash(token))
        .map_err(internal)?
        .ok_or(CoreError::BadToken)?;
    if record.expires_unix_ms <= now_unix_ms {
        return Err(CoreError::BadToken);
    }
    let account = store
        .account(record.user)
        .map_err(internal)?
        .ok_or(CoreError::BadToken)?;
    if account.disabled {
        return Err(CoreError::Disabled);
    }
    Ok(Answer::Session {
        token: token.to_owned(),
        user: UserRef {
            id: account.id,
            handle: account.handle,
        },
        expires_unix_ms: record.expires_unix_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_schemes_verify_and_reject() {
        let policy = AccountPolicy {
            pbkdf2_iterations: 1000,
            ..AccountPolicy::default()
        };
        for scheme in [PasswordScheme::Argon2id, PasswordScheme::Pbkdf2Sha256] {
            let stored = hash_password(scheme, "hunter2", &policy).unwrap();
            assert!(verify_password(&stored, "hunter2"), "{stored}");
            assert!(!verify_password(&stored, "hunter3"), "{stored}");
        }
        let pbkdf2 = hash_password(PasswordScheme::Pbkdf2Sha256, "x", &policy).unwrap();
        assert!(pbkdf2.starts_with("$pbkdf2-sha256$i=1000$"));
        let argon = hash_password(PasswordScheme::Argon2id, "x", &policy).unwrap();
        assert!(argon.starts_with("$argon2id$"));
        assert!(!verify_password("garbage", "x"));
        assert!(!verify_password("$pbkdf2-sha256$i=0$00$00", "x"));
    }

    #[test]
    fn tokens_are_uuid_shaped_and_distinct() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'4');
        assert_ne!(token_hash(&a), token_hash(&b));
    }

    #[test]
    fn handle_rules() {
        assert!(validate_handle("john doe").is_ok());
        for bad in ["", "#room", " x", "x ", "a\nb", &"x".repeat(65)] {
            assert_eq!(validate_handle(bad), Err(CoreError::BadHandle), "{bad:?}");
        }
    }
}
