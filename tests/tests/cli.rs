//! End to end: the operator commands (`regkey`, `user`, `tls`) and configuration errors,
//! run as the real binary on a hub's data directory.

use hub_tests::harness::{hub_binary, Hub, HubOptions};
use hub_tests::json_client::JsonClient;

#[test]
fn regkeys_users_and_the_certificate_path_from_the_command_line() {
    let mut hub = Hub::start(HubOptions::with(&["json"]));
    hub.kill();

    let keys_file = hub.data_dir.parent().unwrap().join("keys.txt");
    let (ok, _, err) = hub.cli(
        &[
            "regkey",
            "new",
            "--count",
            "3",
            "--out",
            keys_file.to_str().unwrap(),
        ],
        "",
    );
    assert!(ok, "{err}");
    let keys = std::fs::read_to_string(&keys_file).unwrap();
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 3);
    for key in &keys {
        assert_eq!(key.len(), 64);
        assert!(key.chars().all(|c| c.is_ascii_hexdigit()), "{key}");
    }
    assert!(keys[0] != keys[1] && keys[1] != keys[2]);
    let (ok, out, _) = hub.cli(&["regkey", "new"], "");
    assert!(ok && out.trim().len() == 64, "{out}");

    let (ok, out, err) = hub.cli(
        &["user", "add", "carol", "--hash", "sha256"],
        "carols password\n",
    );
    assert!(ok, "{err}");
    assert!(out.trim().ends_with("\tcarol"), "{out}");
    let (ok, _, err) = hub.cli(&["user", "add", "carol"], "again\n");
    assert!(!ok && err.contains("handle taken"), "{err}");
    let (_, out, _) = hub.cli(&["user", "list"], "");
    assert!(out.contains("\tcarol"), "{out}");
    let (ok, out, _) = hub.cli(&["user", "show", "carol"], "");
    assert!(
        ok && out.contains("handle: carol") && out.contains("password hash: pbkdf2-sha256"),
        "{out}"
    );
    let (ok, _, err) = hub.cli(&["user", "show", "nobody"], "");
    assert!(!ok && err.contains("no user"), "{err}");

    // The account works, then a disabled account cannot sign in.
    hub.restart();
    let mut client = JsonClient::connect(hub.addr("json", "main")).unwrap();
    assert_eq!(
        client.signin("carol", "carols password").unwrap()["resp_code"],
        0
    );
    hub.kill();
    let (ok, out, _) = hub.cli(&["user", "disable", "carol"], "");
    assert!(ok && out.contains("disabled"), "{out}");
    hub.restart();
    let mut client = JsonClient::connect(hub.addr("json", "main")).unwrap();
    assert_eq!(
        client.signin("carol", "carols password").unwrap()["resp_code"],
        6
    );
    hub.kill();
    let (ok, _, _) = hub.cli(&["user", "disable", "carol", "--enable"], "");
    assert!(ok);

    let (ok, out, _) = hub.cli(&["tls", "cert"], "");
    assert!(ok);
    let cert = std::fs::read_to_string(out.trim()).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
}

#[test]
fn bad_configuration_stops_the_hub_with_a_message_naming_the_key() {
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let mut command = std::process::Command::new(hub_binary());
        command
            .args(args)
            .current_dir(dir.path())
            .env("HUB__DATA_DIR", dir.path().join("data"))
            .env("HUB__PLUGINS_DIR", dir.path());
        for (k, v) in env {
            command.env(k, v);
        }
        let output = command.output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&[("HUB__STORE__DURABILITY", "sometimes")], &[]);
    assert!(!ok && err.contains("store.durability"), "{err}");
    let (ok, err) = run(&[("HUB__ADMIN__LISTEN", "not an address")], &[]);
    assert!(!ok && err.contains("admin.listen"), "{err}");
    let (ok, err) = run(&[], &["--config", "/nonexistent/hub.toml"]);
    assert!(!ok && err.contains("/nonexistent/hub.toml"), "{err}");
    // A good config file is layered over the defaults.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("extra.toml");
    std::fs::write(&file, "[limits]\nsession_queue = 8\n").unwrap();
    let (ok, err) = run(&[], &["--config", file.to_str().unwrap()]);
    assert!(
        !ok && err.contains("limits.session_queue"),
        "a value from --config is read: {err}"
    );
}
