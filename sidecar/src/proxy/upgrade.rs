//! Protocol upgrades: only a WebSocket handshake is tunnelled.
//!
//! A `GET` asking for `Upgrade: websocket` (RFC 6455 §4.1) goes to the app
//! on a dedicated connection, in origin form with the client's `Host`, built
//! like every other request the app sees (`Upstream::request`); when the app
//! answers `101` the two upgraded connections are joined and bytes copied
//! both ways until either side closes.
//!
//! Any other request carrying `Upgrade` is refused as RFC 9110 §7.8 allows a
//! server to: its upgrade fields are dropped and it takes the normal read or
//! write path. A `PUT` asking to switch protocols is still a write (judged,
//! locked and invalidating), and `Upgrade: h2c` never gets a `101` (h2c is
//! served with prior knowledge only), so nothing reaches the app unjudged.

use http::header::{CONNECTION, UPGRADE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::body::{Body, boxed, empty};
use super::error::ProxyError;
use super::forward::{Rewrite, Upstream};
use super::hop::{add_via, is_upgrade, strip_hop_by_hop};
use super::lane::{connect_upgradable, into_origin_form};
use super::respond::cache_status_static;

/// What a request's `Upgrade` field asks for, as far as the sidecar goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// No upgrade asked for.
    None,
    /// A WebSocket handshake: tunnelled.
    WebSocket,
    /// Anything else (another method, another protocol, h2c, HTTP/1.0):
    /// served as a plain request once [`refuse`] dropped the upgrade fields.
    Refused,
}

/// Classify the request in `parts`.
pub fn classify(parts: &Parts) -> Kind {
    if !parts.headers.contains_key(UPGRADE) {
        return Kind::None;
    }
    if parts.method == Method::GET
        && is_upgrade(parts.version, &parts.headers)
        && asks_only_websocket(&parts.headers)
    {
        Kind::WebSocket
    } else {
        Kind::Refused
    }
}

/// Whether `Upgrade` names exactly one protocol, `websocket` (a list such
/// as `h2c, websocket` would let the app pick something not judged here).
fn asks_only_websocket(headers: &HeaderMap) -> bool {
    let mut tokens = headers
        .get_all(UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty());
    tokens
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case(b"websocket"))
        && tokens.next().is_none()
}

/// Drop a refused upgrade's fields, so neither the app nor hyper switches
/// protocols (`Connection` and what it names go with the hop-by-hop pass).
pub fn refuse(headers: &mut HeaderMap) {
    headers.remove(UPGRADE);
    // h2c's settings travel beside the Upgrade field (RFC 7540 §3.2.1).
    headers.remove("http2-settings");
}

/// Forward a WebSocket handshake and, on `101`, splice the connections.
pub async fn tunnel(
    upstream: &Upstream,
    mut parts: Parts,
    body: Incoming,
) -> Result<Response<Body>, ProxyError> {
    let client_upgrade = parts
        .extensions
        .remove::<OnUpgrade>()
        .ok_or(ProxyError::BadRequest(
            "upgrade on a connection that cannot",
        ))?;
    let mut out = upstream.request(&parts, boxed(body), Rewrite::AS_IS)?;
    // The hop-by-hop pass removed these; this hop asks for them again, in
    // their one canonical spelling.
    out.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    out.headers_mut()
        .insert(UPGRADE, HeaderValue::from_static("websocket"));
    // A connection of its own: it never returns to a lane once switched.
    into_origin_form(&mut out);
    let timeout = upstream.timeout();
    let mut sender = connect_upgradable(upstream.authority(), timeout).await?;
    let mut response = match tokio::time::timeout(timeout, sender.send_request(out)).await {
        Err(_) => return Err(ProxyError::UpstreamTimeout(timeout)),
        Ok(Err(e)) => return Err(ProxyError::UpstreamProtocol(e.into())),
        Ok(Ok(response)) => response,
    };

    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The app declined: an untagged answer, so no per-replica validators.
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(http::header::ETAG);
        parts.headers.remove(http::header::LAST_MODIFIED);
        add_via(&mut parts.headers, Version::HTTP_11);
        cache_status_static(&mut parts.headers, "sametag; fwd=bypass; detail=upgrade");
        return Ok(Response::from_parts(parts, boxed(body)));
    }

    let upstream_upgrade = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        let (client, app) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut app = TokioIo::new(app);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut app).await {
            tracing::debug!(error = %e, "upgraded connection closed with an error");
        }
    });
    let (mut parts, _) = response.into_parts();
    add_via(&mut parts.headers, Version::HTTP_11);
    Ok(Response::from_parts(parts, empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, version: Version, fields: &[(&'static str, &'static str)]) -> Parts {
        let mut req = http::Request::builder().method(method).version(version);
        for (name, value) in fields {
            req = req.header(*name, *value);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_a_websocket_get_is_tunnelled() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert_eq!(
            classify(&parts("GET", Version::HTTP_11, &ws)),
            Kind::WebSocket
        );
        assert_eq!(
            classify(&parts("PUT", Version::HTTP_11, &ws)),
            Kind::Refused
        );
        assert_eq!(
            classify(&parts("POST", Version::HTTP_11, &ws)),
            Kind::Refused
        );
        assert_eq!(
            classify(&parts("GET", Version::HTTP_10, &ws)),
            Kind::Refused
        );
        let h2c = [
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ];
        assert_eq!(
            classify(&parts("GET", Version::HTTP_11, &h2c)),
            Kind::Refused
        );
        let both = [("connection", "upgrade"), ("upgrade", "h2c, websocket")];
        assert_eq!(
            classify(&parts("GET", Version::HTTP_11, &both)),
            Kind::Refused
        );
        let no_connection = [("upgrade", "websocket")];
        assert_eq!(
            classify(&parts("GET", Version::HTTP_11, &no_connection)),
            Kind::Refused
        );
        assert_eq!(classify(&parts("GET", Version::HTTP_11, &[])), Kind::None);
    }

    #[test]
    fn refusing_drops_the_upgrade_fields() {
        let mut p = parts(
            "GET",
            Version::HTTP_11,
            &[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAAQAAP__"),
                ("x-kept", "1"),
            ],
        );
        refuse(&mut p.headers);
        strip_hop_by_hop(&mut p.headers);
        assert_eq!(p.headers.len(), 1, "{:?}", p.headers);
        assert!(p.headers.contains_key("x-kept"));
    }
}
