//! The operator's own check of an external store (`StoreReachable`), against
//! real servers of every URL form the CRD accepts: a standalone
//! `redis-server`, a `redis-sentinel` monitoring it, and a three-node Redis
//! Cluster. Each with the store's ACL user: the right password reaches it;
//! a wrong one is `AuthenticationFailed` without the password in the
//! message; a master name the sentinels do not know and a dead cluster are
//! named failures within the bound, never a hang. Also what the operator
//! asks a failover store's sentinels: the primary and the replicas up.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sametag_operator::reachability::{Target, check_within};
use support::free_port;

mod support;

const USER: &str = "sametag";
/// Characters a URL would mangle: the check hands the password over as a
/// value, never inside a URL.
const PASSWORD: &str = "p@ss w:/rd%41#?x";
const WRONG: &str = "not-the-password";
const BOUND: Duration = Duration::from_secs(3);

/// A server process, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `redis-server` from a config file in `dir` (`extra` lines appended),
/// with the store's ACL user; `default` stays passwordless so the cluster
/// can be created and the sentinel can watch.
fn redis_server(dir: &Path, extra: &str, sentinel: bool) -> Server {
    let port = free_port();
    let conf = dir.join(format!("{port}.conf"));
    let mut text = format!(
        "port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir {}\n",
        dir.display()
    );
    if !sentinel {
        text.push_str(&format!(
            "user {USER} on \">{PASSWORD}\" ~* &* +@all\nuser default on nopass ~* &* +@all\n"
        ));
    }
    text.push_str(extra);
    std::fs::write(&conf, text).expect("write the config");
    let mut cmd = Command::new("redis-server");
    cmd.arg(&conf);
    if sentinel {
        cmd.arg("--sentinel");
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (tests/setup-packages.sh)");
    wait_listening(port);
    Server { child, port }
}

/// A sentinel monitoring `master` as `ha` (quorum 1), `extra` lines added.
fn sentinel_of(dir: &Path, master: &Server, extra: &str) -> Server {
    let monitor = format!("sentinel monitor ha 127.0.0.1 {} 1\n{extra}", master.port);
    redis_server(dir, &monitor, true)
}

fn tempdir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sametag-reach-{what}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}

fn target<'a>(url: &'a str, password: &'a str) -> Target<'a> {
    Target {
        url,
        username: Some(USER),
        password: Some(password),
        ca: None,
    }
}

async fn assert_reached(url: &str) {
    if let Err(e) = check_within(&target(url, PASSWORD), BOUND).await {
        panic!("{url}: {e} ({})", e.reason());
    }
}

async fn assert_fails(url: &str, password: &str, reason: &str) {
    let started = Instant::now();
    let e = check_within(&target(url, password), BOUND)
        .await
        .expect_err(url);
    assert_eq!(e.reason(), reason, "{url}: {e}");
    let message = e.to_string();
    assert!(!message.contains(PASSWORD), "{message}");
    assert!(
        started.elapsed() < BOUND + Duration::from_secs(2),
        "{url}: {:?}",
        started.elapsed()
    );
}

/// The store's servers are gone: a named failure within the bound.
async fn assert_down(url: &str) {
    let e = check_within(&target(url, PASSWORD), BOUND)
        .await
        .expect_err("the store is down");
    assert!(
        matches!(e.reason(), "StoreUnreachable" | "StoreTimeout"),
        "{url}: {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_store_is_reached_through_its_sentinel_as_the_acl_user() {
    let dir = tempdir("sentinel");
    let master = redis_server(&dir, "", false);
    let sentinel = sentinel_of(
        &dir,
        &master,
        &format!("sentinel auth-user ha {USER}\nsentinel auth-pass ha \"{PASSWORD}\"\n"),
    );
    let url = format!("redis+sentinel://127.0.0.1:{}/ha", sentinel.port);
    assert_reached(&url).await;
    assert_reached(&format!("redis://127.0.0.1:{}", master.port)).await;
    assert_fails(&url, WRONG, "AuthenticationFailed").await;
    // A master name the sentinels do not monitor.
    let unknown = format!("redis+sentinel://127.0.0.1:{}/nope", sentinel.port);
    assert_fails(&unknown, PASSWORD, "StoreUnreachable").await;
    // The primary gone: the sentinel still names it, nothing answers there.
    drop(master);
    assert_down(&url).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_store_is_reached_as_the_acl_user() {
    let dir = tempdir("cluster");
    let nodes: Vec<Server> = (0..3)
        .map(|_| {
            redis_server(
                &dir,
                &format!(
                    "cluster-enabled yes\ncluster-config-file nodes-{}.conf\n",
                    free_port()
                ),
                false,
            )
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let created = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .arg("--cluster-yes")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("redis-cli");
    assert!(created.success(), "redis-cli --cluster create");
    // Every slot assigned and the state ok on every node.
    let deadline = Instant::now() + Duration::from_secs(15);
    for a in &addrs {
        let port = a.rsplit(':').next().unwrap_or_default();
        loop {
            let out = Command::new("redis-cli")
                .args(["-p", port, "cluster", "info"])
                .output()
                .expect("redis-cli");
            if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(Instant::now() < deadline, "cluster state of {a}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Any one node names the cluster; several are tried in turn.
    let url = format!("redis+cluster://{}", addrs.join(","));
    assert_reached(&url).await;
    assert_reached(&format!("redis+cluster://{}", addrs[1])).await;
    assert_fails(&url, WRONG, "AuthenticationFailed").await;
    drop(nodes);
    assert_down(&url).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// `SENTINEL get-master-addr-by-name` and `SENTINEL REPLICAS` as the
/// operator reads them for `status.redis`: a replica counts while the
/// sentinel has it linked and up, and stops counting once it is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sentinels_answer_names_the_primary_and_counts_replicas_up() {
    let dir = tempdir("replicas");
    let master = redis_server(&dir, "", false);
    let replica = redis_server(
        &dir,
        &format!("replicaof 127.0.0.1 {}\n", master.port),
        false,
    );
    let sentinel = sentinel_of(&dir, &master, "sentinel down-after-milliseconds ha 1000\n");
    let ask = || sametag_operator::primary::ask("127.0.0.1".into(), sentinel.port, "ha".into());
    let until = |want: u32| async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = ask().await;
            if answer.as_ref().and_then(|a| a.replicas_up) == Some(want) {
                return answer.expect("answered");
            }
            assert!(
                Instant::now() < deadline,
                "the sentinel never saw {want} replica(s) up: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let answer = until(1).await;
    assert_eq!(answer.primary, "127.0.0.1");
    drop(replica);
    let answer = until(0).await;
    assert_eq!(answer.primary, "127.0.0.1", "the primary is still named");
    // A master name it does not monitor: no answer.
    let unknown =
        sametag_operator::primary::ask("127.0.0.1".into(), sentinel.port, "nope".into()).await;
    assert_eq!(unknown, None);
    let _ = std::fs::remove_dir_all(dir);
}
