//! Hop-by-hop header handling (RFC 9110 §7.6.1), and the headers a proxy
//! adds about itself and its client: `Via`, `X-Forwarded-For`,
//! `X-Forwarded-Proto`.

use std::net::IpAddr;

use http::header::{CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA};
use http::{HeaderMap, HeaderName, HeaderValue, Version};

/// `X-Forwarded-For`: the addresses a request came through, client first.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the original client used.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

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

/// Tell the app who asked: append `peer` to `X-Forwarded-For` (one field,
/// after whatever list earlier proxies built, as nginx's
/// `$proxy_add_x_forwarded_for` does) and set `X-Forwarded-Proto: http`
/// unless a proxy in front (where TLS ends) already said which scheme the
/// client used. What the client itself claimed is kept: only the app knows
/// how many hops in front of it to trust.
pub fn add_forwarded(headers: &mut HeaderMap, peer: Option<IpAddr>) {
    if let Some(peer) = peer {
        // An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d.
        let peer = peer.to_canonical().to_string();
        let mut list: Vec<u8> = Vec::new();
        for value in headers.get_all(&X_FORWARDED_FOR) {
            let value = value.as_bytes().trim_ascii();
            if !value.is_empty() {
                list.extend_from_slice(value);
                list.extend_from_slice(b", ");
            }
        }
        list.extend_from_slice(peer.as_bytes());
        if let Ok(value) = HeaderValue::from_bytes(&list) {
            headers.insert(X_FORWARDED_FOR.clone(), value);
        }
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
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
    fn forwarded_headers_append_the_peer() {
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, Some("10.0.0.7".parse().unwrap()));
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "10.0.0.7");
        assert_eq!(h.get(&X_FORWARDED_PROTO).unwrap(), "http");

        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.1"));
        h.append(
            &X_FORWARDED_FOR,
            HeaderValue::from_static(" 198.51.100.2, 192.0.2.3 "),
        );
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        add_forwarded(&mut h, Some("::ffff:10.0.0.7".parse().unwrap()));
        assert_eq!(
            h.get(&X_FORWARDED_FOR).unwrap(),
            "203.0.113.1, 198.51.100.2, 192.0.2.3, 10.0.0.7"
        );
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h.get(&X_FORWARDED_PROTO).unwrap(), "https");

        let mut h = HeaderMap::new();
        add_forwarded(&mut h, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "2001:db8::1");
        // No known peer (a request not from a socket): nothing invented.
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, None);
        assert!(h.get(&X_FORWARDED_FOR).is_none());
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
