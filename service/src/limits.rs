//! Server-wide resource limits that no single request may escape: a budget
//! on the bytes that requests in flight hold, and a bounded pool for the
//! CPU-heavy work (decompression, compression) that must not run on the async
//! workers.
//!
//! The budget is a semaphore counted in KiB. A request reserves bytes as it
//! reads and decodes its body (and as a pointer fetch downloads and decodes),
//! never blocking: when the budget is spent the request is answered 503 with
//! `Retry-After` instead of waiting, so a flood of bombs cannot queue up
//! memory either. Reservations are released when dropped, whatever path the
//! request takes (error, timeout, client gone).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default of `KIT_MAX_INFLIGHT_BYTES` when `KIT_MAX_REQUEST_BYTES` is small.
pub const DEFAULT_INFLIGHT_BYTES: u64 = 128 * 1024 * 1024;

const UNIT: u64 = 1024;

/// The bytes all requests in flight may hold together.
#[derive(Debug, Clone)]
pub struct Budget {
    semaphore: Arc<Semaphore>,
    total_bytes: u64,
}

impl Budget {
    /// A budget of `total_bytes` (rounded up to whole KiB).
    ///
    /// ```
    /// let budget = kit_service::limits::Budget::new(4096);
    /// let mut first = budget.reservation();
    /// assert!(first.grow_to(3000));
    /// let mut second = budget.reservation();
    /// assert!(!second.grow_to(2048), "only 1 KiB is left");
    /// drop(first);
    /// assert!(second.grow_to(2048));
    /// ```
    pub fn new(total_bytes: u64) -> Budget {
        let units = total_bytes
            .div_ceil(UNIT)
            .min(Semaphore::MAX_PERMITS as u64) as usize;
        Budget {
            semaphore: Arc::new(Semaphore::new(units)),
            total_bytes,
        }
    }

    /// The configured size in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Bytes not reserved right now.
    pub fn available_bytes(&self) -> u64 {
        self.semaphore.available_permits() as u64 * UNIT
    }

    /// An empty reservation against this budget.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            semaphore: Some(self.semaphore.clone()),
            permit: None,
            units: 0,
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(DEFAULT_INFLIGHT_BYTES)
    }
}

/// Bytes one request holds; released on drop.
#[derive(Debug, Default)]
pub struct Reservation {
    /// `None`: not tracked (clients and tests that fetch outside a server).
    semaphore: Option<Arc<Semaphore>>,
    permit: Option<OwnedSemaphorePermit>,
    units: u64,
}

impl Reservation {
    /// A reservation that always grows: for callers outside any budget.
    pub fn untracked() -> Reservation {
        Reservation::default()
    }

    /// Makes sure at least `bytes` are reserved; `false` when the budget
    /// cannot cover them (what was reserved before stays reserved).
    pub fn grow_to(&mut self, bytes: u64) -> bool {
        let Some(semaphore) = &self.semaphore else {
            return true;
        };
        let wanted = bytes.div_ceil(UNIT);
        if wanted <= self.units {
            return true;
        }
        let Ok(more) = u32::try_from(wanted - self.units) else {
            return false;
        };
        match semaphore.clone().try_acquire_many_owned(more) {
            Ok(permit) => {
                match &mut self.permit {
                    Some(held) => held.merge(permit),
                    None => self.permit = Some(permit),
                }
                self.units = wanted;
                true
            }
            Err(_) => false,
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.units * UNIT
    }
}

/// Runs CPU-heavy jobs on the blocking pool, at most `threads` at a time,
/// so the async workers stay free for `/readyz` and small calls.
#[derive(Debug, Clone)]
pub struct HeavyPool {
    permits: Arc<Semaphore>,
}

impl HeavyPool {
    /// A pool running at most `threads` jobs at once (at least one).
    pub fn new(threads: usize) -> HeavyPool {
        HeavyPool {
            permits: Arc::new(Semaphore::new(threads.max(1))),
        }
    }

    /// Waits for a slot, then runs `job` on tokio's blocking pool.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the pool's semaphore is never closed");
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        })
        .await
    }
}

impl HeavyPool {
    /// [`HeavyPool::run`] for a job that can use several threads: waits for
    /// one slot, takes up to `want - 1` more that are free right now, and
    /// passes how many it holds to `job`, which must not run more threads
    /// than that. The slots stay taken until the job ends, so jobs and their
    /// helper threads together never pass the pool's size.
    pub async fn run_wide<T: Send + 'static>(
        &self,
        want: usize,
        job: impl FnOnce(usize) -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let mut permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the pool's semaphore is never closed");
        let mut held = 1;
        while held < want {
            match self.permits.clone().try_acquire_owned() {
                Ok(more) => {
                    permit.merge(more);
                    held += 1;
                }
                Err(_) => break,
            }
        }
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job(held)
        })
        .await
    }
}

impl Default for HeavyPool {
    fn default() -> Self {
        HeavyPool::new(default_heavy_threads())
    }
}

/// Default of `KIT_CODEC_THREADS`: the number of CPUs, at least 2.
pub fn default_heavy_threads() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(2)
        .max(2)
}

/// What a server shares across requests to stay within its limits.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub budget: Budget,
    pub heavy: HeavyPool,
    /// Timeouts and caps of client connections (used by `serve`).
    pub connections: crate::connections::ConnectionLimits,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wide_jobs_take_only_free_slots() {
        let pool = HeavyPool::new(3);
        assert_eq!(pool.run_wide(8, |held| held).await.unwrap(), 3);
        assert_eq!(pool.run_wide(2, |held| held).await.unwrap(), 2);
        // A job running elsewhere holds a slot: the wide job gets the rest.
        let (started, wait_started) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let busy = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run(move || {
                    started.send(()).unwrap();
                    released.recv().unwrap();
                })
                .await
            }
        });
        wait_started.await.unwrap();
        assert_eq!(pool.run_wide(8, |held| held).await.unwrap(), 2);
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
        assert_eq!(pool.run_wide(8, |held| held).await.unwrap(), 3);
    }

    #[test]
    fn reservations_release_on_drop_and_never_overdraw() {
        let budget = Budget::new(10 * 1024);
        let mut a = budget.reservation();
        assert!(a.grow_to(6 * 1024));
        assert!(a.grow_to(1), "shrinking requests keep what is held");
        assert_eq!(a.bytes(), 6 * 1024);
        let mut b = budget.reservation();
        assert!(!b.grow_to(5 * 1024));
        assert_eq!(b.bytes(), 0);
        assert!(b.grow_to(4 * 1024));
        assert_eq!(budget.available_bytes(), 0);
        drop(a);
        assert_eq!(budget.available_bytes(), 6 * 1024);
        drop(b);
        assert_eq!(budget.available_bytes(), 10 * 1024);
        assert!(Reservation::untracked().grow_to(u64::MAX));
        assert!(!budget.reservation().grow_to(u64::MAX));
    }
}
