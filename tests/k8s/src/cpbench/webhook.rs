//! A client for the operator's webhook endpoint, as the apiserver talks to
//! it: TLS trusting the operator's CA (the webhook configuration's
//! caBundle), ALPN `h2`, one long-lived connection multiplexing every review.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

use crate::{Error, Result};

/// An HTTP/2 connection to `https://127.0.0.1:<port>/mutate`.
#[derive(Clone)]
pub struct WebhookClient {
    send: SendRequest<Full<Bytes>>,
    uri: String,
}

fn other(what: &str) -> impl FnOnce(String) -> Error + '_ {
    move |e| Error::Other(format!("{what}: {e}"))
}

impl WebhookClient {
    /// Connect to the webhook on 127.0.0.1:`port`, trusting `ca_pem`.
    pub async fn connect(port: u16, ca_pem: &[u8]) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| other("parse the caBundle")(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| other("trust the caBundle")(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| other("TLS versions")(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|source| Error::Io {
                what: format!("connect to the webhook on 127.0.0.1:{port}"),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let name =
            ServerName::try_from("127.0.0.1").map_err(|e| other("server name")(e.to_string()))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|source| Error::Io {
                what: "TLS handshake with the webhook (is the caBundle its CA?)".into(),
                source,
            })?;
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| other("HTTP/2 handshake with the webhook")(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            send,
            uri: format!("https://127.0.0.1:{port}/mutate"),
        })
    }

    /// POST one AdmissionReview; the response's `response` object.
    pub async fn review(&self, body: Bytes) -> Result<Value> {
        let mut send = self.send.clone();
        send.ready()
            .await
            .map_err(|e| other("webhook connection")(e.to_string()))?;
        let req = http::Request::post(&self.uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(body))
            .map_err(|e| other("build the request")(e.to_string()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| other("POST /mutate")(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| other("read the review")(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(Error::Other(format!(
                "POST /mutate: {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| other("parse the AdmissionReview response")(e.to_string()))?;
        Ok(v["response"].clone())
    }
}

/// The AdmissionReview the apiserver sends for creating `pod` in `namespace`.
pub fn admission_review(uid: &str, namespace: &str, pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// Whether a review `response` injected the sidecar: allowed, a non-empty
/// JSONPatch, no warning (the operator warns whenever it does not inject), same uid.
pub fn check_injected(response: &Value, uid: &str) -> Result<()> {
    let ok = response["uid"] == uid
        && response["allowed"] == true
        && response["patchType"] == "JSONPatch"
        // base64 as Go writes it, or the byte array kube-rs writes (Go reads both).
        && (response["patch"].as_str().is_some_and(|p| !p.is_empty())
            || response["patch"].as_array().is_some_and(|p| !p.is_empty()))
        && response["warnings"].as_array().is_none_or(|w| w.is_empty());
    if ok {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "the webhook did not inject: {:.300}",
            response.to_string()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_allowed_patch_without_warnings_counts_as_injected() {
        let good = json!({"uid": "u", "allowed": true, "patchType": "JSONPatch", "patch": "W10="});
        check_injected(&good, "u").expect("injected");
        let bytes =
            json!({"uid": "u", "allowed": true, "patchType": "JSONPatch", "patch": [91, 93]});
        check_injected(&bytes, "u").expect("injected, patch as bytes");
        assert!(check_injected(&good, "other").is_err());
        let mut warned = good.clone();
        warned["warnings"] = json!(["sametag: sidecar not injected: no store"]);
        assert!(check_injected(&warned, "u").is_err());
        assert!(check_injected(&json!({"uid": "u", "allowed": true}), "u").is_err());
    }
}
