//! A task's wakes of itself, while it is being polled, turned into a second
//! poll within the same one.
//!
//! hyper's HTTP/1 dispatcher and the request body it feeds run in one task.
//! When a handler first polls the body, the body's "want" signal wakes the
//! dispatcher, and when the dispatcher hands the bytes over it wakes the
//! body's reader: both wakes are for the connection's own task, and both come
//! while it runs. The dispatcher goes on within the same poll (it polls the
//! handler again after each read), so they are redundant, but the runtime
//! cannot know: a task woken while it runs is scheduled again as if it had
//! yielded, and tokio's work-stealing scheduler wakes a parked worker to
//! steal it. That worker finds nothing, takes over the I/O driver, and the
//! first one parks on a futex: per keep-alive request, a futex wake and wait,
//! an extra `epoll_wait` and a wake-up of another CPU (docs/benchmarks.md,
//! "One-connection cost").
//!
//! [`RepollOnSelfWake`] polls its future with a waker of its own. A wake that
//! comes while the future is being polled only marks it; if the poll ends
//! `Pending` with the mark set, the future is polled again at once, up to
//! [`MAX_REPOLLS`] times in one poll (then the task's waker is woken and the
//! task yields as before, so a future that always wakes itself cannot keep
//! its worker from other tasks). A wake at any other time, from any thread,
//! goes straight to the task's waker. A task out of tokio's cooperative
//! budget still yields at once: tokio defers that wake (and `yield_now`'s)
//! until the worker is between tasks, so it arrives after the poll.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// Polls of the inner future in one poll of the wrapper at most.
pub const MAX_REPOLLS: usize = 16;

/// Not being polled: a wake goes to the task.
const IDLE: u8 = 0;
/// Being polled, not woken.
const POLLING: u8 = 1;
/// Woken while being polled: poll again.
const WOKEN: u8 = 2;

/// `future`, polled again at once when it wakes its own task while it is
/// being polled (module docs).
pub struct RepollOnSelfWake<F> {
    future: Pin<Box<F>>,
    signal: Arc<Signal>,
    /// `signal` as a waker, made once so that wakers registered by the inner
    /// future compare equal (`Waker::will_wake`) from poll to poll.
    waker: Waker,
}

struct Signal {
    state: AtomicU8,
    /// The waker of the task polling the wrapper, as of its latest poll.
    task: Mutex<Option<Waker>>,
}

impl<F: Future> RepollOnSelfWake<F> {
    /// Wraps `future`.
    pub fn new(future: F) -> Self {
        let signal = Arc::new(Signal {
            state: AtomicU8::new(IDLE),
            task: Mutex::new(None),
        });
        RepollOnSelfWake {
            future: Box::pin(future),
            waker: Waker::from(signal.clone()),
            signal,
        }
    }
}

impl<F: Future> Future for RepollOnSelfWake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        {
            let mut task = this
                .signal
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !task.as_ref().is_some_and(|task| task.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let mut inner = Context::from_waker(&this.waker);
        for _ in 0..MAX_REPOLLS {
            this.signal.state.store(POLLING, Ordering::SeqCst);
            if let Poll::Ready(output) = this.future.as_mut().poll(&mut inner) {
                this.signal.state.store(IDLE, Ordering::SeqCst);
                return Poll::Ready(output);
            }
            // A wake after this swap finds IDLE and goes to the task.
            if this.signal.state.swap(IDLE, Ordering::SeqCst) != WOKEN {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // POLLING -> WOKEN: the poll in progress polls again. If the poll
        // ended first, the exchange fails on IDLE and the task is woken.
        match self
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) | Err(WOKEN) => {}
            Err(_) => {
                let task = self
                    .task
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                if let Some(task) = task {
                    task.wake();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts the wakes of the task polling the wrapper.
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn task() -> (Arc<Counter>, Waker) {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        (counter.clone(), Waker::from(counter))
    }

    /// Wakes itself on each of its first `wakes` polls, then is ready with
    /// the number of polls it took.
    struct WakesItself {
        wakes: usize,
        polls: usize,
    }

    impl Future for WakesItself {
        type Output = usize;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.polls > self.wakes {
                return Poll::Ready(self.polls);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[test]
    fn a_wake_during_the_poll_polls_again_without_waking_the_task() {
        let (counter, waker) = task();
        let mut future = RepollOnSelfWake::new(WakesItself { wakes: 3, polls: 0 });
        let polled = Pin::new(&mut future).poll(&mut Context::from_waker(&waker));
        assert_eq!(polled, Poll::Ready(4));
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_future_that_always_wakes_itself_yields_after_the_bound() {
        let (counter, waker) = task();
        let wakes = MAX_REPOLLS * 2 + 1;
        let mut future = RepollOnSelfWake::new(WakesItself { wakes, polls: 0 });
        let mut cx = Context::from_waker(&waker);
        assert_eq!(Pin::new(&mut future).poll(&mut cx), Poll::Pending);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "yielded once");
        assert_eq!(Pin::new(&mut future).poll(&mut cx), Poll::Pending);
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
        assert_eq!(Pin::new(&mut future).poll(&mut cx), Poll::Ready(wakes + 1));
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    }

    /// Counts its inner future's polls.
    struct Polls<F> {
        future: Pin<Box<F>>,
        polls: Arc<AtomicUsize>,
    }

    impl<F: Future> Future for Polls<F> {
        type Output = F::Output;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            self.future.as_mut().poll(cx)
        }
    }

    /// A future that runs out of tokio's budget yields at once instead of
    /// being polled again up to the bound: tokio defers the wake of a task
    /// out of budget until after its poll (were it woken during the poll,
    /// every poll would spin through `MAX_REPOLLS` pending polls).
    #[test]
    fn a_future_out_of_budget_yields_instead_of_polling_again() {
        const STEPS: usize = 1000;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = Polls {
            future: Box::pin(async {
                for _ in 0..STEPS {
                    tokio::task::coop::consume_budget().await;
                }
            }),
            polls: polls.clone(),
        };
        runtime.block_on(async {
            tokio::spawn(RepollOnSelfWake::new(counted)).await.unwrap();
        });
        // One poll per budget (128 units in tokio 1.54) and a few more; 16
        // times that if every poll re-polled until its bound.
        let polls = polls.load(Ordering::SeqCst);
        assert!(polls <= 2 * STEPS.div_ceil(128) + 2, "{polls} polls");
    }

    /// Pending until `ready` is set, keeping the latest waker.
    struct Gate {
        ready: Arc<std::sync::atomic::AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Gate {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.ready.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    #[test]
    fn a_wake_after_the_poll_wakes_the_latest_task_waker() {
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let kept = Arc::new(Mutex::new(None::<Waker>));
        let mut future = RepollOnSelfWake::new(Gate {
            ready: ready.clone(),
            waker: kept.clone(),
        });
        let (first, first_waker) = task();
        let (second, second_waker) = task();
        let pending = Pin::new(&mut future).poll(&mut Context::from_waker(&first_waker));
        assert_eq!(pending, Poll::Pending);
        // Polled again from another task: wakes go to that one.
        let pending = Pin::new(&mut future).poll(&mut Context::from_waker(&second_waker));
        assert_eq!(pending, Poll::Pending);
        let inner = kept.lock().unwrap().clone().unwrap();
        inner.wake_by_ref();
        inner.wake();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 2);
        ready.store(true, Ordering::SeqCst);
        let done = Pin::new(&mut future).poll(&mut Context::from_waker(&second_waker));
        assert_eq!(done, Poll::Ready(()));
    }

    /// Wakes from other threads racing the end of a poll are never lost: each
    /// either makes the poll go again or wakes the task (a lost one would
    /// leave the runtime waiting forever, and the test would not end).
    #[test]
    fn wakes_from_other_threads_are_never_lost() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        runtime.block_on(async {
            for _ in 0..200 {
                let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<u32>();
                let total = tokio::spawn(RepollOnSelfWake::new(async move {
                    let mut total = 0;
                    while let Some(value) = receiver.recv().await {
                        total += value;
                    }
                    total
                }));
                let producers: Vec<_> = (0..2)
                    .map(|_| {
                        let sender = sender.clone();
                        std::thread::spawn(move || {
                            for _ in 0..250 {
                                sender.send(1).unwrap();
                                std::hint::spin_loop();
                            }
                        })
                    })
                    .collect();
                drop(sender);
                for producer in producers {
                    producer.join().unwrap();
                }
                assert_eq!(total.await.unwrap(), 500);
            }
        });
    }
}
