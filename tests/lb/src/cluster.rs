//! A whole test bed: N replicas (nginx static copies or app processes), an
//! optional sametag sidecar in front of each, one Redis, and HAProxy in round
//! robin in front of everything, all on free loopback ports in one temp dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tempfile::TempDir;

use crate::client::Http;
use crate::haproxy::Haproxy;
use crate::link::Link;
use crate::net::{free_addr, wait_listening};
use crate::nginx::{self, Nginx, Role};
use crate::proc::{Proc, Spec};
use crate::redis::Redis;
use crate::sidecar::{Sidecar, SidecarOpts, own_bin};
use crate::{HarnessError, Result};

/// What the replicas are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// nginx serving the same static files, each copy with its own mtimes.
    Static,
    /// The dynamic JSON app (`sametag-lb-app`), documents shared on disk.
    App,
}

/// sametag's part of the bed.
#[derive(Clone, Debug, Default)]
pub struct SametagSpec {
    /// Share one real Redis (else each sidecar uses its embedded store).
    pub redis: bool,
    /// Policy YAML for every sidecar (`None`: Validate everywhere).
    pub policy: Option<String>,
    /// Each sidecar reaches Redis through its own [`Link`], so a test can
    /// cut one sidecar's store connection.
    pub links: bool,
    /// More sidecar flags (e.g. `--upstream-timeout 1s`).
    pub sidecar_args: Vec<String>,
}

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Replica kind.
    pub kind: Kind,
    /// How many replicas.
    pub replicas: usize,
    /// Sidecars in front of each replica, or none (the "before" picture).
    pub sametag: Option<SametagSpec>,
}

/// One app replica process.
#[derive(Debug)]
pub struct AppReplica {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The process.
    pub proc: Proc,
}

impl AppReplica {
    /// Start again after a kill, on the same port.
    pub async fn restart(&mut self) -> Result<()> {
        self.proc.restart()?;
        wait_listening(self.addr, &mut self.proc, Duration::from_secs(10)).await
    }
}

/// Static files every nginx copy serves: (path, size).
pub const STATIC_FILES: &[(&str, usize)] = &[
    ("index.html", 2 * 1024),
    ("app.css", 8 * 1024),
    ("app.js", 32 * 1024),
    ("logo.png", 24 * 1024),
];

/// Documents the app starts with.
pub const DOCS: &[&str] = &["a.json", "b.json", "c.json", "counter.json"];

/// A running test bed. Dropping it stops every process.
pub struct Cluster {
    /// Replica kind.
    pub kind: Kind,
    /// HAProxy, in front.
    pub lb: Haproxy,
    /// Sidecars (empty without sametag), index = replica.
    pub sidecars: Vec<Sidecar>,
    /// nginx replicas (kind Static).
    pub nginx: Vec<Nginx>,
    /// App replicas (kind App).
    pub apps: Vec<AppReplica>,
    /// The shared Redis, if any.
    pub redis: Option<Redis>,
    /// Each sidecar's relay to Redis (with `SametagSpec::links`), index = replica.
    pub links: Vec<Link>,
    /// Each nginx replica's document root.
    pub site_roots: Vec<PathBuf>,
    /// The app's shared document directory.
    pub data_dir: PathBuf,
    /// A client.
    pub http: Http,
    // Last: dropped after the processes that use it.
    dir: TempDir,
}

impl Cluster {
    /// Start everything and wait until the balancer answers.
    pub async fn start(spec: &ClusterSpec) -> Result<Self> {
        Self::launch(spec, false).await
    }

    /// The same, with HAProxy logging every request it forwards (read it
    /// with [`Haproxy::access_log`]).
    pub async fn start_logged(spec: &ClusterSpec) -> Result<Self> {
        Self::launch(spec, true).await
    }

    async fn launch(spec: &ClusterSpec, access_log: bool) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("sametag-lb-")
            .tempdir()
            .map_err(|e| HarnessError::io("create temp dir", e))?;
        let base = dir.path().to_path_buf();
        let data_dir = base.join("data");
        let mut site_roots = Vec::new();
        let mut nginx = Vec::new();
        let mut apps = Vec::new();
        let mut backends = Vec::new();
        match spec.kind {
            Kind::Static => {
                for i in 0..spec.replicas {
                    let root = base.join(format!("site{i}"));
                    write_site(&root, i)?;
                    let n = Nginx::start(&base, &format!("nginx{i}"), Role::Static { root: &root })
                        .await?;
                    backends.push(n.addr);
                    site_roots.push(root);
                    nginx.push(n);
                }
            }
            Kind::App => {
                write_docs(&data_dir)?;
                for i in 0..spec.replicas {
                    let a = start_app(&base, &format!("app{i}"), &data_dir).await?;
                    backends.push(a.addr);
                    apps.push(a);
                }
            }
        }
        let mut redis = None;
        let mut links = Vec::new();
        let mut sidecars = Vec::new();
        let mut lb_targets = backends.clone();
        if let Some(st) = &spec.sametag {
            if st.redis {
                redis = Some(Redis::start(&base).await?);
            }
            let policy = match &st.policy {
                Some(yaml) => {
                    let p = base.join("policy.yaml");
                    std::fs::write(&p, yaml).map_err(|e| HarnessError::io("write policy", e))?;
                    Some(p)
                }
                None => None,
            };
            let mut opts = SidecarOpts {
                redis: redis.as_ref().map(Redis::url),
                policy,
                prefix: "lbtest:".into(),
                extra_args: st.sidecar_args.clone(),
            };
            lb_targets.clear();
            for (i, b) in backends.iter().enumerate() {
                if let (true, Some(r)) = (st.links, &redis) {
                    let link = Link::start(r.addr).await?;
                    opts.redis = Some(link.url());
                    links.push(link);
                }
                let s = Sidecar::start(&base, &format!("s{i}"), *b, &opts).await?;
                lb_targets.push(s.listen);
                sidecars.push(s);
            }
        }
        let lb = Haproxy::start_with(&base, &lb_targets, access_log).await?;
        let c = Cluster {
            kind: spec.kind,
            lb,
            sidecars,
            nginx,
            apps,
            redis,
            links,
            site_roots,
            data_dir,
            http: Http::default(),
            dir,
        };
        let answered = c.wait_all_serving(Duration::from_secs(15)).await?;
        if access_log {
            c.wait_logged(answered).await;
        }
        Ok(c)
    }

    /// HAProxy writes a request's log line after the response has left, so
    /// a client can be answered before the line exists: wait (briefly) for
    /// the readiness GETs' lines, so a test counting from "now" never finds
    /// them among its own requests.
    async fn wait_logged(&self, n: usize) {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if self.lb.access_log().is_ok_and(|log| log.len() >= n) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The temp dir holding configs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://lb/path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.lb.url(), path)
    }

    /// Paths a browser would load from this bed.
    pub fn resources(&self) -> Vec<String> {
        match self.kind {
            Kind::Static => STATIC_FILES.iter().map(|(p, _)| format!("/{p}")).collect(),
            Kind::App => DOCS.iter().map(|d| format!("/docs/{d}")).collect(),
        }
    }

    /// Wait until every replica has answered a GET / through the balancer;
    /// how many GETs the balancer answered (each is a line of its log).
    pub async fn wait_all_serving(&self, timeout: Duration) -> Result<usize> {
        let start = std::time::Instant::now();
        let mut seen = std::collections::BTreeSet::new();
        let want = self.nginx.len().max(self.apps.len());
        let mut answered = 0;
        while start.elapsed() < timeout {
            let got = self.http.get(&self.url("/"), &[]).await;
            answered += usize::from(got.is_ok());
            if let Ok(r) = got
                && r.status.is_success()
                && let Some(s) = r.header("x-lb-server")
            {
                seen.insert(s.to_owned());
                if seen.len() >= want {
                    return Ok(answered);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(HarnessError::NotReady {
            name: format!("balancer (saw {seen:?})"),
            waited: start.elapsed(),
            log: self.lb.proc.log_tail(20),
        })
    }

    /// Sum over every sidecar of `sametag_requests_total` samples whose
    /// labels contain each of `labels` (e.g. `outcome="not_modified"`).
    pub async fn sidecar_requests(&self, labels: &[&str]) -> Result<f64> {
        let mut n = 0.0;
        for s in &self.sidecars {
            let text = s.metrics(&self.http).await?;
            let lines: String = text
                .lines()
                .filter(|l| labels.iter().all(|w| l.contains(w)))
                .map(|l| format!("{l}\n"))
                .collect();
            n += crate::sidecar::metric_sum(&lines, |name| name == "sametag_requests_total");
        }
        Ok(n)
    }

    /// Change a static file on every nginx copy; each copy gets its own mtime
    /// (as when files are deployed to each host separately).
    pub fn change_static(&self, rel: &str, content: &[u8]) -> Result<()> {
        let now = SystemTime::now();
        for (i, p) in nginx::replica_paths(&self.site_roots, rel)
            .iter()
            .enumerate()
        {
            write_with_mtime(p, content, now + Duration::from_secs(7 * i as u64 + 1))?;
        }
        Ok(())
    }
}

async fn start_app(base: &Path, name: &str, data_dir: &Path) -> Result<AppReplica> {
    let addr = free_addr()?;
    let spec = Spec {
        name: name.to_owned(),
        program: own_bin("sametag-lb-app")?,
        args: vec![
            "--listen".into(),
            addr.to_string(),
            "--replica".into(),
            name.to_owned(),
            "--data-dir".into(),
            data_dir.to_string_lossy().into_owned(),
        ],
        env: vec![],
        log: base.join(format!("{name}.log")),
    };
    let mut proc = Proc::start(spec)?;
    wait_listening(addr, &mut proc, Duration::from_secs(10)).await?;
    Ok(AppReplica { addr, proc })
}

/// Deterministic content of a static file (same bytes on every copy).
pub fn static_content(name: &str, size: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(name.bytes().map(u64::from).sum());
    (0..size).map(|_| rng.alphanumeric() as u8).collect()
}

fn write_site(root: &Path, replica: usize) -> Result<()> {
    std::fs::create_dir_all(root).map_err(|e| HarnessError::io("mkdir site", e))?;
    // Copies deployed at different times: nginx's mtime-size ETags disagree.
    let mtime = SystemTime::now() - Duration::from_secs(3600 * (replica as u64 + 1));
    for (name, size) in STATIC_FILES {
        write_with_mtime(&root.join(name), &static_content(name, *size), mtime)?;
    }
    Ok(())
}

fn write_docs(dir: &Path) -> Result<()> {
    let docs = dir.join("docs");
    std::fs::create_dir_all(&docs).map_err(|e| HarnessError::io("mkdir docs", e))?;
    for d in DOCS {
        let body = if *d == "counter.json" {
            serde_json::json!({ "counter": 0, "writer": "init" })
        } else {
            serde_json::json!({ "name": d, "items": (0..40).collect::<Vec<u32>>(), "version": 1 })
        };
        std::fs::write(docs.join(d), body.to_string())
            .map_err(|e| HarnessError::io("write doc", e))?;
    }
    Ok(())
}

fn write_with_mtime(p: &Path, content: &[u8], mtime: SystemTime) -> Result<()> {
    std::fs::write(p, content)
        .map_err(|e| HarnessError::io(format!("write {}", p.display()), e))?;
    let f = std::fs::File::options()
        .write(true)
        .open(p)
        .map_err(|e| HarnessError::io("open for mtime", e))?;
    f.set_modified(mtime)
        .map_err(|e| HarnessError::io("set mtime", e))
}
