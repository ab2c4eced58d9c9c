//! Prometheus metric families of the sidecar and the measurer that times
//! store operations.
//!
//! Names follow the Prometheus conventions: base unit last (`_seconds`,
//! `_bytes`), counters end in `_total` (the encoder appends it). On the
//! request path nothing is looked up by label or allocated: the per-request
//! handles (by method, outcome and status class) are resolved once, on
//! their first use, into fixed tables of [`OnceLock`]s.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::StatusCode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::{Purge, PurgeReport, Store, StoreHealth};

/// How a request ended, as a metric label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// A 200 carrying a canonical tag.
    tagged_200,
    /// A 304 decided by the sidecar after asking the app (Validate).
    not_modified,
    /// A 304 answered from the store without calling the app (Trust).
    trusted_not_modified,
    /// A 412.
    precondition_failed,
    /// A 428 (route requires preconditions on writes).
    precondition_required,
    /// A 206 cut by the sidecar from a tagged body (If-Range / Range).
    partial,
    /// Forwarded and returned untagged (Bypass, non-200, no-store, too large,
    /// `Vary: *`).
    passthrough,
    /// A write forwarded (and its resource invalidated on success).
    write,
    /// A protocol upgrade (WebSocket) handed through.
    upgrade,
    /// The app refused, reset or sent garbage: 502.
    upstream_error,
    /// The app was too slow: 504.
    upstream_timeout,
    /// A conditional write could not reach the store or its lock: 503.
    store_unavailable,
    /// The request itself was unusable: 400.
    bad_request,
    /// The client's request body did not arrive in time: 408.
    request_timeout,
}

/// How many [`Outcome`]s there are (the size of the handle tables).
const OUTCOMES: usize = Outcome::request_timeout as usize + 1;

/// The first digit of a response status, as the `status_class` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StatusClass {
    /// 1xx (a WebSocket's 101).
    Informational,
    /// 2xx.
    Success,
    /// 3xx (304s among them).
    Redirection,
    /// 4xx.
    ClientError,
    /// 5xx (and anything out of range).
    ServerError,
}

/// How many [`StatusClass`]es there are.
const STATUS_CLASSES: usize = 5;

impl StatusClass {
    /// The class of `status`.
    pub fn of(status: StatusCode) -> Self {
        match status.as_u16() {
            100..=199 => Self::Informational,
            200..=299 => Self::Success,
            300..=399 => Self::Redirection,
            400..=499 => Self::ClientError,
            _ => Self::ServerError,
        }
    }

    /// The label value: `1xx` .. `5xx`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Informational => "1xx",
            Self::Success => "2xx",
            Self::Redirection => "3xx",
            Self::ClientError => "4xx",
            Self::ServerError => "5xx",
        }
    }
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// The method label: a fixed set, so a client cannot grow the label space.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms)]
pub enum MethodLabel {
    GET,
    HEAD,
    POST,
    PUT,
    PATCH,
    DELETE,
    OPTIONS,
    OTHER,
}

impl From<&http::Method> for MethodLabel {
    fn from(m: &http::Method) -> Self {
        match *m {
            http::Method::GET => Self::GET,
            http::Method::HEAD => Self::HEAD,
            http::Method::POST => Self::POST,
            http::Method::PUT => Self::PUT,
            http::Method::PATCH => Self::PATCH,
            http::Method::DELETE => Self::DELETE,
            http::Method::OPTIONS => Self::OPTIONS,
            _ => Self::OTHER,
        }
    }
}

/// How many [`MethodLabel`]s there are.
const METHODS: usize = MethodLabel::OTHER as usize + 1;

/// The store operations timed on every request or write, resolved at start
/// (so their series exist from the first scrape); others are looked up.
const STORE_OPS: [&str; 6] = ["lookup", "record", "invalidate", "purge", "lock", "unlock"];

/// Handles resolved on first use, one per label combination.
type Table<M, const R: usize, const C: usize> = [[OnceLock<M>; C]; R];

fn table<M, const R: usize, const C: usize>() -> Table<M, R, C> {
    std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new()))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: MethodLabel,
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    outcome: Outcome,
    status_class: StatusClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    component: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PurgeLabels {
    kind: &'static str,
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PurgeRequestLabels {
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodingLabels {
    coding: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabels {
    listener: &'static str,
    reason: &'static str,
}

/// Every metric the sidecar exports, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// `requests` by `[outcome][method]`.
    request_handles: Table<Counter, OUTCOMES, METHODS>,
    request_duration: Family<DurationLabels, Histogram>,
    /// `request_duration` by `[outcome][status class]`.
    duration_handles: Table<Histogram, OUTCOMES, STATUS_CLASSES>,
    upstream_duration: Histogram,
    bytes_saved: Counter,
    store_latency: Family<OpLabels, Histogram>,
    /// `store_latency` of [`STORE_OPS`], in that order.
    store_op_handles: [Histogram; STORE_OPS.len()],
    store_errors: Family<OpLabels, Counter>,
    upstream_errors: Family<KindLabels, Counter>,
    store_up: Gauge,
    lock_leases_lost: Counter,
    tag_buffer_bytes: Gauge,
    tag_buffer_budget: Gauge,
    tag_buffer_refusals: Counter,
    connections_open: Family<ListenerLabels, Gauge>,
    connections_refused: Family<ListenerLabels, Counter>,
    connections_closed: Family<ClosedLabels, Counter>,
    purges: Family<PurgeLabels, Counter>,
    purge_requests: Family<PurgeRequestLabels, Counter>,
    purge_refusals: Counter,
    purge_marks: Gauge,
    purge_floor_raises: Counter,
    coalesced: Family<ResultLabels, Counter>,
    compressed: Family<CodingLabels, Counter>,
    compression_saved: Counter,
}

fn store_histogram() -> Histogram {
    // 100µs .. ~1.6s: an in-memory lookup and a slow Redis both fit.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

fn request_histogram() -> Histogram {
    // 500µs .. ~16s: a Trust 304 from the local cache and an app near the
    // default 30 s upstream timeout (beyond the last bucket: +Inf) both fit.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh families in a fresh registry.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "sametag_requests",
            "Requests handled, by method and outcome",
            requests.clone(),
        );
        let request_duration = Family::<DurationLabels, Histogram>::new_with_constructor(
            request_histogram as fn() -> _,
        );
        registry.register(
            "sametag_request_duration_seconds",
            "Time from a request's arrival until its response head was ready, by outcome and status class (a streamed body's transfer not included)",
            request_duration.clone(),
        );
        let upstream_duration = request_histogram();
        registry.register(
            "sametag_upstream_duration_seconds",
            "Time from sending a request to the app until its response head arrived (exchanges that failed are in sametag_upstream_errors_total)",
            upstream_duration.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                component: "sidecar",
            })
            .set(1);
        registry.register(
            "sametag_build_info",
            "Always 1; the labels name the running version",
            build_info,
        );
        let bytes_saved = Counter::default();
        registry.register(
            "sametag_not_modified_saved_bytes",
            "Body bytes not sent because a 304 was answered instead of a 200",
            bytes_saved.clone(),
        );
        let store_latency =
            Family::<OpLabels, Histogram>::new_with_constructor(store_histogram as fn() -> _);
        registry.register(
            "sametag_store_operation_duration_seconds",
            "Latency of store operations",
            store_latency.clone(),
        );
        let store_op_handles =
            STORE_OPS.map(|op| store_latency.get_or_create_owned(&OpLabels { op }));
        let store_errors = Family::<OpLabels, Counter>::default();
        registry.register(
            "sametag_store_errors",
            "Store operations that failed",
            store_errors.clone(),
        );
        let upstream_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "sametag_upstream_errors",
            "Failures talking to the app (connect, timeout, protocol)",
            upstream_errors.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "sametag_store_up",
            "1 when the store (embedded or Redis) is reachable, 0 when not",
            store_up.clone(),
        );
        let lock_leases_lost = Counter::default();
        registry.register(
            "sametag_lock_leases_lost",
            "Write locks whose lease could not be renewed while the write was still in flight",
            lock_leases_lost.clone(),
        );
        let tag_buffer_bytes = Gauge::default();
        registry.register(
            "sametag_tag_buffer_bytes",
            "Bytes of response bodies held in memory to be tagged now (bounded by sametag_tag_buffer_budget_bytes)",
            tag_buffer_bytes.clone(),
        );
        let tag_buffer_budget = Gauge::default();
        registry.register(
            "sametag_tag_buffer_budget_bytes",
            "The tag-buffer budget (--tag-buffer-budget): at most this many bytes of bodies are held to be tagged",
            tag_buffer_budget.clone(),
        );
        let tag_buffer_refusals = Counter::default();
        registry.register(
            "sametag_tag_buffer_refusals",
            "Responses sent untagged because the tag-buffer budget was spent",
            tag_buffer_refusals.clone(),
        );
        let connections_open = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "sametag_connections_open",
            "Client connections open now",
            connections_open.clone(),
        );
        let connections_refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "sametag_connections_refused",
            "Client connections closed at once because the connection cap was reached",
            connections_refused.clone(),
        );
        let connections_closed = Family::<ClosedLabels, Counter>::default();
        registry.register(
            "sametag_connections_timed_out",
            "Client connections the sidecar closed: no request head in time (first-request), half a later HTTP/1.1 head (header), or idle",
            connections_closed.clone(),
        );
        let purges = Family::<PurgeLabels, Counter>::default();
        registry.register(
            "sametag_purges",
            "Paths, globs and surrogate keys purged through this replica, by kind and source (api: POST /purge, write: a write response's Surrogate-Key)",
            purges.clone(),
        );
        let purge_requests = Family::<PurgeRequestLabels, Counter>::default();
        registry.register(
            "sametag_purge_requests",
            "POST /purge requests on the admin port, by response status",
            purge_requests.clone(),
        );
        let purge_refusals = Counter::default();
        registry.register(
            "sametag_purge_refusals",
            "Trust lookups whose validation only a purge mark (or the purge floor) kept from a 304",
            purge_refusals.clone(),
        );
        let purge_marks = Gauge::default();
        registry.register(
            "sametag_purge_marks",
            "Glob and key purge marks the store held after this replica's last purge",
            purge_marks.clone(),
        );
        let purge_floor_raises = Counter::default();
        registry.register(
            "sametag_purge_floor_raises",
            "Purges after which the store dropped live marks over its cap and raised its floor (un-trusting every older validation)",
            purge_floor_raises.clone(),
        );
        let coalesced = Family::<ResultLabels, Counter>::default();
        registry.register(
            "sametag_coalesced_requests",
            "Conditional reads that joined another request's revalidation: shared (answered from its fetch) or refetched (it failed or went away; fetched alone)",
            coalesced.clone(),
        );
        let compressed = Family::<CodingLabels, Counter>::default();
        registry.register(
            "sametag_compressed_responses",
            "Responses the sidecar compressed (routes with compress), by coding",
            compressed.clone(),
        );
        let compression_saved = Counter::default();
        registry.register(
            "sametag_compression_saved_bytes",
            "Body bytes not sent because the sidecar compressed the response",
            compression_saved.clone(),
        );
        // Known label values start at zero: every documented series is on
        // the first scrape, and rate() sees the first increment.
        for kind in ["connect", "protocol", "body", "timeout"] {
            let _ = upstream_errors.get_or_create(&KindLabels { kind });
        }
        for op in STORE_OPS.into_iter().chain(["renew"]) {
            let _ = store_errors.get_or_create(&OpLabels { op });
        }
        for coding in ["br", "zstd", "gzip"] {
            let _ = compressed.get_or_create(&CodingLabels { coding });
        }
        for result in ["shared", "refetched"] {
            let _ = coalesced.get_or_create(&ResultLabels { result });
        }
        for listener in ["proxy", "admin"] {
            let _ = connections_refused.get_or_create(&ListenerLabels { listener });
            for reason in ["first-request", "header", "idle"] {
                let _ = connections_closed.get_or_create(&ClosedLabels { listener, reason });
            }
        }
        for kind in ["path", "glob", "key"] {
            for source in ["api", "write"] {
                let _ = purges.get_or_create(&PurgeLabels { kind, source });
            }
        }
        for code in [200, 400, 401, 403, 405, 408, 413, 503] {
            let _ = purge_requests.get_or_create(&PurgeRequestLabels { code });
        }
        Self {
            registry,
            purges,
            purge_requests,
            purge_refusals,
            purge_marks,
            purge_floor_raises,
            coalesced,
            compressed,
            compression_saved,
            tag_buffer_bytes,
            tag_buffer_budget,
            tag_buffer_refusals,
            connections_open,
            connections_refused,
            connections_closed,
            requests,
            request_handles: table(),
            request_duration,
            duration_handles: table(),
            upstream_duration,
            bytes_saved,
            store_latency,
            store_op_handles,
            store_errors,
            upstream_errors,
            store_up,
            lock_leases_lost,
        }
    }

    /// The registry, for other components' families (the Redis store's).
    /// Only usable before the metrics are shared.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Count one finished request.
    pub fn request(&self, method: &http::Method, outcome: Outcome) {
        let method = MethodLabel::from(method);
        self.request_handles[outcome as usize][method as usize]
            .get_or_init(|| {
                self.requests
                    .get_or_create_owned(&RequestLabels { method, outcome })
            })
            .inc();
    }

    /// Time one request: `elapsed` from its arrival until its response head
    /// (with `status`) was ready.
    pub fn request_duration(&self, outcome: Outcome, status: StatusCode, elapsed: Duration) {
        let status_class = StatusClass::of(status);
        self.duration_handles[outcome as usize][status_class as usize]
            .get_or_init(|| {
                self.request_duration.get_or_create_owned(&DurationLabels {
                    outcome,
                    status_class,
                })
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The histogram of the app's response-head latency (a handle the
    /// upstream client observes into).
    pub fn upstream_duration(&self) -> Histogram {
        self.upstream_duration.clone()
    }

    /// How many requests ended with `outcome` for `method` so far.
    pub fn requests_with(&self, method: &http::Method, outcome: Outcome) -> u64 {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.into(),
                outcome,
            })
            .get()
    }

    /// A 304 spared the client `bytes` of body.
    pub fn saved(&self, bytes: u64) {
        self.bytes_saved.inc_by(bytes);
    }

    /// A response of `before` bytes went out as `after` bytes of `coding`.
    pub fn compressed(&self, coding: &'static str, before: u64, after: u64) {
        self.compressed
            .get_or_create(&CodingLabels { coding })
            .inc();
        self.compression_saved.inc_by(before.saturating_sub(after));
    }

    /// Responses compressed with `coding` so far.
    pub fn compressed_with(&self, coding: &'static str) -> u64 {
        self.compressed
            .get_or_create(&CodingLabels { coding })
            .get()
    }

    /// Count a failure to reach or understand the app.
    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// A read joined another's revalidation: `shared` when it got that
    /// answer, `refetched` when it had to fetch alone after all.
    pub fn coalesced(&self, result: &'static str) {
        self.coalesced.get_or_create(&ResultLabels { result }).inc();
    }

    /// Reads counted by [`Metrics::coalesced`] with `result` so far.
    pub fn coalesced_with(&self, result: &'static str) -> u64 {
        self.coalesced.get_or_create(&ResultLabels { result }).get()
    }

    /// The size of the tag-buffer budget, exported beside its use.
    pub fn set_tag_buffer_budget(&self, bytes: u64) {
        self.tag_buffer_budget
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The tag-buffer gauge and refusal counter (handles on the same
    /// values), for the budget that moves them.
    pub fn tag_buffer(&self) -> (Gauge, Counter) {
        (
            self.tag_buffer_bytes.clone(),
            self.tag_buffer_refusals.clone(),
        )
    }

    /// The open-connections gauge of `listener` (`proxy`, `admin`).
    pub fn connections_open(&self, listener: &'static str) -> Gauge {
        self.connections_open
            .get_or_create(&ListenerLabels { listener })
            .clone()
    }

    /// A connection refused at the cap.
    pub fn connection_refused(&self, listener: &'static str) {
        self.connections_refused
            .get_or_create(&ListenerLabels { listener })
            .inc();
    }

    /// A connection closed for `reason` (`first-request`, `header`, `idle`).
    pub fn connection_timed_out(&self, listener: &'static str, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ClosedLabels { listener, reason })
            .inc();
    }

    /// Start timing one store operation; the time is recorded when the
    /// returned measurer is dropped.
    pub fn store_op(self: &Arc<Self>, op: &'static str) -> StoreTimer {
        let histogram = match STORE_OPS.iter().position(|known| *known == op) {
            Some(i) => self.store_op_handles[i].clone(),
            None => self.store_latency.get_or_create_owned(&OpLabels { op }),
        };
        StoreTimer {
            histogram,
            start: Instant::now(),
        }
    }

    /// A held write lock was found taken over (its lease ended mid-write).
    pub fn lock_lease_lost(&self) {
        self.lock_leases_lost.inc();
    }

    /// Write locks lost mid-write so far.
    pub fn lock_leases_lost(&self) -> u64 {
        self.lock_leases_lost.get()
    }

    /// A purge the store acknowledged.
    pub fn purged(&self, purge: &Purge, source: &'static str, report: &PurgeReport) {
        for (kind, n) in [
            ("path", purge.paths.len()),
            ("glob", purge.globs.len()),
            ("key", purge.keys.len()),
        ] {
            if n > 0 {
                self.purges
                    .get_or_create(&PurgeLabels { kind, source })
                    .inc_by(n as u64);
            }
        }
        self.purge_marks
            .set(i64::try_from(report.marks).unwrap_or(i64::MAX));
        if report.floor_raised {
            self.purge_floor_raises.inc();
        }
    }

    /// How many `kind` items `source` purged so far.
    pub fn purges_with(&self, kind: &'static str, source: &'static str) -> u64 {
        self.purges
            .get_or_create(&PurgeLabels { kind, source })
            .get()
    }

    /// A `POST /purge` answered with `code`.
    pub fn purge_request(&self, code: u16) {
        self.purge_requests
            .get_or_create(&PurgeRequestLabels { code })
            .inc();
    }

    /// A Trust lookup that only a purge kept from a 304.
    pub fn purge_refusal(&self) {
        self.purge_refusals.inc();
    }

    /// Trust lookups refused by a purge so far.
    pub fn purge_refusals(&self) -> u64 {
        self.purge_refusals.get()
    }

    /// Count a failed store operation.
    pub fn store_error(&self, op: &'static str) {
        self.store_errors.get_or_create(&OpLabels { op }).inc();
    }

    /// The text exposition format, with the store gauge read now.
    pub fn encode(&self, store: &dyn Store) -> Result<String, std::fmt::Error> {
        self.store_up.set(match store.health() {
            StoreHealth::Up => 1,
            StoreHealth::Down => 0,
        });
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Records a store operation's duration when dropped.
#[derive(Debug)]
pub struct StoreTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for StoreTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}
