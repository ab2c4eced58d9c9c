//! A history of client operations against the documents, and the checker
//! that judges it afterwards (in the manner of Jepsen's Elle, for one
//! register per document): every operation carries its start and end time
//! (monotonic, since the run began), what was sent and what came back, and
//! the document version its body or its tag stood for. The app's applied-write
//! log ([`crate::app::applied_log`]) is the ground truth for writes.
//!
//! Checked:
//! - **no lost update**: every acknowledged (2xx) write is applied exactly
//!   once; each document's versions in the log run 1..n and its final version
//!   is n; every applied conditional write was based on the version it
//!   replaced (`base == version - 1`: nothing written in between was
//!   overwritten); no two acknowledged writes were based on the same version;
//! - **no stale 304**: a 304 answers for the version of the tag the client
//!   sent; that version must not be older than a write acknowledged before
//!   the read started, nor than a version some 200 had already returned
//!   before the read started (realtime order: once anyone has read v+1, v is
//!   not current); likewise for a 200's body;
//! - **no failed GET**: every GET is a 200 or (conditional) a 304;
//! - writes end 2xx or 412, except where the test expects faults
//!   (503, 502, 504, transport errors are then counted, not failed).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use crate::app::Applied;

/// Which protocol a client spoke to the balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// HTTP/1.1.
    H1,
    /// HTTP/2 with prior knowledge (h2c).
    H2,
}

/// What an operation was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// GET without conditions.
    Read,
    /// GET with `If-None-Match` (the tag last seen).
    CondRead,
    /// PUT with `If-Match` (the tag last seen), the body based on its version.
    Write,
}

/// One operation as the client saw it.
#[derive(Clone, Debug)]
pub struct Op {
    /// Which worker (client) ran it.
    pub worker: usize,
    /// The user (credential set) it ran as.
    pub user: String,
    /// The `Host` (or `:authority`) it used.
    pub host: String,
    /// HTTP/1.1 or h2c.
    pub proto: Proto,
    /// Which fault phase it started in (the test names them).
    pub phase: String,
    /// The app's document name (`d0.json`).
    pub doc: String,
    /// The request target (path and query).
    pub target: String,
    /// Read, conditional read or write.
    pub kind: OpKind,
    /// When the request was sent, since the run began.
    pub start: Duration,
    /// When the response (or the error) was complete.
    pub end: Duration,
    /// The status; `None` for a transport error or timeout.
    pub status: Option<u16>,
    /// The transport error, if any.
    pub error: Option<String>,
    /// The tag sent (`If-None-Match` or `If-Match`).
    pub etag_sent: Option<String>,
    /// The version that tag stood for (a write's base).
    pub version_sent: Option<u64>,
    /// The `ETag` received.
    pub etag_received: Option<String>,
    /// The version in a 200's body, or the version a 2xx write stamped.
    pub version_received: Option<u64>,
    /// A write's request id (`"req"` in its body).
    pub req: Option<String>,
    /// `Cache-Status` received.
    pub cache_status: Option<String>,
    /// The balancer's server (`X-LB-Server`), or the sidecar written to directly.
    pub server: Option<String>,
}

impl Op {
    /// A 2xx write.
    pub fn acknowledged(&self) -> bool {
        self.kind == OpKind::Write && self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// A 304 the sidecar answered from the store (`Cache-Status: sametag; hit`).
    pub fn trusted_hit(&self) -> bool {
        self.status == Some(304)
            && self
                .cache_status
                .as_deref()
                .is_some_and(|c| c.contains("sametag; hit"))
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:>8.3}s..{:>8.3}s] w{} {} {:?} {:?} {} host={} {}: {} sent={:?}(v{:?}) got={:?}(v{:?}) req={:?} cs={:?} via={:?}{}",
            self.start.as_secs_f64(),
            self.end.as_secs_f64(),
            self.worker,
            self.user,
            self.proto,
            self.kind,
            self.target,
            self.host,
            self.phase,
            self.status.map_or("ERR".to_owned(), |s| s.to_string()),
            self.etag_sent,
            self.version_sent,
            self.etag_received,
            self.version_received,
            self.req,
            self.cache_status,
            self.server,
            self.error
                .as_deref()
                .map_or(String::new(), |e| format!(" error={e}")),
        )
    }
}

/// What kind of violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Violation {
    /// A GET that was not a 200 or (conditional) 304, or failed in transit.
    FailedGet,
    /// A 304 to a GET that carried no condition.
    UnconditionalNotModified,
    /// A write status the phase did not allow.
    UnexpectedWriteStatus,
    /// A 2xx write not in the applied log, or in it more than once.
    AcknowledgedNotExactlyOnce,
    /// A 2xx write whose reported version differs from the log's.
    AcknowledgedVersionMismatch,
    /// A document's logged versions do not run 1..n, or its final version is not n.
    VersionSequence,
    /// An applied conditional write whose base was not the version it replaced.
    AppliedOnStaleBase,
    /// Two acknowledged writes based on the same version.
    SameBaseTwice,
    /// A 304 for a version older than one whose write was acknowledged
    /// before the read started.
    Stale304AfterAckedWrite,
    /// A 304 for a version older than one a 200 had returned before the
    /// read started.
    Stale304AfterNewerRead,
    /// A 200 whose body is older than a write acknowledged before it started.
    Stale200,
}

/// What the checker found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Operations checked.
    pub ops: u64,
    /// Operations by kind and status (`None`: transport error).
    pub by_kind: BTreeMap<(OpKind, Option<u16>), u64>,
    /// Operations by protocol.
    pub by_proto: BTreeMap<Proto, u64>,
    /// Trusted 304s (`Cache-Status: sametag; hit`).
    pub trusted_hits: u64,
    /// 2xx writes.
    pub acknowledged: u64,
    /// Writes applied according to the app's log (tracked ones).
    pub applied: u64,
    /// Writes answered 412 that the app nevertheless applied (a write the
    /// balancer replayed after the first attempt's response was lost).
    pub refused_but_applied: u64,
    /// Writes with an unknown outcome (5xx other than 503, transport error)
    /// and whether the app applied them.
    pub unknown_outcome: u64,
    /// Of those, applied.
    pub unknown_applied: u64,
    /// Invariant checks evaluated (one per op, per log entry, per document
    /// and per acknowledged write and 304 checked).
    pub checks: u64,
    /// Violations by kind.
    pub violations: BTreeMap<Violation, u64>,
    /// Violations by the phase of the operation concerned.
    pub violations_by_phase: BTreeMap<String, BTreeMap<Violation, u64>>,
    /// The first few violations of each kind, described.
    pub examples: Vec<String>,
    /// Per phase: operations and write statuses.
    pub phases: BTreeMap<String, BTreeMap<String, u64>>,
}

/// Most violation descriptions kept per kind.
const MAX_EXAMPLES: u64 = 5;

impl Report {
    /// Total violations.
    pub fn violation_count(&self) -> u64 {
        self.violations.values().sum()
    }

    /// Violations of one kind.
    pub fn count(&self, v: Violation) -> u64 {
        self.violations.get(&v).copied().unwrap_or(0)
    }

    /// Operations of `kind` answered `status`.
    pub fn status_count(&self, kind: OpKind, status: u16) -> u64 {
        self.by_kind
            .get(&(kind, Some(status)))
            .copied()
            .unwrap_or(0)
    }

    fn flag(&mut self, v: Violation, phase: &str, detail: impl FnOnce() -> String) {
        *self
            .violations_by_phase
            .entry(phase.to_owned())
            .or_default()
            .entry(v)
            .or_default() += 1;
        let n = self.violations.entry(v).or_default();
        *n += 1;
        if *n <= MAX_EXAMPLES {
            self.examples.push(format!("{v:?}: {}", detail()));
        }
    }

    /// A summary for the test's output.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} operations ({:?}); trusted 304 hits {}; writes acknowledged {}, applied {}, \
             412-but-applied {}, unknown outcome {} (applied {}); {} checks",
            self.ops,
            self.by_proto,
            self.trusted_hits,
            self.acknowledged,
            self.applied,
            self.refused_but_applied,
            self.unknown_outcome,
            self.unknown_applied,
            self.checks
        );
        s.push_str("\n  by kind/status:");
        for ((k, st), n) in &self.by_kind {
            let st = st.map_or("ERR".to_owned(), |s| s.to_string());
            s.push_str(&format!(" {k:?}/{st}={n}"));
        }
        for (phase, counts) in &self.phases {
            s.push_str(&format!("\n  phase {phase}: {counts:?}"));
        }
        s.push_str(&format!(
            "\n  violations: {} {:?}",
            self.violation_count(),
            self.violations
        ));
        for (phase, v) in &self.violations_by_phase {
            s.push_str(&format!("\n    in phase {phase}: {v:?}"));
        }
        for e in &self.examples {
            s.push_str(&format!("\n    {e}"));
        }
        s
    }
}

/// Check `ops` against the app's `log` and each document's `finals`
/// (the version in the document at the end). `write_fault_allowed(op)` says
/// whether a write may end in 503/502/504 or a transport error (the phase
/// injected a fault).
pub fn check(
    ops: &[Op],
    log: &[Applied],
    finals: &BTreeMap<String, u64>,
    write_fault_allowed: impl Fn(&Op) -> bool,
) -> Report {
    let mut r = Report::default();
    let mut applied_by_req: HashMap<&str, Vec<&Applied>> = HashMap::new();
    for a in log.iter().filter(|a| a.version.is_some()) {
        if let Some(req) = a.req.as_deref() {
            applied_by_req.entry(req).or_default().push(a);
        }
    }

    // Per operation: statuses, GET failures, write outcomes.
    for op in ops {
        r.ops += 1;
        r.checks += 1;
        *r.by_kind.entry((op.kind, op.status)).or_default() += 1;
        *r.by_proto.entry(op.proto).or_default() += 1;
        let status = op.status.map_or("ERR".to_owned(), |s| s.to_string());
        *r.phases
            .entry(op.phase.clone())
            .or_default()
            .entry(format!("{:?}/{status}", op.kind))
            .or_default() += 1;
        if op.trusted_hit() {
            r.trusted_hits += 1;
        }
        match op.kind {
            OpKind::Read | OpKind::CondRead => match op.status {
                Some(200) => {}
                Some(304) if op.kind == OpKind::CondRead => {}
                Some(304) => r.flag(Violation::UnconditionalNotModified, &op.phase, || {
                    op.to_string()
                }),
                _ => r.flag(Violation::FailedGet, &op.phase, || op.to_string()),
            },
            OpKind::Write => {
                let applied = op
                    .req
                    .as_deref()
                    .and_then(|q| applied_by_req.get(q))
                    .map_or(0, Vec::len);
                match op.status {
                    Some(s) if (200..300).contains(&s) => {
                        r.acknowledged += 1;
                        r.checks += 1;
                        if applied != 1 {
                            r.flag(Violation::AcknowledgedNotExactlyOnce, &op.phase, || {
                                format!("applied {applied} times: {op}")
                            });
                        } else if let (Some(v), Some(a)) = (
                            op.version_received,
                            op.req.as_deref().and_then(|q| applied_by_req.get(q)),
                        ) && a[0].version != Some(v)
                        {
                            r.flag(Violation::AcknowledgedVersionMismatch, &op.phase, || {
                                format!("log says v{:?}: {op}", a[0].version)
                            });
                        }
                    }
                    Some(412) => {
                        if applied > 0 {
                            r.refused_but_applied += 1;
                        }
                    }
                    other => {
                        r.unknown_outcome += 1;
                        if applied > 0 {
                            r.unknown_applied += 1;
                        }
                        if !write_fault_allowed(op) {
                            r.flag(Violation::UnexpectedWriteStatus, &op.phase, || {
                                format!("{other:?} outside a fault: {op}")
                            });
                        }
                    }
                }
            }
        }
    }

    // The log: per document, versions 1..n in commit order; each conditional
    // write applied on the version it replaced.
    let mut per_doc: BTreeMap<&str, Vec<&Applied>> = BTreeMap::new();
    for a in log.iter().filter(|a| a.version.is_some()) {
        per_doc.entry(&a.doc).or_default().push(a);
        r.applied += 1;
    }
    for (doc, entries) in &per_doc {
        for (i, a) in entries.iter().enumerate() {
            r.checks += 1;
            let expected = i as u64 + 1;
            if a.version != Some(expected) {
                r.flag(Violation::VersionSequence, "log", || {
                    format!(
                        "{doc}: log entry {i} has version {:?}, expected {expected}",
                        a.version
                    )
                });
            }
            if let (Some(base), Some(v)) = (a.base, a.version)
                && base + 1 != v
            {
                let by = ops.iter().find(|o| o.req.is_some() && o.req == a.req);
                let phase = by.map_or("log", |o| o.phase.as_str());
                let ack = by.map_or("not in history".to_owned(), |o| o.to_string());
                r.flag(Violation::AppliedOnStaleBase, phase, || {
                    format!(
                        "{doc} v{v} applied on base v{base} (overwrote v{}..v{}): {ack}",
                        base + 1,
                        v - 1
                    )
                });
            }
        }
    }
    for (doc, fin) in finals {
        r.checks += 1;
        let n = per_doc.get(doc.as_str()).map_or(0, Vec::len) as u64;
        if *fin != n {
            r.flag(Violation::VersionSequence, "log", || {
                format!("{doc}: final version {fin} but {n} writes applied")
            });
        }
    }

    // No two acknowledged writes based on the same version.
    let mut bases: HashMap<(&str, u64), &Op> = HashMap::new();
    for op in ops.iter().filter(|o| o.acknowledged()) {
        let Some(base) = op.version_sent else {
            continue;
        };
        r.checks += 1;
        if let Some(first) = bases.insert((&op.doc, base), op) {
            r.flag(Violation::SameBaseTwice, &op.phase, || {
                format!("both based on v{base}:\n      {first}\n      {op}")
            });
        }
    }

    // Realtime order: what was known before each read started.
    let mut known: BTreeMap<&str, Known> = BTreeMap::new();
    for op in ops {
        let k = known.entry(&op.doc).or_default();
        if op.acknowledged()
            && let Some(v) = version_of_ack(op, &applied_by_req)
        {
            k.acked.push((op.end, v, op));
        }
        if op.kind != OpKind::Write
            && op.status == Some(200)
            && let Some(v) = op.version_received
        {
            k.read.push((op.end, v, op));
        }
    }
    for k in known.values_mut() {
        k.finish();
    }
    for op in ops.iter().filter(|o| o.kind != OpKind::Write) {
        let Some(k) = known.get(op.doc.as_str()) else {
            continue;
        };
        let (seen, version) = match op.status {
            Some(304) => (op.version_sent, "304"),
            Some(200) => (op.version_received, "200"),
            _ => continue,
        };
        let Some(v) = seen else { continue };
        r.checks += 1;
        if let Some((newer, by)) = k.newest_before(&k.acked, op.start)
            && v < newer
        {
            let kind = if version == "304" {
                Violation::Stale304AfterAckedWrite
            } else {
                Violation::Stale200
            };
            r.flag(kind, &op.phase, || {
                format!("v{v} but v{newer} was acknowledged before:\n      {op}\n      ack: {by}")
            });
        } else if version == "304"
            && let Some((newer, by)) = k.newest_before(&k.read, op.start)
            && v < newer
        {
            r.flag(Violation::Stale304AfterNewerRead, &op.phase, || {
                format!("v{v} but v{newer} had been read before:\n      {op}\n      read: {by}")
            });
        }
    }
    r
}

fn version_of_ack(op: &Op, applied: &HashMap<&str, Vec<&Applied>>) -> Option<u64> {
    op.req
        .as_deref()
        .and_then(|q| applied.get(q))
        .and_then(|a| a.first())
        .and_then(|a| a.version)
        .or(op.version_received)
}

/// Versions known per document, by the time they became known.
#[derive(Default)]
struct Known<'a> {
    /// (end, version, op) of acknowledged writes, sorted by end, then the
    /// running maximum.
    acked: Vec<(Duration, u64, &'a Op)>,
    /// The same for 200 reads.
    read: Vec<(Duration, u64, &'a Op)>,
}

impl<'a> Known<'a> {
    fn finish(&mut self) {
        for list in [&mut self.acked, &mut self.read] {
            list.sort_by_key(|(end, ..)| *end);
            // Running maximum, so a binary search finds the newest version
            // known by any time.
            let mut best: Option<(u64, &Op)> = None;
            for e in list.iter_mut() {
                match best {
                    Some((v, o)) if v >= e.1 => {
                        e.1 = v;
                        e.2 = o;
                    }
                    _ => best = Some((e.1, e.2)),
                }
            }
        }
    }

    /// The newest version in `list` known strictly before `t`.
    fn newest_before(
        &self,
        list: &[(Duration, u64, &'a Op)],
        t: Duration,
    ) -> Option<(u64, &'a Op)> {
        let i = list.partition_point(|(end, ..)| *end < t);
        i.checked_sub(1).map(|i| (list[i].1, list[i].2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, start: u64, end: u64, status: u16) -> Op {
        Op {
            worker: 0,
            user: "alice".into(),
            host: "shop".into(),
            proto: Proto::H1,
            phase: "clean".into(),
            doc: "d0.json".into(),
            target: "/docs/d0.json".into(),
            kind,
            start: Duration::from_millis(start),
            end: Duration::from_millis(end),
            status: Some(status),
            error: None,
            etag_sent: None,
            version_sent: None,
            etag_received: None,
            version_received: None,
            req: None,
            cache_status: None,
            server: None,
        }
    }

    fn write(req: &str, base: u64, start: u64, end: u64, status: u16) -> Op {
        Op {
            req: Some(req.into()),
            version_sent: Some(base),
            ..op(OpKind::Write, start, end, status)
        }
    }

    fn applied(req: &str, version: u64, base: u64) -> Applied {
        Applied {
            doc: "d0.json".into(),
            version: Some(version),
            base: Some(base),
            writer: None,
            req: Some(req.into()),
            replica: "app0".into(),
        }
    }

    fn finals(v: u64) -> BTreeMap<String, u64> {
        BTreeMap::from([("d0.json".to_owned(), v)])
    }

    #[test]
    fn a_serial_history_passes() {
        let ops = vec![
            Op {
                version_received: Some(0),
                ..op(OpKind::Read, 0, 1, 200)
            },
            write("a", 0, 2, 3, 200),
            write("b", 0, 2, 4, 412),
            Op {
                version_sent: Some(0),
                version_received: Some(1),
                ..op(OpKind::CondRead, 5, 6, 200)
            },
            Op {
                version_sent: Some(1),
                ..op(OpKind::CondRead, 7, 8, 304)
            },
        ];
        let r = check(&ops, &[applied("a", 1, 0)], &finals(1), |_| false);
        assert_eq!(r.violation_count(), 0, "{}", r.summary());
        assert_eq!(r.acknowledged, 1);
    }

    #[test]
    fn two_winners_on_one_base_are_a_lost_update() {
        let ops = vec![write("a", 0, 0, 3, 200), write("b", 0, 1, 4, 204)];
        let log = [applied("a", 1, 0), applied("b", 2, 0)];
        let r = check(&ops, &log, &finals(2), |_| false);
        assert_eq!(r.count(Violation::SameBaseTwice), 1, "{}", r.summary());
        assert_eq!(r.count(Violation::AppliedOnStaleBase), 1);
    }

    #[test]
    fn an_acknowledged_write_missing_or_doubled_is_caught() {
        let ops = vec![write("a", 0, 0, 3, 200), write("b", 1, 4, 5, 200)];
        let log = [applied("b", 1, 1), applied("b", 2, 1)];
        let r = check(&ops, &log, &finals(2), |_| false);
        assert_eq!(
            r.count(Violation::AcknowledgedNotExactlyOnce),
            2,
            "{}",
            r.summary()
        );
    }

    #[test]
    fn a_final_version_that_disagrees_with_the_log_is_caught() {
        let ops = vec![write("a", 0, 0, 3, 200)];
        let r = check(&ops, &[applied("a", 1, 0)], &finals(3), |_| false);
        assert_eq!(r.count(Violation::VersionSequence), 1, "{}", r.summary());
    }

    #[test]
    fn a_304_for_a_version_older_than_an_acknowledged_write_is_stale() {
        let ops = vec![
            write("a", 0, 0, 3, 200),
            Op {
                version_sent: Some(0),
                ..op(OpKind::CondRead, 4, 5, 304)
            },
            // Overlapping the write: either answer is fine.
            Op {
                version_sent: Some(0),
                ..op(OpKind::CondRead, 2, 6, 304)
            },
        ];
        let r = check(&ops, &[applied("a", 1, 0)], &finals(1), |_| false);
        assert_eq!(
            r.count(Violation::Stale304AfterAckedWrite),
            1,
            "{}",
            r.summary()
        );
        assert_eq!(r.violation_count(), 1);
    }

    #[test]
    fn a_304_for_a_version_older_than_one_already_read_is_stale() {
        // The write never got its answer (the sidecar died), but a reader
        // saw v1 before another got a 304 for v0.
        let ops = vec![
            write("a", 0, 0, 30, 502),
            Op {
                version_received: Some(1),
                ..op(OpKind::Read, 4, 5, 200)
            },
            Op {
                version_sent: Some(0),
                ..op(OpKind::CondRead, 6, 7, 304)
            },
        ];
        let r = check(&ops, &[applied("a", 1, 0)], &finals(1), |_| true);
        assert_eq!(
            r.count(Violation::Stale304AfterNewerRead),
            1,
            "{}",
            r.summary()
        );
        assert_eq!(r.unknown_applied, 1);
    }

    #[test]
    fn failed_gets_and_unexpected_write_statuses_are_caught() {
        let ops = vec![
            op(OpKind::Read, 0, 1, 502),
            Op {
                status: None,
                ..op(OpKind::CondRead, 0, 1, 0)
            },
            op(OpKind::Read, 0, 1, 304),
            write("a", 0, 0, 1, 503),
        ];
        let r = check(&ops, &[], &finals(0), |_| false);
        assert_eq!(r.count(Violation::FailedGet), 2, "{}", r.summary());
        assert_eq!(r.count(Violation::UnconditionalNotModified), 1);
        assert_eq!(r.count(Violation::UnexpectedWriteStatus), 1);
        let r = check(&ops[3..], &[], &finals(0), |_| true);
        assert_eq!(r.violation_count(), 0);
    }

    #[test]
    fn a_late_write_that_overwrote_an_acknowledged_one_is_caught() {
        // The slow write timed out (504) and landed after another write.
        let ops = vec![write("slow", 0, 0, 10, 504), write("b", 0, 11, 12, 200)];
        let log = [applied("b", 1, 0), applied("slow", 2, 0)];
        let r = check(&ops, &log, &finals(2), |_| true);
        assert_eq!(r.count(Violation::AppliedOnStaleBase), 1, "{}", r.summary());
    }
}
