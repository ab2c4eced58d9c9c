//! One global budget for response bodies held in memory to be tagged.
//!
//! Every body the read path buffers reserves its bytes here first (up front
//! from `Content-Length`, else as its buffer grows). The reservation travels
//! inside the buffered `Bytes` themselves ([`Reservation::freeze`]), so it is
//! released when the last reference is gone: after hyper has written the body
//! to the client, HTTP/2 send queues included, not merely when the response
//! body is dropped. A body that does not fit streams through untagged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;

/// The budget, shared by every request of a proxy.
#[derive(Clone, Debug)]
pub struct TagBudget(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    limit: u64,
    used: AtomicU64,
    /// Bytes reserved now.
    in_use: Gauge,
    /// Responses that did not fit and went out untagged.
    refusals: Counter,
}

impl TagBudget {
    /// A budget of `limit` bytes, counted in `metrics`.
    pub fn new(limit: u64, metrics: &Metrics) -> Self {
        let (in_use, refusals) = metrics.tag_buffer();
        metrics.set_tag_buffer_budget(limit);
        TagBudget(Arc::new(Inner {
            limit,
            used: AtomicU64::new(0),
            in_use,
            refusals,
        }))
    }

    /// A reservation of nothing yet, to grow as a body arrives.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            amount: 0,
        }
    }

    /// Count a response that went out untagged for want of budget.
    pub fn refused(&self) {
        self.0.refusals.inc();
    }

    /// Bytes reserved right now.
    #[cfg(test)]
    pub fn in_use(&self) -> u64 {
        self.0.used.load(Ordering::Acquire)
    }
}

/// Bytes taken from a [`TagBudget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: TagBudget,
    amount: u64,
}

impl Reservation {
    /// Grow the reservation to `total` bytes; `false` (and unchanged) when
    /// the budget cannot cover it.
    pub fn grow_to(&mut self, total: u64) -> bool {
        let Some(more) = total.checked_sub(self.amount).filter(|m| *m > 0) else {
            return true;
        };
        let inner = &self.budget.0;
        let taken = inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(more).filter(|after| *after <= inner.limit)
            });
        if taken.is_err() {
            return false;
        }
        inner.in_use.inc_by(i64::try_from(more).unwrap_or(i64::MAX));
        self.amount = total;
        true
    }

    /// Give back all but `total` bytes.
    pub fn shrink_to(&mut self, total: u64) {
        let Some(less) = self.amount.checked_sub(total).filter(|l| *l > 0) else {
            return;
        };
        let inner = &self.budget.0;
        inner.used.fetch_sub(less, Ordering::AcqRel);
        inner.in_use.dec_by(i64::try_from(less).unwrap_or(i64::MAX));
        self.amount = total;
    }

    /// The budget this draws on.
    pub fn budget(&self) -> &TagBudget {
        &self.budget
    }

    /// `buf` as `Bytes` that keep this reservation until their last clone
    /// (slices included) is dropped.
    pub fn freeze(self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Budgeted {
            buf,
            _reservation: self,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.amount > 0 {
            let inner = &self.budget.0;
            inner.used.fetch_sub(self.amount, Ordering::AcqRel);
            inner
                .in_use
                .dec_by(i64::try_from(self.amount).unwrap_or(i64::MAX));
        }
    }
}

/// A buffer and the budget it holds.
struct Budgeted {
    buf: Vec<u8>,
    _reservation: Reservation,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests;
