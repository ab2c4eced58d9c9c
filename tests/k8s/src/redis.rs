//! Real `redis-server`s (Debian's) for external ETagStores: on a free
//! loopback port the operator process reaches, with ACL users and, if
//! asked, TLS only, under a private CA made here with rcgen. Killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result, free_port};

/// A running redis-server.
pub struct TestRedis {
    /// Its (TLS or plain) port on 127.0.0.1.
    pub port: u16,
    /// PEM of the CA that signed its certificate (TLS only).
    pub ca_pem: Option<String>,
    dir: tempfile::TempDir,
    child: Child,
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        what: what.into(),
        source,
    }
}

fn tls_err(e: rcgen::Error) -> Error {
    Error::Other(format!("rcgen: {e}"))
}

/// A CA and a certificate for 127.0.0.1 and localhost it signed:
/// (CA PEM, certificate PEM, key PEM).
fn certs() -> Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().map_err(tls_err)?;
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sametag e2e Redis CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).map_err(tls_err)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().map_err(tls_err)?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).map_err(tls_err)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.signed_by(&key, &issuer).map_err(tls_err)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}

impl TestRedis {
    /// Start a server with these extra config lines (ACL users...); `tls`:
    /// TLS only, its certificate signed by [`TestRedis::ca_pem`].
    pub fn start(extra: &[String], tls: bool) -> Result<Self> {
        let dir = tempfile::tempdir().map_err(io("redis temp dir"))?;
        let port = free_port()?;
        let mut conf = vec![
            "bind 127.0.0.1".to_owned(),
            format!("dir {}", dir.path().display()),
            "save \"\"".into(),
            "appendonly no".into(),
            "daemonize no".into(),
            "loglevel warning".into(),
            format!("logfile {}", dir.path().join("redis.log").display()),
        ];
        let mut ca_pem = None;
        if tls {
            let (ca, cert, key) = certs()?;
            let file = |name: &str, text: &str| -> Result<PathBuf> {
                let p = dir.path().join(name);
                std::fs::write(&p, text).map_err(io("write a TLS file"))?;
                Ok(p)
            };
            let (ca_file, cert_file, key_file) = (
                file("ca.crt", &ca)?,
                file("server.crt", &cert)?,
                file("server.key", &key)?,
            );
            conf.extend([
                "port 0".into(),
                format!("tls-port {port}"),
                format!("tls-cert-file {}", cert_file.display()),
                format!("tls-key-file {}", key_file.display()),
                format!("tls-ca-cert-file {}", ca_file.display()),
                "tls-auth-clients no".into(),
            ]);
            ca_pem = Some(ca);
        } else {
            conf.push(format!("port {port}"));
        }
        conf.extend(extra.iter().cloned());
        let path = dir.path().join("redis.conf");
        std::fs::write(&path, conf.join("\n") + "\n").map_err(io("write redis.conf"))?;
        let child = Command::new("redis-server")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("start redis-server (apt-get install redis-server)"))?;
        let mut r = Self {
            port,
            ca_pem,
            dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || r.child.try_wait().ok().flatten().is_some() {
                return Err(Error::Other(format!(
                    "redis-server did not come up: {}",
                    crate::tail(&r.dir.path().join("redis.log"), 5)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(r)
    }

    /// `redis://127.0.0.1:<port>/0` (or `rediss://...`), no credentials.
    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
