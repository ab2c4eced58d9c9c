//! The seed scenario: a browser loads some resources through the balancer,
//! keeps each one's validators, and revalidates them again and again
//! (If-None-Match and If-Modified-Since, as browsers send both). Without
//! shared tags a revalidation is a 304 only when it lands on the replica that
//! minted the tag.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::Result;
use crate::client::{Http, Reply};

/// A browser cache entry.
#[derive(Clone, Debug, Default)]
pub struct Cached {
    /// ETag as received.
    pub etag: Option<String>,
    /// Last-Modified as received.
    pub last_modified: Option<String>,
    /// Body length of the cached representation.
    pub len: u64,
}

/// What a run of revalidations saw.
#[derive(Clone, Debug, Default)]
pub struct RevalStats {
    /// Revalidation requests sent.
    pub requests: u64,
    /// 304 answers.
    pub not_modified: u64,
    /// 200 answers.
    pub full: u64,
    /// Anything else (including transport errors).
    pub failed: u64,
    /// Approximate bytes received (status line, headers, body).
    pub wire_bytes: u64,
    /// Body bytes received.
    pub body_bytes: u64,
    /// 304s whose ETag or Last-Modified differed from the cached ones.
    pub validator_mismatch: u64,
    /// Balancer servers (X-LB-Server) that answered.
    pub servers: BTreeSet<String>,
    /// Distinct ETags seen per resource.
    pub etags: BTreeMap<String, BTreeSet<String>>,
    /// Distinct Last-Modified values seen per resource.
    pub last_modifieds: BTreeMap<String, BTreeSet<String>>,
}

impl RevalStats {
    /// Share of revalidations answered 304.
    pub fn hit_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.not_modified as f64 / self.requests as f64
        }
    }

    /// The most distinct ETags any one resource had.
    pub fn max_tags_per_resource(&self) -> usize {
        self.etags.values().map(BTreeSet::len).max().unwrap_or(0)
    }

    /// The most distinct Last-Modified values any one resource had.
    pub fn max_dates_per_resource(&self) -> usize {
        self.last_modifieds
            .values()
            .map(BTreeSet::len)
            .max()
            .unwrap_or(0)
    }
}

/// A browser: one cache, one keep-alive client.
pub struct Browser {
    http: Http,
    base: String,
    /// Cached validators by path.
    pub cache: HashMap<String, Cached>,
}

impl Browser {
    /// A browser talking to `base` (`http://host:port`).
    pub fn new(http: Http, base: String) -> Self {
        Browser {
            http,
            base,
            cache: HashMap::new(),
        }
    }

    /// Unconditional GETs of `paths`; fills the cache. Returns body bytes.
    pub async fn first_load(&mut self, paths: &[String]) -> Result<u64> {
        let mut bytes = 0;
        for p in paths {
            let r = self.http.get(&format!("{}{p}", self.base), &[]).await?;
            bytes += r.body.len() as u64;
            self.store(p, &r);
        }
        Ok(bytes)
    }

    fn store(&mut self, path: &str, r: &Reply) {
        self.cache.insert(
            path.to_owned(),
            Cached {
                etag: r.header("etag").map(str::to_owned),
                last_modified: r.header("last-modified").map(str::to_owned),
                len: r.body.len() as u64,
            },
        );
    }

    /// Revalidate one path once; updates `stats` and, on 200, the cache.
    pub async fn revalidate(&mut self, path: &str, stats: &mut RevalStats) -> Option<Reply> {
        let cached = self.cache.get(path).cloned().unwrap_or_default();
        let mut h: Vec<(&str, &str)> = Vec::new();
        if let Some(e) = &cached.etag {
            h.push(("if-none-match", e));
        }
        if let Some(d) = &cached.last_modified {
            h.push(("if-modified-since", d));
        }
        stats.requests += 1;
        let r = match self.http.get(&format!("{}{path}", self.base), &h).await {
            Ok(r) => r,
            Err(_) => {
                stats.failed += 1;
                return None;
            }
        };
        stats.wire_bytes += r.wire_bytes();
        stats.body_bytes += r.body.len() as u64;
        if let Some(s) = r.header("x-lb-server") {
            stats.servers.insert(s.to_owned());
        }
        if let Some(e) = r.header("etag") {
            stats
                .etags
                .entry(path.to_owned())
                .or_default()
                .insert(e.to_owned());
        }
        if let Some(d) = r.header("last-modified") {
            stats
                .last_modifieds
                .entry(path.to_owned())
                .or_default()
                .insert(d.to_owned());
        }
        match r.status.as_u16() {
            304 => {
                stats.not_modified += 1;
                let same_tag = r
                    .header("etag")
                    .is_none_or(|e| Some(e) == cached.etag.as_deref());
                let same_date = r
                    .header("last-modified")
                    .is_none_or(|d| Some(d) == cached.last_modified.as_deref());
                if !same_tag || !same_date {
                    stats.validator_mismatch += 1;
                }
            }
            200 => {
                stats.full += 1;
                self.store(path, &r);
            }
            _ => stats.failed += 1,
        }
        Some(r)
    }

    /// `rounds` passes over `paths`, revalidating each, in a shuffled order
    /// per pass (seeded, so runs repeat). A fixed order would let round
    /// robin land every revalidation of a path on the same (or always on
    /// another) replica; with many real clients interleaved, which replica
    /// a client meets is effectively random.
    pub async fn revalidate_all(&mut self, paths: &[String], rounds: usize) -> RevalStats {
        let mut stats = RevalStats::default();
        let mut rng = fastrand::Rng::with_seed(0x05a3_e7a9);
        let mut order: Vec<&String> = paths.iter().collect();
        for _ in 0..rounds {
            rng.shuffle(&mut order);
            for p in &order {
                self.revalidate(p, &mut stats).await;
            }
        }
        stats
    }
}
