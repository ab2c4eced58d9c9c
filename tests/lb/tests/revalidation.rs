//! The seed problem end to end: revalidation through a round-robin balancer,
//! without sametag (≈ 1/3 304s) and with it (every revalidation a 304 with the
//! same validators, whichever replica answers; a change gives a 200 at once).

mod support;

use bytes::Bytes;
use sametag_lb_e2e::cluster::{Kind, STATIC_FILES};
use sametag_lb_e2e::scenario::Browser;
use support::{REPLICAS, bare, with_sametag};

const ROUNDS: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_nginx_without_sametag_revalidation_mostly_misses() {
    let c = bare(Kind::Static).await;
    let paths = c.resources();
    let mut b = Browser::new(c.http.clone(), c.lb.url());
    b.first_load(&paths).await.expect("first load");
    let s = b.revalidate_all(&paths, ROUNDS).await;
    println!("without sametag (nginx): {s:?} rate {:.3}", s.hit_rate());
    assert_eq!(s.failed, 0, "{s:?}");
    assert_eq!(
        s.servers.len(),
        REPLICAS,
        "balancer must spread requests: {s:?}"
    );
    assert_eq!(
        s.max_tags_per_resource(),
        REPLICAS,
        "nginx copies disagree on ETags"
    );
    assert!(
        s.hit_rate() < 0.6 && s.hit_rate() > 0.1,
        "304 rate {:.3} should be ≈1/3",
        s.hit_rate()
    );
    assert!(s.body_bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_without_sametag_revalidation_mostly_misses() {
    let c = bare(Kind::App).await;
    let paths = c.resources();
    let mut b = Browser::new(c.http.clone(), c.lb.url());
    b.first_load(&paths).await.expect("first load");
    let s = b.revalidate_all(&paths, ROUNDS).await;
    println!("without sametag (app): {s:?} rate {:.3}", s.hit_rate());
    assert_eq!(s.failed, 0, "{s:?}");
    assert_eq!(s.servers.len(), REPLICAS);
    assert!(
        s.hit_rate() < 0.6 && s.hit_rate() > 0.1,
        "304 rate {:.3} should be ≈1/3",
        s.hit_rate()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_nginx_with_sametag_every_revalidation_is_304() {
    let bare_c = bare(Kind::Static).await;
    let paths = bare_c.resources();
    let mut b0 = Browser::new(bare_c.http.clone(), bare_c.lb.url());
    b0.first_load(&paths).await.expect("first load");
    let before = b0.revalidate_all(&paths, ROUNDS).await;
    drop(bare_c);

    let c = with_sametag(Kind::Static, None).await;
    let mut b = Browser::new(c.http.clone(), c.lb.url());
    b.first_load(&paths).await.expect("first load");
    let s = b.revalidate_all(&paths, ROUNDS).await;
    println!("with sametag (nginx): {s:?}");
    assert_eq!(s.failed, 0, "{s:?}");
    assert_eq!(s.servers.len(), REPLICAS, "all replicas answered: {s:?}");
    assert_eq!(
        s.not_modified, s.requests,
        "every revalidation must be a 304: {s:?}"
    );
    assert_eq!(
        s.validator_mismatch, 0,
        "same ETag and Last-Modified on every replica"
    );
    assert_eq!(s.max_tags_per_resource(), 1, "{s:?}");
    assert_eq!(s.max_dates_per_resource(), 1, "{s:?}");
    assert_eq!(s.body_bytes, 0);
    println!(
        "bytes: without {} (304 rate {:.3}), with {} (304 rate {:.3})",
        before.wire_bytes,
        before.hit_rate(),
        s.wire_bytes,
        s.hit_rate()
    );
    assert!(
        s.wire_bytes * 4 < before.wire_bytes,
        "bytes sent must drop: {} vs {}",
        s.wire_bytes,
        before.wire_bytes
    );

    // Deploy a new app.css on all three copies (each with its own mtime):
    // the next revalidation with the old tag is a 200 with a new tag, on
    // whichever replica, and afterwards everyone agrees on the new tag.
    let old = b.cache["/app.css"].clone();
    let new_body = b"body { color: rebeccapurple }\n".repeat(100);
    c.change_static("app.css", &new_body).expect("change file");
    let mut s2 = Default::default();
    let r = b
        .revalidate("/app.css", &mut s2)
        .await
        .expect("revalidate after change");
    assert_eq!(r.status, 200, "changed file must not get a 304");
    assert_eq!(r.body, Bytes::from(new_body.clone()));
    let new_tag = r.header("etag").expect("etag").to_owned();
    assert_ne!(Some(new_tag.as_str()), old.etag.as_deref());
    let after = b.revalidate_all(&["/app.css".to_owned()], 12).await;
    assert_eq!(after.not_modified, after.requests, "{after:?}");
    assert_eq!(after.servers.len(), REPLICAS);
    assert_eq!(after.etags["/app.css"].len(), 1);
    assert!(after.etags["/app.css"].contains(&new_tag));

    // The original sizes are still served unchanged elsewhere.
    let js = c.http.get(&c.url("/app.js"), &[]).await.expect("get");
    assert_eq!(js.body.len(), STATIC_FILES[2].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_with_sametag_every_revalidation_is_304_and_writes_show_at_once() {
    let c = with_sametag(Kind::App, None).await;
    let paths = c.resources();
    let mut b = Browser::new(c.http.clone(), c.lb.url());
    b.first_load(&paths).await.expect("first load");
    let s = b.revalidate_all(&paths, ROUNDS).await;
    println!("with sametag (app): {s:?}");
    assert_eq!(s.failed, 0, "{s:?}");
    assert_eq!(s.servers.len(), REPLICAS);
    assert_eq!(s.not_modified, s.requests, "{s:?}");
    assert_eq!(s.validator_mismatch, 0);
    assert_eq!(s.max_tags_per_resource(), 1);

    // Change the document through the balancer, then revalidate right away.
    for i in 0..10 {
        let old = b.cache["/docs/a.json"].clone();
        let body = Bytes::from(format!("{{\"name\":\"a\",\"version\":{}}}", i + 2));
        let etag = old.etag.clone().expect("etag");
        let w = c
            .http
            .put(
                &c.url("/docs/a.json"),
                &[("if-match", &etag), ("content-type", "application/json")],
                body.clone(),
            )
            .await
            .expect("put");
        assert!(w.status.is_success(), "write {i}: {}", w.status);
        let mut st = Default::default();
        let r = b
            .revalidate("/docs/a.json", &mut st)
            .await
            .expect("revalidate");
        assert_eq!(
            r.status, 200,
            "round {i}: a changed document must not get a 304"
        );
        assert_eq!(r.body, body);
        assert_ne!(r.header("etag"), Some(etag.as_str()));
        let again = b.revalidate_all(&["/docs/a.json".to_owned()], 6).await;
        assert_eq!(again.not_modified, again.requests, "round {i}: {again:?}");
    }
}
