//! Debian nginx, run in the foreground with a generated config whose pid,
//! logs and temp paths all live in a private directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::net::{free_addr, wait_listening};
use crate::proc::{Proc, Spec};
use crate::{HarnessError, Result, tools};

/// A running nginx.
#[derive(Debug)]
pub struct Nginx {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The process.
    pub proc: Proc,
}

/// What nginx should do.
pub enum Role<'a> {
    /// Serve `root` as static files (nginx's own ETag and Last-Modified from
    /// mtime and size), one process (`master_process off`).
    Static {
        /// Document root.
        root: &'a Path,
    },
    /// `proxy_pass` to `upstream` with a keep-alive upstream pool and
    /// `workers` worker processes (the benchmark's reference proxy).
    Proxy {
        /// The app.
        upstream: SocketAddr,
        /// Worker processes.
        workers: usize,
    },
}

impl Nginx {
    /// Start nginx named `name` in `dir/name`; it tags its responses with
    /// `X-Replica: name`.
    pub async fn start(dir: &Path, name: &str, role: Role<'_>) -> Result<Self> {
        let bin = tools::require("nginx")?;
        let home = dir.join(name);
        for sub in [
            "tmp/body",
            "tmp/proxy",
            "tmp/fastcgi",
            "tmp/uwsgi",
            "tmp/scgi",
            "logs",
        ] {
            std::fs::create_dir_all(home.join(sub))
                .map_err(|e| HarnessError::io(format!("mkdir {}", home.display()), e))?;
        }
        let addr = free_addr()?;
        let conf = config(&home, addr, name, &role);
        let conf_path = home.join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| HarnessError::io("write nginx.conf", e))?;
        let spec = Spec {
            name: format!("nginx {name}"),
            program: bin,
            args: vec![
                "-p".into(),
                path_str(&home),
                "-c".into(),
                path_str(&conf_path),
                "-e".into(),
                path_str(&home.join("logs/error.log")),
            ],
            env: vec![],
            log: home.join("stdout.log"),
        };
        let mut proc = Proc::start(spec)?;
        wait_listening(addr, &mut proc, Duration::from_secs(10)).await?;
        Ok(Nginx { addr, proc })
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn config(home: &Path, addr: SocketAddr, name: &str, role: &Role<'_>) -> String {
    let h = home.display();
    let (process, server, upstream_block) = match role {
        Role::Static { root } => (
            "master_process off;\nworker_processes 1;".to_owned(),
            format!(
                "root {root};\n location / {{ add_header X-Replica {name} always; \
                 add_header Cache-Control no-cache; }}",
                root = root.display()
            ),
            String::new(),
        ),
        Role::Proxy { upstream, workers } => (
            format!("master_process on;\nworker_processes {workers};"),
            "location / {\n proxy_pass http://app;\n proxy_http_version 1.1;\n \
             proxy_set_header Connection \"\";\n proxy_buffers 16 16k;\n proxy_buffer_size 16k;\n \
             proxy_max_temp_file_size 0;\n }"
                .to_owned(),
            format!("upstream app {{ server {upstream}; keepalive 64; }}"),
        ),
    };
    // Root runs worker processes as `nobody` by default, who cannot enter
    // our 0700 temp dirs.
    let user = if tools::running_as_root() {
        "user root;"
    } else {
        ""
    };
    format!(
        "daemon off;\n{process}\n{user}\npid {h}/nginx.pid;\nerror_log {h}/logs/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n access_log off;\n keepalive_requests 1000000;\n\
         client_body_temp_path {h}/tmp/body;\n proxy_temp_path {h}/tmp/proxy;\n\
         fastcgi_temp_path {h}/tmp/fastcgi;\n uwsgi_temp_path {h}/tmp/uwsgi;\n scgi_temp_path {h}/tmp/scgi;\n\
         types {{ text/html html; text/css css; application/javascript js; image/png png; application/json json; }}\n\
         default_type application/octet-stream;\n\
         {upstream_block}\n server {{\n listen {addr};\n {server}\n }}\n}}\n"
    )
}

/// A file's path under each replica's copy of a site.
pub fn replica_paths(roots: &[PathBuf], rel: &str) -> Vec<PathBuf> {
    roots
        .iter()
        .map(|r| r.join(rel.trim_start_matches('/')))
        .collect()
}
