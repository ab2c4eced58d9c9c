//! The web page the browser test loads: an HTML document with a stylesheet,
//! a script and five images (`tests/lb/site/`). The app serves it under
//! `/site/` with its own per-replica ETags and `Cache-Control: no-cache`, so
//! a browser revalidates every part of it on every load.

/// One file of the page.
#[derive(Clone, Copy, Debug)]
pub struct Asset {
    /// Request path (`/site/...`).
    pub path: &'static str,
    /// Content-Type.
    pub content_type: &'static str,
    /// The bytes.
    pub body: &'static [u8],
}

/// The page itself; its subresources are relative to it.
pub const PAGE: &str = "/site/index.html";

/// What the page's script writes into `#status` once the stylesheet applied
/// and every image decoded (the DOM a browser dumps shows it).
pub const RENDERED: &str = "script ran; stylesheet applied; 5/5 images loaded";

/// Every file of the page: each load requests each of them once.
pub const ASSETS: &[Asset] = &[
    asset(
        PAGE,
        "text/html; charset=utf-8",
        include_bytes!("../site/index.html"),
    ),
    asset(
        "/site/style.css",
        "text/css",
        include_bytes!("../site/style.css"),
    ),
    asset(
        "/site/app.js",
        "text/javascript",
        include_bytes!("../site/app.js"),
    ),
    svg("/site/img/1.svg", include_bytes!("../site/img/1.svg")),
    svg("/site/img/2.svg", include_bytes!("../site/img/2.svg")),
    svg("/site/img/3.svg", include_bytes!("../site/img/3.svg")),
    svg("/site/img/4.svg", include_bytes!("../site/img/4.svg")),
    svg("/site/img/5.svg", include_bytes!("../site/img/5.svg")),
];

const fn asset(path: &'static str, content_type: &'static str, body: &'static [u8]) -> Asset {
    Asset {
        path,
        content_type,
        body,
    }
}

const fn svg(path: &'static str, body: &'static [u8]) -> Asset {
    asset(path, "image/svg+xml", body)
}

/// The asset at `path`, if the page has one.
pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_in_the_page_is_an_asset_and_back() {
        let html = std::str::from_utf8(find(PAGE).map_or(&[][..], |a| a.body)).unwrap_or("");
        let referenced: Vec<String> = html
            .split(['"', '\''])
            .filter(|s| s.ends_with(".css") || s.ends_with(".js") || s.ends_with(".svg"))
            .map(|s| format!("/site/{s}"))
            .collect();
        for r in &referenced {
            assert!(find(r).is_some(), "{r} is referenced but not served");
        }
        assert_eq!(referenced.len() + 1, ASSETS.len(), "{referenced:?}");
        let images = html.matches("<img ").count();
        assert!(RENDERED.contains(&format!("{images}/{images} images")));
    }
}
