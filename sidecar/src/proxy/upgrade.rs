//! Protocol upgrades (WebSocket and friends): handed through untouched.
//!
//! The sidecar opens a dedicated connection to the app, forwards the request
//! with its `Connection: upgrade` / `Upgrade` intact, and when the app answers
//! `101` it joins the two upgraded connections and copies bytes both ways
//! until either side closes. Nothing is tagged or evaluated.

use http::header::{CONNECTION, UPGRADE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::{Body, boxed, empty};
use super::error::ProxyError;
use super::forward::{Rewrite, Upstream};
use super::hop::add_via;

/// Forward an upgrade request and, on `101`, splice the connections.
pub async fn pass_through(
    upstream: &Upstream,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (parts, body) = req.into_parts();
    let connection = parts.headers.get(CONNECTION).cloned();
    let protocol = parts.headers.get(UPGRADE).cloned();
    let mut out = upstream.request(&parts, boxed(body), Rewrite::AS_IS)?;
    // The generic hop-by-hop pass removed these; an upgrade needs them.
    if let (Some(connection), Some(protocol)) = (connection, protocol) {
        out.headers_mut().insert(CONNECTION, connection);
        out.headers_mut().insert(UPGRADE, protocol);
    }

    let timeout = upstream.timeout();
    let connect = TcpStream::connect(upstream.authority().as_str());
    let stream = match tokio::time::timeout(timeout, connect).await {
        Err(_) => return Err(ProxyError::UpstreamTimeout(timeout)),
        Ok(Err(e)) => return Err(ProxyError::UpstreamConnect(e.into())),
        Ok(Ok(stream)) => stream,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ProxyError::UpstreamProtocol(e.into()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgraded upstream connection ended");
        }
    });
    let mut response = match tokio::time::timeout(timeout, sender.send_request(out)).await {
        Err(_) => return Err(ProxyError::UpstreamTimeout(timeout)),
        Ok(Err(e)) => return Err(ProxyError::UpstreamProtocol(e.into())),
        Ok(Ok(response)) => response,
    };

    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = response.into_parts();
        super::hop::strip_hop_by_hop(&mut parts.headers);
        add_via(&mut parts.headers, http::Version::HTTP_11);
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
    add_via(&mut parts.headers, http::Version::HTTP_11);
    Ok(Response::from_parts(parts, empty()))
}
