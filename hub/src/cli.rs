//! Command-line interface: `serve` (default) and the operator subcommands.

use crate::config::HubConfig;
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use hub_core::metrics::Metrics;
use hub_core::store::Storage;
use hub_plugin_sdk::{PasswordScheme, UserId};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// The multi-protocol chat hub.
#[derive(Debug, Parser)]
#[command(name = "hub", version, about)]
pub struct Cli {
    /// Configuration file layered over config/hub.toml.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the hub (the default).
    Serve,
    /// Retro registration keys.
    Regkey {
        /// Action.
        #[command(subcommand)]
        action: RegkeyAction,
    },
    /// Accounts.
    User {
        /// Action.
        #[command(subcommand)]
        action: UserAction,
    },
    /// TLS identity.
    Tls {
        /// Action.
        #[command(subcommand)]
        action: TlsAction,
    },
    /// XDR clients and the hub's XDR key.
    Xdr {
        /// Action.
        #[command(subcommand)]
        action: XdrAction,
    },
}

/// `hub xdr ...`
#[derive(Debug, Subcommand)]
pub enum XdrAction {
    /// Register (or re-key) an XDR client: its id and RSA public key.
    AddClient {
        /// The client id it sends in its handshake.
        #[arg(long)]
        id: String,
        /// Its public key: a PEM file (SPKI or PKCS#1), `-` for standard input, or the
        /// PEM text itself.
        #[arg(long, allow_hyphen_values = true)]
        pubkey: String,
        /// Hub handle for a new client (default: the id if free, else `xdr-<id>`).
        #[arg(long)]
        handle: Option<String>,
    },
    /// Print the hub's XDR public key (SPKI PEM), making the key pair if missing.
    ServerKey,
}

/// `hub regkey ...`
#[derive(Debug, Subcommand)]
pub enum RegkeyAction {
    /// Make single-use registration keys (64 hex characters each, one per line).
    New {
        /// How many.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Write them to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `hub user ...`
#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// List accounts.
    List,
    /// Show one account (by handle or numeric id).
    Show {
        /// Handle or id.
        user: String,
    },
    /// Create an account; the password is read from standard input (first line).
    Add {
        /// Handle.
        handle: String,
        /// Hash: argon2id or sha256 (PBKDF2-HMAC-SHA256).
        #[arg(long, default_value = "argon2id")]
        hash: String,
    },
    /// Disable an account (or enable it again with --enable).
    Disable {
        /// Handle or id.
        user: String,
        /// Enable instead.
        #[arg(long)]
        enable: bool,
    },
}

/// `hub tls ...`
#[derive(Debug, Subcommand)]
pub enum TlsAction {
    /// Print the path of the certificate clients pin (made if missing).
    Cert,
}

fn store_for_cli(config: &HubConfig) -> anyhow::Result<Arc<hub_core::store::SledStore>> {
    crate::server::open_store(config, Arc::new(Metrics::default()))
        .context("is the hub running? the store can be opened by one process at a time")
}

fn find_user(store: &dyn Storage, text: &str) -> anyhow::Result<hub_core::store::Account> {
    if let Some(account) = store.account_by_handle(text)? {
        return Ok(account);
    }
    if let Ok(id) = text.parse::<u64>() {
        if let Some(account) = store.account(UserId(id))? {
            return Ok(account);
        }
    }
    bail!("no user {text:?}")
}

/// The key kind XDR client keys are stored under (normalised to SPKI PEM).
pub const XDR_CLIENT_KEY: &str = "xdr/rsa-public-pem";

/// Reads an RSA public key (SPKI or PKCS#1 PEM) and returns it as SPKI PEM.
fn xdr_public_key(argument: &str) -> anyhow::Result<String> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
    use rsa::traits::PublicKeyParts;
    let pem = if argument == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        text
    } else if argument.trim_start().starts_with("-----BEGIN") {
        argument.to_owned()
    } else {
        std::fs::read_to_string(argument).with_context(|| format!("reading {argument}"))?
    };
    let key = rsa::RsaPublicKey::from_public_key_pem(pem.trim())
        .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(pem.trim()))
        .map_err(|_| anyhow::anyhow!("not an RSA public key in SPKI or PKCS#1 PEM"))?;
    let bits = key.size() * 8;
    if !(1024..=8192).contains(&bits) {
        bail!("the key has {bits} bits; XDR client keys have 1024 to 8192");
    }
    Ok(key.to_public_key_pem(LineEnding::LF)?)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs an operator subcommand.
pub fn run_command(config: &HubConfig, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve => unreachable!("serve is handled by main"),
        Command::Regkey {
            action: RegkeyAction::New { count, out },
        } => {
            let store = store_for_cli(config)?;
            let rng = ring::rand::SystemRandom::new();
            let mut lines = String::new();
            for _ in 0..count.max(1) {
                let mut key = [0u8; 32];
                ring::rand::SecureRandom::fill(&rng, &mut key)
                    .map_err(|_| anyhow::anyhow!("random source failed"))?;
                store.add_regkey(key, hub_core::actors::unix_ms())?;
                lines.push_str(&hex(&key));
                lines.push('\n');
            }
            store.close();
            store.flush_now()?;
            match out {
                Some(path) => std::fs::write(&path, lines)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => std::io::stdout().write_all(lines.as_bytes())?,
            }
        }
        Command::User { action } => {
            let store = store_for_cli(config)?;
            match action {
                UserAction::List => {
                    for account in store.accounts()? {
                        println!(
                            "{}\t{}{}",
                            account.id,
                            account.handle,
                            if account.disabled { "\t(disabled)" } else { "" }
                        );
                    }
                }
                UserAction::Show { user } => {
                    let account = find_user(store.as_ref(), &user)?;
                    let scheme = account.credential.split('$').nth(1).unwrap_or("none");
                    println!("id: {}", account.id);
                    println!(
                        "id (hex, as Retro shows it): {}",
                        hex(&account.id.0.to_be_bytes())
                    );
                    println!("handle: {}", account.handle);
                    println!("created_unix_ms: {}", account.created_unix_ms);
                    println!("password hash: {scheme}");
                    println!("disabled: {}", account.disabled);
                    for (contact, state) in store.contacts(account.id)? {
                        println!("contact: {contact} {state:?}");
                    }
                }
                UserAction::Add { handle, hash } => {
                    let scheme = match hash.as_str() {
                        "argon2id" => PasswordScheme::Argon2id,
                        "sha256" => PasswordScheme::Pbkdf2Sha256,
                        other => bail!("--hash must be argon2id or sha256, not {other:?}"),
                    };
                    let mut password = String::new();
                    std::io::stdin().read_line(&mut password)?;
                    let password = password.trim_end_matches(['\r', '\n']);
                    if password.is_empty() {
                        bail!("no password on standard input");
                    }
                    let answer = hub_core::accounts::signup(
                        store.as_ref(),
                        &handle,
                        password,
                        scheme,
                        hub_core::actors::unix_ms(),
                        &config.core.accounts,
                    )
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                    if let hub_plugin_sdk::Answer::Session { user, .. } = answer {
                        println!("{}\t{}", user.id, user.handle);
                    }
                }
                UserAction::Disable { user, enable } => {
                    let account = find_user(store.as_ref(), &user)?;
                    store.set_disabled(account.id, !enable)?;
                    println!(
                        "{} {}",
                        account.handle,
                        if enable { "enabled" } else { "disabled" }
                    );
                }
            }
            store.close();
            store.flush_now()?;
        }
        Command::Xdr {
            action: XdrAction::ServerKey,
        } => {
            let spec = hub_plugin_sdk::KeySpec {
                name: crate::keys::XDR_SERVER.1.into(),
                kind: hub_plugin_sdk::KeyKind::Rsa2048,
            };
            let private = crate::keys::ensure(&config.data_dir, crate::keys::XDR_SERVER.0, &spec)?;
            print!("{}", crate::keys::public_pem(&private, spec.kind)?);
        }
        Command::Xdr {
            action: XdrAction::AddClient { id, pubkey, handle },
        } => {
            if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
                bail!("a client id is 1-256 bytes without control characters");
            }
            let pem = xdr_public_key(&pubkey)?;
            let store = store_for_cli(config)?;
            let now = hub_core::actors::unix_ms();
            let account = match store.alias("xdr", &id)? {
                Some(user) => {
                    let account = store.account(user)?.context("alias of a missing account")?;
                    eprintln!(
                        "client {id} exists ({}); its key is replaced",
                        account.handle
                    );
                    account
                }
                None => {
                    let handles = match handle {
                        Some(handle) => {
                            hub_core::accounts::validate_handle(&handle)
                                .map_err(|e| anyhow::anyhow!("--handle {handle:?}: {e}"))?;
                            vec![handle]
                        }
                        None => vec![id.clone(), format!("xdr-{id}")],
                    };
                    let handles: Vec<String> = handles
                        .into_iter()
                        .filter(|h| hub_core::accounts::validate_handle(h).is_ok())
                        .collect();
                    store
                        .create_alias_account("xdr", &id, &handles, now)
                        .map_err(|e| match e {
                            hub_core::store::StoreError::HandleTaken => {
                                anyhow::anyhow!("the handle is taken; choose one with --handle")
                            }
                            other => other.into(),
                        })?
                }
            };
            store.put_public_key(account.id, XDR_CLIENT_KEY, pem.as_bytes())?;
            store.close();
            store.flush_now()?;
            println!("{}\t{}", account.id, account.handle);
        }
        Command::Tls {
            action: TlsAction::Cert,
        } => {
            let (cert, _key) = crate::tls::ensure(config)?;
            println!("{}", cert.display());
        }
    }
    Ok(())
}
