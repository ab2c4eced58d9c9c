//! The managed store's Redis exactly as the operator renders it (`redis.conf`
//! and the Secret's `auth.conf`, from operator code), run by a real
//! `redis-server`, with real sidecars against it:
//! - the sidecars' ACL user works for everything the sidecar does (no ACL
//!   denial logged, client tracking on) and is refused FLUSHALL, CONFIG,
//!   DEBUG, SHUTDOWN, KEYS, ACL and keys outside its store;
//! - under memory pressure (a small `maxmemory` filled by unique-URL GETs)
//!   `If-Match` writers lose no update and never get a 503: tag state is
//!   evicted, held locks never are.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sametag_operator::children::{SIDECAR_USER, redis_config, secret};
use sametag_operator::crd::{ETagStore, ETagStoreSpec};
use sametag_sidecar::store::Store;
use sametag_sidecar::store::redis::{Credentials, RedisOptions, RedisStore};
use support::{App, Sidecar, body, get, send};

/// A redis-server running the operator's rendered configuration.
struct Rendered {
    port: u16,
    dir: PathBuf,
    child: Child,
    admin_password: String,
    sidecar_password: String,
    prefix: String,
}

impl Rendered {
    fn start(maxmemory: &str) -> Self {
        let mut store = ETagStore::new("cache", ETagStoreSpec::default());
        store.metadata.namespace = Some("shop".into());
        let managed = store.spec.redis.managed.as_mut().unwrap();
        managed.maxmemory = maxmemory.into();
        let managed = managed.clone();
        let (admin_password, sidecar_password) =
            (secret::generate_password(), secret::generate_password());
        let dir = std::env::temp_dir().join(format!(
            "sametag-managed-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let auth = dir.join("auth.conf");
        std::fs::write(
            &auth,
            redis_config::auth_conf(&store, &admin_password, &sidecar_password),
        )
        .unwrap();
        // Only what the pod provides differs: the port, the data directory,
        // where the Secret is mounted, and loopback instead of every address.
        let mut conf = redis_config::redis_conf(&store, &managed);
        for (from, to) in [
            ("port 6379\n".to_owned(), format!("port {port}\n")),
            ("dir /data\n".to_owned(), format!("dir {}\n", dir.display())),
            ("bind * -::*\n".to_owned(), "bind 127.0.0.1\n".to_owned()),
            (
                "include /etc/redis-auth/auth.conf\n".to_owned(),
                format!("include {}\n", auth.display()),
            ),
        ] {
            assert!(conf.contains(&from), "the rendered redis.conf has {from:?}");
            conf = conf.replace(&from, &to);
        }
        let path = dir.join("redis.conf");
        std::fs::write(&path, conf + "daemonize no\nloglevel warning\n").unwrap();
        let log = std::fs::File::create(dir.join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .arg(&path)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let r = Self {
            port,
            dir,
            child,
            admin_password,
            sidecar_password,
            prefix: redis_config::store_prefix(&store),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = r.try_conn("default", &r.admin_password.clone()) {
            assert!(
                Instant::now() < deadline,
                "redis-server did not come up: {e}\n{}",
                std::fs::read_to_string(r.dir.join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    fn try_conn(&self, user: &str, password: &str) -> redis::RedisResult<redis::Connection> {
        let info = format!("redis://127.0.0.1:{}", self.port).parse::<redis::ConnectionInfo>()?;
        let settings = info
            .redis_settings()
            .clone()
            .set_username(user)
            .set_password(password);
        redis::Client::open(info.set_redis_settings(settings))?
            .get_connection_with_timeout(Duration::from_secs(1))
    }

    fn admin(&self) -> redis::Connection {
        self.try_conn("default", &self.admin_password).unwrap()
    }

    fn sidecar_conn(&self) -> redis::Connection {
        self.try_conn(SIDECAR_USER, &self.sidecar_password).unwrap()
    }

    /// One sidecar's store: the URL without credentials, the ACL user and
    /// password apart, as the webhook injects them.
    async fn store(&self, trust_guard: Duration) -> RedisStore {
        let store = RedisStore::connect(
            &format!("redis://127.0.0.1:{}", self.port),
            &self.prefix,
            RedisOptions {
                credentials: Credentials {
                    username: Some(SIDECAR_USER.into()),
                    password: Some(self.sidecar_password.clone()),
                },
                op_timeout: Duration::from_secs(1),
                trust_guard,
                ..RedisOptions::default()
            },
        )
        .unwrap();
        assert!(
            store.wait_up(Duration::from_secs(5)).await,
            "the sidecar user connects"
        );
        store
    }

    fn info(&self, section: &str, field: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg(section)
            .query(&mut self.admin())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in INFO {section}"))
    }
}

impl Drop for Rendered {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn denied(c: &mut redis::Connection, args: &[&str]) -> String {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query::<redis::Value>(c) {
        Ok(v) => panic!("{args:?} was allowed: {v:?}"),
        Err(e) => e.to_string().to_ascii_lowercase(),
    }
}

/// An app serving any path (the flood) and a counter at /counter whose PUT
/// takes a little while (so locks are held while the flood runs).
async fn counter_app(counter: Arc<Mutex<u64>>) -> App {
    App::start(move |req: Request<Incoming>| {
        let counter = counter.clone();
        async move {
            let (parts, b) = req.into_parts();
            let sent = b.collect().await.unwrap().to_bytes();
            if parts.uri.path() == "/counter" {
                if parts.method == http::Method::PUT {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let n: u64 = String::from_utf8_lossy(&sent).parse().unwrap_or(0);
                    *counter.lock().unwrap() = n;
                    return Response::builder()
                        .status(StatusCode::NO_CONTENT)
                        .body(body(""))
                        .unwrap();
                }
                let n = *counter.lock().unwrap();
                return Response::builder()
                    .header("content-type", "text/plain")
                    .body(body(n.to_string()))
                    .unwrap();
            }
            // A unique page: ~200 bytes of its own.
            Response::builder()
                .header("content-type", "text/plain")
                .body(body(format!("{}{}", parts.uri, "x".repeat(160))))
                .unwrap()
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_user_does_its_job_and_nothing_else() {
    let redis = Rendered::start("64mb");
    // Everything a sidecar does, through two of them: tags, a conditional
    // write (lock, invalidation), the client-side cache.
    let counter = Arc::new(Mutex::new(0));
    let app = counter_app(counter.clone()).await;
    let (s1, s2) = (
        redis.store(Duration::ZERO).await,
        redis.store(Duration::ZERO).await,
    );
    let one = Sidecar::start(
        app.addr,
        "mode: Trust\nmaxAge: 60s\n",
        Arc::new(s1.clone()) as Arc<dyn Store>,
    )
    .await;
    let two = Sidecar::start(
        app.addr,
        "mode: Trust\nmaxAge: 60s\n",
        Arc::new(s2.clone()) as Arc<dyn Store>,
    )
    .await;
    let first = get(one.addr, "/counter", &[]).await;
    assert!(
        first.header("cache-status").ends_with("; stored"),
        "{}",
        first.header("cache-status")
    );
    let tag = first.etag();
    let put = send(two.addr, "PUT", "/counter", &[("if-match", &tag)], "1").await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    let stale = send(one.addr, "PUT", "/counter", &[("if-match", &tag)], "2").await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    let now = get(one.addr, "/counter", &[]).await.etag();
    for _ in 0..3 {
        let hit = get(one.addr, "/counter", &[("if-none-match", &now)]).await;
        assert_eq!(hit.status, StatusCode::NOT_MODIFIED);
    }
    assert!(
        s1.metrics().cache_hits.get() + s2.metrics().cache_hits.get() > 0,
        "client tracking works for the ACL user"
    );
    let log: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query(&mut redis.admin())
        .unwrap();
    assert!(log.is_empty(), "the sidecar was denied something: {log:?}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut redis.admin())
        .unwrap();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k.starts_with("{shop/cache}:")),
        "{keys:?}"
    );

    // What the sidecar user may not do.
    let mut c = redis.sidecar_conn();
    for args in [
        &["FLUSHALL"][..],
        &["FLUSHDB"],
        &["CONFIG", "GET", "maxmemory"],
        &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"],
        &["DEBUG", "SLEEP", "0"],
        &["SHUTDOWN", "NOSAVE"],
        &["KEYS", "*"],
        &["ACL", "LIST"],
        &["SCRIPT", "FLUSH"],
        &["MONITOR"],
        &["SET", "{shop/other}:x", "1"],
        &["GET", "unprefixed"],
        &["EVAL", "return redis.call('FLUSHALL')", "0"],
        &[
            "EVAL",
            "return redis.call('SET', KEYS[1], 1)",
            "1",
            "{shop/other}:x",
        ],
        &["PUBLISH", "chan", "x"],
    ] {
        let e = denied(&mut c, args);
        // DEBUG is also off server-wide (enable-debug-command no).
        assert!(
            e.contains("noperm")
                || e.contains("can't run this command")
                || e.contains("no permissions to access")
                || e.contains("debug command not allowed"),
            "{args:?}: {e}"
        );
    }
    // The store keeps serving, keys intact: SHUTDOWN and FLUSHALL were refused.
    let keys_after: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut redis.admin())
        .unwrap();
    assert_eq!(keys_after.len(), keys.len());
    // The administrative user may not flush either; nobody gets in without
    // a password, nor with the other user's.
    assert!(denied(&mut redis.admin(), &["FLUSHALL"]).contains("noperm"));
    assert!(redis.try_conn("default", &redis.sidecar_password).is_err());
    assert!(redis.try_conn(SIDECAR_USER, &redis.admin_password).is_err());
    let mut anon = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port))
        .unwrap()
        .get_connection()
        .unwrap();
    assert!(denied(&mut anon, &["GET", "{shop/cache}:c"]).contains("noauth"));
    // And `ps` shows no password: the server read both from files.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", redis.child.id())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(!cmdline.contains(&redis.admin_password) && !cmdline.contains(&redis.sidecar_password));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_url_flood_evicts_tags_never_a_held_lock_nor_fails_a_write() {
    let redis = Rendered::start("3mb");
    let counter = Arc::new(Mutex::new(0u64));
    let app = counter_app(counter.clone()).await;
    let mut sidecars = Vec::new();
    for _ in 0..3 {
        // The guard covers the app's latency (production: the upstream
        // timeout): a GET that overlapped a write is not trusted.
        let store: Arc<dyn Store> = Arc::new(redis.store(Duration::from_secs(2)).await);
        sidecars.push(Sidecar::start(app.addr, "mode: Trust\nmaxAge: 60s\n", store).await);
    }
    let addrs: Vec<_> = sidecars.iter().map(|s| s.addr).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok_writes, stale, unavailable, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let flood_gets = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // The flood: unique URLs, round robin over the sidecars.
    for f in 0..6 {
        let (addrs, stop, n) = (addrs.clone(), stop.clone(), flood_gets.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let got = get(addrs[i % addrs.len()], &format!("/flood/{f}/{i}"), &[]).await;
                assert_eq!(got.status, StatusCode::OK, "a GET never fails");
                n.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    // Writers: read, increment, PUT with If-Match, through different sidecars.
    for w in 0..4 {
        let (addrs, stop) = (addrs.clone(), stop.clone());
        let (ok, st, un, ot) = (
            ok_writes.clone(),
            stale.clone(),
            unavailable.clone(),
            other.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let cur = get(addrs[i % addrs.len()], "/counter", &[]).await;
                let n: u64 = cur.text().parse().unwrap();
                let tag = cur.etag();
                let put = send(
                    addrs[(i + 1) % addrs.len()],
                    "PUT",
                    "/counter",
                    &[("if-match", &tag)],
                    &(n + 1).to_string(),
                )
                .await;
                match put.status {
                    StatusCode::NO_CONTENT => ok.fetch_add(1, Ordering::Relaxed),
                    StatusCode::PRECONDITION_FAILED => st.fetch_add(1, Ordering::Relaxed),
                    StatusCode::SERVICE_UNAVAILABLE => un.fetch_add(1, Ordering::Relaxed),
                    _ => ot.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
            }
        }));
    }
    // Run until Redis has evicted plenty (memory really was full), at least 10 s.
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let evicted = redis.info("stats", "evicted_keys");
        if started.elapsed() > Duration::from_secs(10) && evicted > 5_000 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {evicted} keys evicted"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let evicted = redis.info("stats", "evicted_keys");
    let (ok, st, un, ot) = (
        ok_writes.load(Ordering::Relaxed),
        stale.load(Ordering::Relaxed),
        unavailable.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    let final_value = *counter.lock().unwrap();
    eprintln!(
        "flood: {} unique GETs, {evicted} keys evicted (maxmemory 3mb, used {} bytes); writes: {ok} applied, {st} 412, {un} 503, {ot} other; counter {final_value}",
        flood_gets.load(Ordering::Relaxed),
        redis.info("memory", "used_memory"),
    );
    assert!(ok > 50, "writers made progress: {ok}");
    assert_eq!(un, 0, "no write answered 503");
    assert_eq!(ot, 0, "no write answered anything but 204 or 412");
    assert_eq!(
        final_value, ok,
        "no lost update: every applied increment counted"
    );
    // Redis refused nothing for memory or permissions (the client's CLIENT
    // SETINFO, unknown to Redis 7.0, is the only error reply).
    let errors: String = redis::cmd("INFO")
        .arg("errorstats")
        .query(&mut redis.admin())
        .unwrap();
    assert!(
        !errors.contains("errorstat_OOM") && !errors.contains("errorstat_NOPERM"),
        "{errors}"
    );
}
