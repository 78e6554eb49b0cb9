//! Long-lived key pairs the hub keeps for plugins (`Manifest::keys`): made on first
//! start in `<data_dir>/keys/<plugin>/<name>.pem` (PKCS#8 PEM, mode 0600) and handed to
//! the plugin in its config's `"$keys"` object. Plugins touch no files; this is where
//! their secrets live.

use anyhow::Context;
use hub_plugin_sdk::{KeyKind, KeySpec};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The XDR plugin's server key, as `hub xdr server-key` knows it.
pub const XDR_SERVER: (&str, &str) = ("xdr", "server");

/// Where a plugin's key lives.
pub fn path(data_dir: &Path, plugin: &str, name: &str) -> PathBuf {
    data_dir
        .join("keys")
        .join(plugin)
        .join(format!("{name}.pem"))
}

/// The private key (PKCS#8 PEM) of `spec`, made now if missing.
pub fn ensure(data_dir: &Path, plugin: &str, spec: &KeySpec) -> anyhow::Result<String> {
    let file = path(data_dir, plugin, &spec.name);
    if file.exists() {
        let pem = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        check(&pem, spec.kind).with_context(|| format!("{} is not usable", file.display()))?;
        return Ok(pem);
    }
    let pem = match spec.kind {
        KeyKind::Rsa2048 => {
            let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048)
                .context("making an RSA key")?;
            key.to_pkcs8_pem(LineEnding::LF)
                .context("encoding the RSA key")?
                .to_string()
        }
    };
    write_private(&file, &pem)?;
    tracing::info!(plugin, key = %spec.name, file = %file.display(), "made a key pair for the plugin");
    Ok(pem)
}

/// The public half (SPKI PEM) of a private key PEM.
pub fn public_pem(private_pem: &str, kind: KeyKind) -> anyhow::Result<String> {
    match kind {
        KeyKind::Rsa2048 => {
            let key = rsa::RsaPrivateKey::from_pkcs8_pem(private_pem)
                .context("not a PKCS#8 RSA private key")?;
            Ok(key
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .context("encoding the public key")?)
        }
    }
}

fn check(pem: &str, kind: KeyKind) -> anyhow::Result<()> {
    match kind {
        KeyKind::Rsa2048 => {
            use rsa::traits::PublicKeyParts;
            let key =
                rsa::RsaPrivateKey::from_pkcs8_pem(pem).context("not a PKCS#8 RSA private key")?;
            anyhow::ensure!(
                key.size() == 256,
                "the key is {} bits, not 2048",
                key.size() * 8
            );
            Ok(())
        }
    }
}

/// Writes a secret: a temporary file with mode 0600, fsynced, then renamed into place.
fn write_private(file: &Path, pem: &str) -> anyhow::Result<()> {
    let dir = file.parent().context("a key file has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temp = file.with_extension("pem.part");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut out = options
        .open(&temp)
        .with_context(|| format!("writing {}", temp.display()))?;
    out.write_all(pem.as_bytes())?;
    out.sync_all()?;
    std::fs::rename(&temp, file).with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

/// The config section handed to a plugin: its own section plus `"$keys"`.
pub fn with_keys(
    data_dir: &Path,
    plugin: &str,
    specs: &[KeySpec],
    section: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let mut section = section.clone();
    if specs.is_empty() {
        return Ok(section);
    }
    let mut keys = serde_json::Map::new();
    for spec in specs {
        keys.insert(spec.name.clone(), ensure(data_dir, plugin, spec)?.into());
    }
    if let Some(object) = section.as_object_mut() {
        object.insert("$keys".into(), keys.into());
    }
    Ok(section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_kept_private_and_its_public_half_derived() {
        let dir = tempfile::tempdir().unwrap();
        let spec = KeySpec {
            name: "server".into(),
            kind: KeyKind::Rsa2048,
        };
        let first = ensure(dir.path(), "xdr", &spec).unwrap();
        let again = ensure(dir.path(), "xdr", &spec).unwrap();
        assert_eq!(first, again, "made once, then read back");
        let file = path(dir.path(), "xdr", "server");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let public = public_pem(&first, KeyKind::Rsa2048).unwrap();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
        let section = with_keys(dir.path(), "xdr", &[spec], &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(section["$keys"]["server"], serde_json::json!(first));
        std::fs::write(&file, "garbage").unwrap();
        assert!(ensure(
            dir.path(),
            "xdr",
            &KeySpec {
                name: "server".into(),
                kind: KeyKind::Rsa2048
            }
        )
        .is_err());
    }
}
