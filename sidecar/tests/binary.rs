//! The built binary: configuration errors exit 2 with one line, SIGTERM
//! drains in-flight requests before the process exits, and the store flags
//! (a private CA, waiting for the store at start-up) take effect.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use hyper::body::Incoming;
use support::{App, body, get, redis_server};

const BIN: &str = env!("CARGO_BIN_EXE_sametag-sidecar");

fn run_to_exit(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_policy_file_exits_2_with_one_line() {
    let dir = std::env::temp_dir().join(format!("sametag-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.yaml");
    std::fs::write(&file, "mode: Sometimes\nroutes: []\n").unwrap();
    let (code, stderr) = run_to_exit(&[
        "--policy",
        file.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("policy.yaml"), "{stderr}");
    std::fs::write(&file, "mode: Trust\nsurprise: 1\n").unwrap();
    let (code, stderr) = run_to_exit(&["--policy", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("surprise"), "{stderr}");
    // A steady pattern that does not compile, or compiles too large.
    for (pattern, says) in [
        (
            "'(csrf'",
            "routes[0].steady[0]: invalid regex `(csrf`: unclosed group",
        ),
        (
            r"'\w{500}\w{500}'",
            "routes[0].steady[0]: compiles to more than",
        ),
    ] {
        std::fs::write(
            &file,
            format!("routes: [{{path: /app/**, steady: [{pattern}]}}]\n"),
        )
        .unwrap();
        let (code, stderr) = run_to_exit(&["--policy", file.to_str().unwrap()]);
        assert_eq!(code, 2, "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    let (code, stderr) = run_to_exit(&["--policy", dir.join("missing.yaml").to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flags_exit_2_with_one_line() {
    for args in [
        &["--listen", "not-an-address"][..],
        &["--upstream-timeout", "soon"],
        &["--upstream", "no-port"],
        &["--no-such-flag"],
    ] {
        let (code, stderr) = run_to_exit(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    }
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for env in [
        "SAMETAG_LISTEN",
        "SAMETAG_UPSTREAM",
        "SAMETAG_REDIS_URL",
        "SAMETAG_POLICY",
        "SAMETAG_ADMIN",
        "SAMETAG_STORE_PREFIX",
    ] {
        assert!(help.contains(env), "--help names {env}");
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    let app = App::start(|_req: http::Request<Incoming>| async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        Response::new(body("finished"))
    })
    .await;
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--upstream",
            &app.addr.to_string(),
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = started_on(&mut child).await;

    let in_flight = tokio::spawn(async move { get(addr, "/slow", &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections while draining"
    );
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "finished");
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn policy_file_is_hot_reloaded() {
    let app = App::fixed("doc", "\"app-tag\"").await;
    let dir = std::env::temp_dir().join(format!("sametag-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.yaml");
    std::fs::write(&file, "mode: Bypass\n").unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--policy-reload",
            "50ms",
            "--upstream",
            &app.addr.to_string(),
            "--policy",
            file.to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = started_on(&mut child).await;
    assert_eq!(get(addr, "/doc", &[]).await.etag(), "\"app-tag\"", "Bypass");
    // An invalid edit keeps the old policy...
    std::fs::write(&file, "mode: [").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(addr, "/doc", &[]).await.etag(), "\"app-tag\"");
    // ...a valid one takes over without a restart.
    std::fs::write(&file, "mode: Validate\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tag = get(addr, "/doc", &[]).await.etag();
        if tag != "\"app-tag\"" {
            break;
        }
        assert!(Instant::now() < deadline, "policy not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a sidecar restarting after its ETagStore was deleted gets: the
/// password Secret and the policy ConfigMap are gone (optional references),
/// so the Redis URL keeps the unexpanded `$(SAMETAG_REDIS_PASSWORD)` and the
/// policy file is missing. It must serve, degraded, not crash-loop; a
/// policy file that appears later is picked up.
#[tokio::test]
async fn starts_degraded_without_its_store_objects() {
    let app = App::fixed("doc", "\"app-tag\"").await;
    let dir = std::env::temp_dir().join(format!("sametag-orphan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.yaml");
    // Nothing listens there: the store is down.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env("SAMETAG_UPSTREAM", app.addr.to_string())
        .env(
            "SAMETAG_REDIS_URL",
            format!("redis://:$(SAMETAG_REDIS_PASSWORD)@127.0.0.1:{port}"),
        )
        .env("SAMETAG_POLICY", &file)
        .env("SAMETAG_POLICY_OPTIONAL", "true")
        .env("SAMETAG_POLICY_RELOAD", "50ms")
        .env("SAMETAG_STORE_WAIT", "0s")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = started_on(&mut child).await;
    // Validate without the store: a content-derived tag, not the app's.
    let r = get(addr, "/doc", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let tag = r.etag();
    assert!(tag.starts_with('"') && tag != "\"app-tag\"", "{tag}");
    assert_eq!(
        get(addr, "/doc", &[("if-none-match", &tag)]).await.status,
        StatusCode::NOT_MODIFIED
    );
    // The policy appears (the ConfigMap is back): taken without a restart.
    std::fs::write(&file, "mode: Bypass\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(addr, "/doc", &[]).await.etag() != "\"app-tag\"" {
        assert!(Instant::now() < deadline, "policy not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(child.try_wait().unwrap().is_none(), "the sidecar exited");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Read the binary's JSON logs until the start line; return the proxy's
/// bound address.
async fn started_on(child: &mut std::process::Child) -> SocketAddr {
    started_after(child).await.0
}

/// Like [`started_on`], also returning the messages logged before the start
/// line.
async fn started_after(child: &mut std::process::Child) -> (SocketAddr, Vec<String>) {
    let stdout = child.stdout.take().unwrap();
    tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut before = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).expect("JSON logs");
            let message = v["fields"]["message"].as_str().unwrap_or_default();
            if message == "sametag sidecar started" {
                let addr = v["fields"]["listen"].as_str().unwrap().parse().unwrap();
                // Keep draining so the child never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines {});
                return (addr, before);
            }
            before.push(message.to_owned());
        }
        panic!("no start line");
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn waits_for_a_tls_store_signed_by_a_private_ca() {
    let app = App::fixed("doc", "\"app-tag\"").await;
    let mut redis = redis_server::RedisServer::with(redis_server::RedisConfig {
        tls: true,
        password: Some("pw".into()),
        ..Default::default()
    });
    let (url, ca) = (redis.url(), redis.ca_file());
    // The store is down when the sidecar starts and comes up a second later.
    redis.kill();
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--upstream", &app.addr.to_string(), "--redis", &url])
        .args([
            "--redis-ca-file",
            ca.to_str().unwrap(),
            "--store-wait",
            "20s",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        redis.restart();
        redis
    });
    let (addr, before) = started_after(&mut child).await;
    assert!(
        before.iter().any(|m| m == "store reachable"),
        "serving only once the store answered: {before:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    // The very first response is tagged through the store.
    let first = get(addr, "/doc", &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(
        first.header("cache-status").ends_with("; stored"),
        "{}",
        first.header("cache-status")
    );
    let _ = child.kill();
    let _ = child.wait();
    drop(restarter.join().unwrap());
}

/// A write is invalidated before it is forwarded: a sidecar SIGKILLed after
/// the app committed the write, but before it could invalidate afterwards,
/// leaves no replica trusting what the write changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_killed_after_the_app_committed_leaves_nothing_trusted() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use sametag_sidecar::store::redis::{RedisOptions, RedisStore};

    let redis = redis_server::RedisServer::start();
    let doc = Arc::new(Mutex::new("v1".to_owned()));
    let committed = Arc::new(AtomicBool::new(false));
    let app = {
        let (doc, committed) = (doc.clone(), committed.clone());
        App::start(move |req: http::Request<Incoming>| {
            let (doc, committed) = (doc.clone(), committed.clone());
            async move {
                if req.method() == http::Method::PUT {
                    // Commit at once, answer late: the sidecar dies between.
                    *doc.lock().unwrap() = "v2".to_owned();
                    committed.store(true, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    return support::status(StatusCode::NO_CONTENT);
                }
                let text = doc.lock().unwrap().clone();
                Response::builder().body(body(text)).unwrap()
            }
        })
        .await
    };
    let dir = std::env::temp_dir().join(format!("sametag-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, "mode: Trust\nmaxAge: 60s\n").unwrap();

    // Replica B, in-process, trusts the document.
    let store = RedisStore::connect(&redis.url(), "sametag", RedisOptions::default()).unwrap();
    assert!(store.wait_up(Duration::from_secs(5)).await);
    let b = support::Sidecar::start(app.addr, "mode: Trust\nmaxAge: 60s\n", Arc::new(store)).await;
    let host = ("host", "shop");
    let tag = get(b.addr, "/doc", &[host]).await.etag();
    let r = get(b.addr, "/doc", &[host, ("if-none-match", &tag)]).await;
    assert_eq!(
        r.header("cache-status"),
        "sametag; hit",
        "trusted before the write"
    );

    // Replica A, a real process, forwards a write and is killed mid-write.
    let mut a = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--upstream", &app.addr.to_string(), "--redis", &redis.url()])
        .args(["--policy", policy.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let a_addr = started_on(&mut a).await;
    let write = tokio::spawn(async move {
        support::send(a_addr, "PUT", "/doc", &[("host", "shop.example")], "v2").await
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !committed.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the write never reached the app");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.kill().unwrap(); // SIGKILL
    let _ = a.wait();
    write.abort();

    // B must ask the app and see the committed write.
    let r = get(b.addr, "/doc", &[host, ("if-none-match", &tag)]).await;
    assert_ne!(
        r.header("cache-status"),
        "sametag; hit",
        "no trust outlives the write"
    );
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "v2");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A password with every character a URL would have to escape (`@:/%#?`
/// and spaces) reaches Redis from `SAMETAG_REDIS_PASSWORD`, with the ACL
/// user from `SAMETAG_REDIS_USERNAME`, over `rediss://` trusting only the
/// `--redis-ca-file` CA; the default user is off, so nothing else could
/// have authenticated. The wrong password leaves the store unreachable.
#[tokio::test]
async fn acl_user_with_special_password_from_the_env_over_tls() {
    const PASSWORD: &str = "p@ss w:/rd%41#?x ";
    let app = App::fixed("doc", "\"app-tag\"").await;
    let redis = redis_server::RedisServer::with(redis_server::RedisConfig {
        tls: true,
        acl_user: Some(("admin".into(), "adminpw".into())),
        extra: vec![
            "user default off".into(),
            // Quoted: redis.conf splits on spaces otherwise.
            format!("user app on \">{PASSWORD}\" ~* &* +@all"),
        ],
        ..Default::default()
    });
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let ca = redis.ca_file();
    let spawn = |password: &str| {
        Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--upstream", &app.addr.to_string(), "--redis", &url])
            .args(["--redis-ca-file", ca.to_str().unwrap()])
            .args(["--store-wait", "5s"])
            .env("SAMETAG_REDIS_USERNAME", "app")
            .env("SAMETAG_REDIS_PASSWORD", password)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = spawn(PASSWORD);
    let (addr, before) = started_after(&mut child).await;
    assert!(
        before.iter().any(|m| m == "store reachable"),
        "authenticated as app: {before:?}"
    );
    let first = get(addr, "/doc", &[]).await;
    assert!(
        first.header("cache-status").ends_with("; stored"),
        "{}",
        first.header("cache-status")
    );
    // `ps` shows no password: it travelled in the environment only.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("p@ss"));
    let _ = child.kill();
    let _ = child.wait();

    // One character off: never reachable, served degraded.
    let mut wrong = spawn(&PASSWORD[..PASSWORD.len() - 1]);
    let (addr, before) = started_after(&mut wrong).await;
    assert!(!before.iter().any(|m| m == "store reachable"), "{before:?}");
    let degraded = get(addr, "/doc", &[]).await;
    assert_eq!(degraded.status, StatusCode::OK);
    assert!(
        !degraded.header("cache-status").ends_with("; stored"),
        "{}",
        degraded.header("cache-status")
    );
    let _ = wrong.kill();
    let _ = wrong.wait();
}
