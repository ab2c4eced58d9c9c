//! Hop-by-hop header handling (RFC 9110 §7.6.1) and the `Via` header.

use http::header::{CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA};
use http::{HeaderMap, HeaderName, HeaderValue, Version};

/// Remove every header meant for one connection only: those named by
/// `Connection`, `Connection` itself, `Keep-Alive`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade` and every `Proxy-*`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of these: look before allocating anything.
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .filter_map(|token| HeaderName::from_bytes(token.trim_ascii()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    let is_proxy = |name: &HeaderName| name.as_str().starts_with("proxy-");
    if headers.keys().any(is_proxy) {
        let proxy: Vec<HeaderName> = headers.keys().filter(|n| is_proxy(n)).cloned().collect();
        for name in proxy {
            headers.remove(name);
        }
    }
}

/// Whether the request asks to switch protocols (HTTP/1.1 `Upgrade`).
pub fn is_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(UPGRADE)
        && headers.get_all(CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

/// Append this hop to `Via` (RFC 9110 §7.6.3), as `<version> sametag`.
pub fn add_via(headers: &mut HeaderMap, version: Version) {
    let value = match version {
        Version::HTTP_2 => "2 sametag",
        Version::HTTP_10 => "1.0 sametag",
        _ => "1.1 sametag",
    };
    headers.append(VIA, HeaderValue::from_static(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_and_fixed_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("close, X-Private , upgrade"),
        );
        h.append(CONNECTION, HeaderValue::from_static("x-other"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert("proxy-authorization", HeaderValue::from_static("x"));
        h.insert("proxy-connection", HeaderValue::from_static("x"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn upgrade_detection() {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(is_upgrade(Version::HTTP_11, &h));
        assert!(!is_upgrade(Version::HTTP_2, &h));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!is_upgrade(Version::HTTP_11, &h));
    }
}
