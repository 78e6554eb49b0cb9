//! Starts the real `hub` binary for end-to-end tests: built once per test run, with a
//! temporary plugins directory holding exactly the plugins a test asks for, ephemeral
//! ports on 127.0.0.1 and a temporary data directory.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A plugin crate the harness can put in a hub's plugins directory.
struct TestPlugin {
    krate: &'static str,
    file_stem: &'static str,
    name: &'static str,
    roles: &'static [&'static str],
    /// Built into its own target directory (`target/test-plugins`) so that it never sits
    /// beside the real plugins, where `cargo run` would load it.
    test_only: bool,
}

const PLUGINS: &[TestPlugin] = &[
    TestPlugin {
        krate: "hub-plugin-json",
        file_stem: "libhub_plugin_json",
        name: "json",
        roles: &["main"],
        test_only: false,
    },
    TestPlugin {
        krate: "hub-plugin-retro",
        file_stem: "libhub_plugin_retro",
        name: "retro",
        roles: &["chat", "file"],
        test_only: false,
    },
    TestPlugin {
        krate: "hub-plugin-cchat",
        file_stem: "libhub_plugin_cchat",
        name: "cchat",
        roles: &["main"],
        test_only: false,
    },
    TestPlugin {
        krate: "hub-plugin-xdr",
        file_stem: "libhub_plugin_xdr",
        name: "xdr",
        roles: &["main"],
        test_only: false,
    },
    TestPlugin {
        krate: "hub-plugin-p2p",
        file_stem: "libhub_plugin_p2p",
        name: "p2p",
        roles: &["main"],
        test_only: false,
    },
    TestPlugin {
        krate: "hub-plugin-testkit",
        file_stem: "libhub_plugin_testkit",
        name: "testkit",
        roles: &["tcp", "tls", "http"],
        test_only: true,
    },
    TestPlugin {
        krate: "hub-plugin-wrong-abi",
        file_stem: "libhub_plugin_wrong_abi",
        name: "wrongabi",
        roles: &["main"],
        test_only: true,
    },
];

/// Where the test-only plugins of this profile are built.
fn test_plugin_dir() -> PathBuf {
    let profile_dir = profile_dir();
    let target = profile_dir.parent().expect("profile dir is in target/");
    let profile = profile_dir.file_name().expect("profile dir name");
    target.join("test-plugins").join(profile)
}

/// The build output directory (`target/debug` or `target/release`) of this test run.
fn profile_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("HUB_TEST_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // Test binaries live in target/<profile>/deps/, other binaries (hub-bench) in
    // target/<profile>/.
    let exe = std::env::current_exe().expect("own executable path");
    let dir = exe.parent().expect("executable has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Builds the hub and every plugin once per test process.
/// Environment cargo sets for a package's own processes (not build configuration).
const PACKAGE_ENV: &[&str] = &[
    "CARGO_PKG_",
    "CARGO_MANIFEST_",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
];

fn build() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = profile_dir();
        if std::env::var("HUB_TEST_SKIP_BUILD").is_err() {
            let release = dir.file_name().is_some_and(|n| n == "release");
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
            for test_only in [false, true] {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let mut command = Command::new(cargo);
                command.args(["build", "--quiet"]);
                // Cargo describes the running test or bench package in the environment
                // (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...); ring's build script reruns
                // when those change, so passing them on would rebuild ring and all above
                // it on every alternation between this build and a plain one.
                for (key, _) in std::env::vars_os() {
                    let key = key.to_string_lossy();
                    if PACKAGE_ENV.iter().any(|prefix| key.starts_with(prefix)) {
                        command.env_remove(key.as_ref());
                    }
                }
                if !test_only {
                    command.args(["-p", "hub"]);
                }
                for plugin in PLUGINS.iter().filter(|p| p.test_only == test_only) {
                    command.args(["-p", plugin.krate]);
                }
                if release {
                    command.arg("--release");
                }
                if test_only {
                    let target = test_plugin_dir()
                        .parent()
                        .expect("profile dir")
                        .to_path_buf();
                    command.arg("--target-dir").arg(target);
                }
                command.arg("--manifest-path").arg(&manifest);
                let status = command.status().expect("running cargo build");
                assert!(status.success(), "building the hub and plugins failed");
            }
        }
        dir
    })
}

/// The built `hub` binary (built on first use).
pub fn hub_binary() -> PathBuf {
    build().join("hub")
}

/// Which plugins a hub gets, and extra environment.
#[derive(Clone, Debug, Default)]
pub struct HubOptions {
    /// Plugin names (`json`, `testkit`, `wrongabi`).
    pub plugins: Vec<&'static str>,
    /// Extra `HUB__...` environment.
    pub env: Vec<(String, String)>,
}

impl HubOptions {
    /// A hub with these plugins.
    pub fn with(plugins: &[&'static str]) -> HubOptions {
        HubOptions {
            plugins: plugins.to_vec(),
            env: Vec::new(),
        }
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> HubOptions {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// Memory of a running hub, from `/proc`.
#[derive(Clone, Copy, Debug)]
pub struct ProcessMemory {
    /// Resident set size now, bytes.
    pub rss: u64,
    /// Highest resident set size so far, bytes.
    pub peak_rss: u64,
}

/// Resident memory of process `pid`: `VmRSS` and `VmHWM` of `/proc/<pid>/status`.
pub fn process_memory(pid: u32) -> Option<ProcessMemory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some(ProcessMemory {
        rss: field("VmRSS:")?,
        peak_rss: field("VmHWM:")?,
    })
}

/// CPU time (user + system) process `pid` has used so far, from `/proc/<pid>/stat`
/// (clock ticks of 1/100 s, Linux's fixed `USER_HZ`).
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are space-separated,
    // utime and stime being the 14th and 15th of the line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Context switches (voluntary + involuntary) all threads of process `pid` have made so
/// far, summed from `/proc/<pid>/task/*/status` (threads that already exited are not
/// counted).
pub fn process_context_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let status = std::fs::read_to_string(task.ok()?.path().join("status")).ok()?;
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
}

/// A running hub process.
pub struct Hub {
    child: Option<Child>,
    /// Data directory (kept across restarts of the same `Hub`).
    pub data_dir: PathBuf,
    plugins_dir: PathBuf,
    _temp: Arc<tempfile::TempDir>,
    options: HubOptions,
    /// Admin address.
    pub admin: SocketAddr,
    listeners: HashMap<(String, String), SocketAddr>,
    log: Arc<Mutex<String>>,
    /// Wall time from spawning the process to its "hub ready" line, last launch.
    pub start_time: Duration,
}

impl Hub {
    /// Builds (once) and starts a hub with a fresh data directory.
    pub fn start(options: HubOptions) -> Hub {
        Hub::start_after(options, |_| {})
    }

    /// Like [`Hub::start`], but runs `setup` first, before the hub's first launch, on
    /// its (empty) data directory: e.g. operator commands through [`Hub::cli`].
    pub fn start_after(options: HubOptions, setup: impl FnOnce(&Hub)) -> Hub {
        let temp = Arc::new(tempfile::tempdir().expect("temporary directory"));
        let data_dir = temp.path().join("data");
        let plugins_dir = temp.path().join("plugins");
        std::fs::create_dir_all(&plugins_dir).expect("plugins directory");
        let bin = build();
        for name in &options.plugins {
            let plugin = PLUGINS
                .iter()
                .find(|p| p.name == *name)
                .unwrap_or_else(|| panic!("unknown test plugin {name}"));
            let file = format!("{}.so", plugin.file_stem);
            let from = if plugin.test_only {
                test_plugin_dir()
            } else {
                bin.clone()
            };
            std::fs::copy(from.join(&file), plugins_dir.join(&file))
                .unwrap_or_else(|e| panic!("copying {file}: {e}"));
        }
        let mut hub = Hub {
            child: None,
            data_dir,
            plugins_dir,
            _temp: temp,
            options,
            admin: "127.0.0.1:0".parse().expect("literal address"),
            listeners: HashMap::new(),
            log: Arc::new(Mutex::new(String::new())),
            start_time: Duration::ZERO,
        };
        setup(&hub);
        hub.launch();
        hub
    }

    fn launch(&mut self) {
        let bin = hub_binary();
        // For profiling: HUB_WRAPPER="valgrind --tool=massif" (or "perf record -g --")
        // runs the hub under that command.
        let wrapper = std::env::var("HUB_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut command = Command::new(program);
                command.args(words).arg(bin);
                command
            }
            None => Command::new(bin),
        };
        command
            .env_remove("RUST_LOG")
            .env("HUB__DATA_DIR", &self.data_dir)
            .env("HUB__PLUGINS_DIR", &self.plugins_dir)
            .env("HUB__ADMIN__LISTEN", "127.0.0.1:0")
            .env("HUB__LOG__LEVEL", "info,hub=debug")
            // Cheap hashing keeps the tests fast; the scheme is the same.
            .env("HUB__ACCOUNTS__PBKDF2_ITERATIONS", "1000")
            .current_dir(self.data_dir.parent().expect("data dir has a parent"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for plugin in PLUGINS {
            for role in plugin.roles {
                command.env(
                    format!(
                        "HUB__PLUGINS__{}__LISTEN__{}",
                        plugin.name.to_uppercase(),
                        role.to_uppercase()
                    ),
                    "127.0.0.1:0",
                );
            }
        }
        for (key, value) in &self.options.env {
            command.env(key, value);
        }
        let spawned = Instant::now();
        let mut child = command.spawn().expect("starting the hub");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = self.log.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("hub ready") {
                    let _ = ready_tx.send(line.clone());
                }
                if let Ok(mut log) = log.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let ready = match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => panic!("the hub did not become ready; log:\n{}", self.log()),
        };
        self.start_time = spawned.elapsed();
        self.child = Some(child);
        let admin = ready
            .split_whitespace()
            .find_map(|word| word.strip_prefix("admin="))
            .expect("ready line names the admin address");
        self.admin = admin.parse().expect("admin address");
        self.listeners.clear();
        let plugins: serde_json::Value =
            serde_json::from_str(&self.http_get("/plugins").1).expect("/plugins is JSON");
        for plugin in plugins.as_array().expect("/plugins is a list") {
            let name = plugin["name"].as_str().unwrap_or_default().to_owned();
            for listener in plugin["listeners"].as_array().into_iter().flatten() {
                let role = listener["role"].as_str().unwrap_or_default().to_owned();
                let addr = listener["addr"]
                    .as_str()
                    .unwrap_or_default()
                    .parse()
                    .expect("listener address");
                self.listeners.insert((name.clone(), role), addr);
            }
        }
    }

    /// The bound address of a plugin role.
    pub fn addr(&self, plugin: &str, role: &str) -> SocketAddr {
        *self
            .listeners
            .get(&(plugin.to_owned(), role.to_owned()))
            .unwrap_or_else(|| panic!("no listener {plugin}/{role}; log:\n{}", self.log()))
    }

    /// The running process's id (`None` after `kill`/`terminate`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The process's memory (`None` if it is not running or `/proc` cannot be read).
    pub fn memory(&self) -> Option<ProcessMemory> {
        process_memory(self.pid()?)
    }

    /// Whether a plugin is loaded (has listeners).
    pub fn has_plugin(&self, plugin: &str) -> bool {
        self.listeners.keys().any(|(name, _)| name == plugin)
    }

    /// Everything the hub logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A plain HTTP/1.1 GET on the admin address: (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_request(self.admin, "GET", path, b"")
    }

    /// One Prometheus sample's value from `/metrics` (`name{labels}` as printed).
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric_in(&self.http_get("/metrics").1, series)
    }

    /// Kills the process with SIGKILL (no shutdown, no flush) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for a clean exit; returns whether it exited with success.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// From now on, restarts bind the listeners to the addresses they have now (not to
    /// new ephemeral ports): for peers that know this hub by its address (P2P).
    pub fn keep_addresses(&mut self) {
        let mut pinned: Vec<(String, String)> = self
            .listeners
            .iter()
            .map(|((plugin, role), addr)| {
                (
                    format!(
                        "HUB__PLUGINS__{}__LISTEN__{}",
                        plugin.to_uppercase(),
                        role.to_uppercase()
                    ),
                    addr.to_string(),
                )
            })
            .collect();
        pinned.sort();
        self.options
            .env
            .retain(|(key, _)| !pinned.iter().any(|(k, _)| k == key));
        self.options.env.extend(pinned);
    }

    /// Starts the hub again on the same data directory (new ephemeral ports, unless
    /// [`Hub::keep_addresses`] pinned them).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Runs `hub <args>` (an operator subcommand) on this hub's data directory, with
    /// `stdin` as standard input; the hub must be stopped first (one store, one process).
    /// Returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        let mut child = Command::new(hub_binary())
            .args(args)
            .env_remove("RUST_LOG")
            .env("HUB__DATA_DIR", &self.data_dir)
            .env("HUB__ACCOUNTS__PBKDF2_ITERATIONS", "1000")
            .current_dir(self.data_dir.parent().expect("data dir has a parent"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running the hub CLI");
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin.as_bytes());
        }
        let output = child.wait_with_output().expect("hub CLI output");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // Under a profiler, stop cleanly so that it writes its output.
        if std::env::var_os("HUB_WRAPPER").is_some_and(|w| !w.is_empty()) {
            self.terminate();
        }
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- hub log ----\n{}", self.log());
        }
    }
}

/// A minimal HTTP/1.1 request (Connection: close): (status, body).
pub fn http_request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("writing request");
    stream.write_all(body).expect("writing body");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of `series` (a metric name with its labels, as written) in Prometheus text.
pub fn metric_in(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
