//! Coalesced read barriers for trusted hits from the local cache.
//!
//! A write through another replica returns only after Redis has sent this
//! replica its invalidation push, but the push may still be in the socket.
//! A `PING` on the connection that carries the pushes is answered after
//! them, so once a `PING` sent after a request arrived has returned, every
//! invalidation that could matter to that request has been applied.
//!
//! One `PING` serves every hit that arrived before it was sent: a hit waits
//! for the next round to be sent and answered, at most one round is in
//! flight, and the hits arriving meanwhile share the round after it. Alone,
//! a hit pays one round trip as before; under load one round trip answers
//! all the hits of about one round-trip time.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

/// The rounds of one connection's barrier.
pub(crate) struct Barrier {
    state: Mutex<State>,
    done: watch::Sender<Round>,
}

/// Which rounds were sent, and whether one is in flight.
#[derive(Default)]
struct State {
    started: u64,
    in_flight: bool,
}

/// The last round answered.
#[derive(Clone, Default)]
struct Round {
    number: u64,
    /// Why its `PING` failed, if it did.
    failure: Option<Arc<str>>,
}

impl Default for Barrier {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            done: watch::Sender::new(Round::default()),
        }
    }
}

impl Barrier {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Two plain fields: a panic elsewhere leaves them consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Return once a round sent after this call began has been answered
    /// (`Err` with the reason when its `PING` failed). `send(n)` must start
    /// round `n` without waiting for it, and [`Barrier::finish`] it when
    /// answered or failed (it runs apart from the caller, so a cancelled
    /// request never strands the round others wait for).
    pub(crate) async fn pass(&self, send: impl Fn(u64)) -> Result<(), Arc<str>> {
        let mut answered = self.done.subscribe();
        // The first round that is not sent yet: sent after now.
        let need = self.lock().started + 1;
        loop {
            {
                let round = answered.borrow_and_update();
                if round.number >= need {
                    return round.failure.clone().map_or(Ok(()), Err);
                }
            }
            let lead = {
                let mut state = self.lock();
                let lead = !state.in_flight && state.started < need;
                if lead {
                    state.started = need;
                    state.in_flight = true;
                }
                lead
            };
            if lead {
                send(need);
            }
            if answered.changed().await.is_err() {
                return Err("the store was dropped".into());
            }
        }
    }

    /// Round `number` was answered (`failure`: or not).
    pub(crate) fn finish(&self, number: u64, failure: Option<String>) {
        self.lock().in_flight = false;
        self.done.send_replace(Round {
            number,
            failure: failure.map(Arc::from),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    /// A barrier and a count of the rounds it sent.
    fn counted() -> (Arc<Barrier>, Arc<AtomicU64>) {
        (Arc::new(Barrier::default()), Arc::new(AtomicU64::new(0)))
    }

    /// Pass `barrier`, its rounds answered by a task after `delay`.
    async fn pass(
        barrier: &Arc<Barrier>,
        sent: &Arc<AtomicU64>,
        delay: Duration,
        fail: bool,
    ) -> Result<(), Arc<str>> {
        let b = barrier.clone();
        let sent = sent.clone();
        barrier
            .pass(move |n| {
                sent.fetch_add(1, Ordering::SeqCst);
                let b = b.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    b.finish(n, fail.then(|| "down".to_owned()));
                });
            })
            .await
    }

    #[tokio::test]
    async fn one_hit_alone_sends_one_round() {
        let delay = Duration::from_millis(5);
        let (barrier, sent) = counted();
        pass(&barrier, &sent, delay, false).await.unwrap();
        pass(&barrier, &sent, delay, false).await.unwrap();
        assert_eq!(
            sent.load(Ordering::SeqCst),
            2,
            "each later hit needs a round of its own"
        );
    }

    #[tokio::test]
    async fn concurrent_hits_share_rounds() {
        let delay = Duration::from_millis(20);
        let (barrier, sent) = counted();
        let hits: Vec<_> = (0..100)
            .map(|_| {
                let (b, s) = (barrier.clone(), sent.clone());
                tokio::spawn(async move { pass(&b, &s, delay, false).await })
            })
            .collect();
        for hit in hits {
            hit.await.unwrap().unwrap();
        }
        let rounds = sent.load(Ordering::SeqCst);
        assert!(
            (1..=2).contains(&rounds),
            "100 concurrent hits took {rounds} rounds"
        );
    }

    /// The invariant: a hit never passes on a round that was sent before it
    /// arrived.
    #[tokio::test]
    async fn a_hit_waits_for_a_round_sent_after_it_arrived() {
        let barrier = Arc::new(Barrier::default());
        let sent_at = Arc::new(Mutex::new(Vec::<(u64, tokio::time::Instant)>::new()));
        let round = |barrier: Arc<Barrier>,
                     sent_at: Arc<Mutex<Vec<(u64, tokio::time::Instant)>>>| async move {
            let arrived = tokio::time::Instant::now();
            let b = barrier.clone();
            let log = sent_at.clone();
            barrier
                .pass(move |n| {
                    log.lock().unwrap().push((n, tokio::time::Instant::now()));
                    let b = b.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(3)).await;
                        b.finish(n, None);
                    });
                })
                .await
                .unwrap();
            // The round that let it pass, or a later one (sent later still).
            let answered = barrier.done.borrow().number;
            (arrived, answered)
        };
        let mut tasks = Vec::new();
        for i in 0..60u64 {
            tasks.push(tokio::spawn(round(barrier.clone(), sent_at.clone())));
            tokio::time::sleep(Duration::from_micros(200 * (i % 7))).await;
        }
        for t in tasks {
            let (arrived, answered) = t.await.unwrap();
            let log = sent_at.lock().unwrap();
            let sent = log
                .iter()
                .find(|(n, _)| *n == answered)
                .map(|(_, at)| *at)
                .unwrap();
            assert!(
                sent >= arrived,
                "a hit passed on round {answered}, sent before it arrived"
            );
        }
    }

    #[tokio::test]
    async fn a_failed_round_fails_its_hits_and_the_next_round_recovers() {
        let delay = Duration::from_millis(2);
        let (barrier, sent) = counted();
        assert!(pass(&barrier, &sent, delay, true).await.is_err());
        pass(&barrier, &sent, delay, false).await.unwrap();
    }
}
