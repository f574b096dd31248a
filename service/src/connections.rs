//! The accept loop: every connection bounded in time and number.
//!
//! `axum::serve` reads headers with no timeout, keeps idle connections
//! forever and accepts until the process runs out of file descriptors, so
//! 600 idle connections locked every other client out of a 512-fd process.
//! Here each connection is registered: request headers must arrive within
//! `KIT_HEADER_TIMEOUT`, a connection with no request in flight is closed
//! after `KIT_IDLE_TIMEOUT`, and at `KIT_MAX_CONNECTIONS` (or
//! `KIT_MAX_CONNECTIONS_PER_IP` for one client) a new connection evicts the
//! longest-idle connection that has no request in flight, as nginx reuses
//! keep-alive connections under pressure. Only when every connection is busy
//! is the new one refused. A request in flight is never cut.
//!
//! Draining (after SIGTERM's `KIT_DRAIN_DELAY`) stops accepting but does not
//! slam idle keep-alive connections shut: a proxy may be writing its next
//! request onto one at that moment, and it cannot resend a POST it already
//! sent, so it answers 502. Instead every response from then on carries
//! `Connection: close` (the peer learns before it reuses the connection),
//! and a connection is closed while idle only once it has been quiet for
//! [`DRAIN_QUIET`], by which time a proxy under load has reused it (and got
//! the close) or holds it as a spare far down its cache.
//!
//! Connections are served on the main runtime's work-stealing workers by
//! default, each in a task wrapped in [`RepollOnSelfWake`] (a keep-alive
//! request no longer wakes a second worker for nothing; see
//! `crate::self_wake`); with `KIT_CONNECTION_THREADS=N` they are dealt to N
//! connection threads, each a single-threaded tokio runtime (see
//! `connection_threads`), while the accept loop, the sweeper and everything
//! else stay on the main runtime.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::metrics::Metrics;
use crate::self_wake::RepollOnSelfWake;

/// What answers the requests of the connections [`serve`] accepts.
#[derive(Clone)]
pub enum App {
    /// An axum router, given each client's address as `ConnectInfo`.
    Router(Router),
    /// The vgi-rpc host, called directly (`crate::http::respond`): the same
    /// answers as its router (`crate::http::app`), without the router's
    /// work per request.
    Host(Arc<crate::http::Server>),
}

impl From<Router> for App {
    fn from(router: Router) -> App {
        App::Router(router)
    }
}

impl App {
    async fn respond(
        self,
        mut request: http::Request<Body>,
        peer: SocketAddr,
    ) -> axum::response::Response {
        match self {
            App::Router(router) => {
                request.extensions_mut().insert(ConnectInfo(peer));
                tower::ServiceExt::oneshot(router, request)
                    .await
                    .unwrap_or_else(|never: Infallible| match never {})
            }
            App::Host(server) => crate::http::respond(server, request, Some(peer)).await,
        }
    }
}

/// File descriptors kept free for everything that is not a client
/// connection: the listener, storage files, outgoing fetches, logs.
const RESERVED_FDS: u64 = 64;

/// While draining, how long a connection must have had no request in flight
/// (and no bytes of a next one) before it is closed.
pub const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// How connections are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time a client has to send a request's headers (`KIT_HEADER_TIMEOUT`).
    pub header_timeout: Duration,
    /// Time a connection may sit with no request in flight (`KIT_IDLE_TIMEOUT`).
    pub idle_timeout: Duration,
    /// Open client connections at most (`KIT_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Open connections of one client IP at most (`KIT_MAX_CONNECTIONS_PER_IP`).
    pub max_per_ip: usize,
    /// Connection threads, each a single-threaded runtime that keeps its
    /// connections (`KIT_CONNECTION_THREADS`); 0 serves connections on the
    /// caller's runtime, work-stealing between its workers.
    pub threads: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        let max_connections = default_max_connections();
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_connections,
            max_per_ip: max_connections,
            // Opt-in: a descheduled or blocking connection thread delays
            // its connections (8-connection p99 was
            // 4 ms against 0.7 ms in docs/benchmarks.md), and
            // `block_in_place` panics on a single-threaded runtime.
            threads: 0,
        }
    }
}

/// The default of `KIT_MAX_CONNECTIONS`: the process's open-file limit less
/// [`RESERVED_FDS`], between 16 and 16384.
///
/// ```
/// let max = kit_service::connections::default_max_connections();
/// assert!((16..=16384).contains(&max));
/// ```
pub fn default_max_connections() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1024);
    soft.saturating_sub(RESERVED_FDS).clamp(16, 16384) as usize
}

struct Entry {
    ip: IpAddr,
    in_flight: usize,
    /// Since when no request has been in flight (accept time at first).
    idle_since: Instant,
    /// When the first byte of the next request arrived (see [`Receiving`]).
    receiving: Arc<Receiving>,
    close: Arc<Notify>,
}

/// When a connection with no request in flight started receiving bytes:
/// from then on it is sending headers, and gets `KIT_HEADER_TIMEOUT` for
/// them; before, it is idle and gets `KIT_IDLE_TIMEOUT`. (hyper's own header
/// timer also runs between keep-alive requests, which would cut idle
/// keep-alive connections at the header timeout.)
#[derive(Debug)]
struct Receiving {
    epoch: Instant,
    /// Microseconds after `epoch`, plus one; 0 when not receiving.
    since: std::sync::atomic::AtomicU64,
}

impl Receiving {
    fn new(epoch: Instant) -> Receiving {
        Receiving {
            epoch,
            since: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn bytes_arrived(&self) {
        use std::sync::atomic::Ordering;
        if self.since.load(Ordering::Relaxed) == 0 {
            let now = self.epoch.elapsed().as_micros() as u64 + 1;
            let _ = self
                .since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn reset(&self) {
        self.since.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long the connection has been sending the next request's headers.
    fn for_how_long(&self) -> Option<Duration> {
        match self.since.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            since => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_micros(since - 1)),
            ),
        }
    }
}

/// The client socket, noting when request bytes arrive on an idle connection.
struct TrackedStream {
    inner: tokio::net::TcpStream,
    receiving: Arc<Receiving>,
}

impl tokio::io::AsyncRead for TrackedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.receiving.bytes_arrived();
        }
        polled
    }
}

impl tokio::io::AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[derive(Default)]
struct State {
    next_id: u64,
    // Looked up twice per request: foldhash's seeded hash, not SipHash.
    entries: HashMap<u64, Entry, foldhash::fast::RandomState>,
    per_ip: HashMap<IpAddr, usize, foldhash::fast::RandomState>,
}

impl State {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        if let Some(count) = self.per_ip.get_mut(&entry.ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&entry.ip);
            }
        }
        Some(entry)
    }

    /// The longest-idle connection with no request in flight (of `ip` if given).
    fn oldest_idle(&self, ip: Option<IpAddr>) -> Option<u64> {
        self.entries
            .iter()
            .filter(|(_, e)| e.in_flight == 0 && ip.is_none_or(|ip| e.ip == ip))
            .min_by_key(|(_, e)| e.idle_since)
            .map(|(id, _)| *id)
    }
}

/// Every open client connection.
struct Registry {
    limits: ConnectionLimits,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    epoch: Instant,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self, state: &mut State, id: u64) {
        if let Some(entry) = state.remove(id) {
            entry.close.notify_one();
            self.metrics.open_connections.dec();
        }
    }

    /// Registers a connection from `ip`, evicting an idle one if a cap is
    /// reached; `None` when every candidate is busy.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admission> {
        let mut state = self.lock();
        if state.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.max_per_ip {
            let victim = state.oldest_idle(Some(ip))?;
            self.close(&mut state, victim);
            self.metrics.connections_evicted.inc();
        }
        if state.entries.len() >= self.limits.max_connections {
            let victim = state.oldest_idle(None)?;
            self.close(&mut state, victim);
            self.metrics.connections_evicted.inc();
        }
        state.next_id += 1;
        let id = state.next_id;
        let close = Arc::new(Notify::new());
        let receiving = Arc::new(Receiving::new(self.epoch));
        state.entries.insert(
            id,
            Entry {
                ip,
                in_flight: 0,
                idle_since: Instant::now(),
                receiving: receiving.clone(),
                close: close.clone(),
            },
        );
        *state.per_ip.entry(ip).or_default() += 1;
        self.metrics.open_connections.inc();
        Some(Admission {
            registry: self.clone(),
            id,
            close,
            receiving,
        })
    }

    fn request_started(&self, id: u64) {
        if let Some(entry) = self.lock().entries.get_mut(&id) {
            entry.in_flight += 1;
            entry.receiving.reset();
        }
    }

    fn request_finished(&self, id: u64) {
        if let Some(entry) = self.lock().entries.get_mut(&id) {
            entry.in_flight -= 1;
            if entry.in_flight == 0 {
                entry.idle_since = Instant::now();
            }
        }
    }

    /// Closes connections idle for longer than the idle timeout, and those
    /// sending headers for longer than the header timeout.
    fn sweep(&self) {
        let mut state = self.lock();
        let expired: Vec<u64> = state
            .entries
            .iter()
            .filter(|(_, e)| {
                e.in_flight == 0
                    && match e.receiving.for_how_long() {
                        Some(sending) => sending > self.limits.header_timeout,
                        None => e.idle_since.elapsed() > self.limits.idle_timeout,
                    }
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.close(&mut state, id);
        }
    }

    /// While draining: closes connections quiet for at least `quiet`.
    fn sweep_draining(&self, quiet: Duration) {
        let mut state = self.lock();
        let quiet: Vec<u64> = state
            .entries
            .iter()
            .filter(|(_, e)| {
                e.in_flight == 0
                    && e.receiving.for_how_long().is_none()
                    && e.idle_since.elapsed() >= quiet
            })
            .map(|(id, _)| *id)
            .collect();
        for id in quiet {
            self.close(&mut state, id);
        }
    }

    fn open(&self) -> usize {
        self.lock().entries.len()
    }
}

/// One registered connection; unregistered on drop.
struct Admission {
    registry: Arc<Registry>,
    id: u64,
    close: Arc<Notify>,
    receiving: Arc<Receiving>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut state = self.registry.lock();
        if state.remove(self.id).is_some() {
            self.registry.metrics.open_connections.dec();
        }
    }
}

/// A request in flight on a connection: from its headers until hyper has
/// sent (or dropped) the whole response body.
struct InFlightRequest {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        self.registry.request_finished(self.id);
    }
}

/// A response body that keeps its request in flight until it is dropped.
struct TrackedBody {
    inner: Body,
    _request: InFlightRequest,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `app` on `listener` within `limits` until `stop` resolves, then
/// stops accepting and drains (module docs): requests keep being served on
/// open connections with `Connection: close`, quiet ones are closed, and it
/// returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    app: impl Into<App>,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let registry = Arc::new(Registry {
        limits,
        state: Mutex::default(),
        metrics,
        epoch: Instant::now(),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let sweeper = {
        let registry = registry.clone();
        let period = (limits.idle_timeout.min(limits.header_timeout) / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            loop {
                ticks.tick().await;
                registry.sweep();
            }
        })
    };
    let app = app.into();
    let threads = connection_threads(app.clone(), limits, &shutdown_rx)?;
    let mut next = 0usize;
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors (EMFILE/ENFILE) or a connection reset
                    // before accept: free an idle slot, back off briefly.
                    tracing::warn!(%error, "accept failed");
                    {
                        let mut state = registry.lock();
                        if let Some(victim) = state.oldest_idle(None) {
                            registry.close(&mut state, victim);
                            registry.metrics.connections_evicted.inc();
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Some(admission) = registry.admit(peer.ip()) else {
            registry.metrics.connections_refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        if threads.is_empty() {
            tokio::spawn(connection(
                stream,
                peer,
                app.clone(),
                admission,
                shutdown_rx.clone(),
            ));
            continue;
        }
        let thread = &threads[next % threads.len()];
        next = next.wrapping_add(1);
        match stream.into_std() {
            Ok(stream) => {
                // The thread is gone only if it panicked: the admission
                // comes back with the error and is released with it.
                let _ = thread.send((stream, peer, admission));
            }
            Err(error) => tracing::warn!(%error, "could not hand a connection to its thread"),
        }
    }
    drop(listener);
    let _ = shutdown_tx.send(true);
    while registry.open() > 0 {
        registry.sweep_draining(DRAIN_QUIET);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sweeper.abort();
    // Every connection is closed: the threads' runtimes end with their queues.
    drop(threads);
    Ok(())
}

/// A connection accepted and admitted, on its way to its thread.
type Accepted = (std::net::TcpStream, SocketAddr, Admission);

/// Starts `limits.threads` connection threads (none for 0), each running a
/// single-threaded tokio runtime, and returns their queues. The accept loop deals connections out
/// in turn, and a connection stays on its thread for its whole life: a
/// request is read, handled and answered by the thread that waits on the
/// connection's socket, and a handler's wake-ups stay on that thread. (On
/// the work-stealing runtime each request used to wake a second worker,
/// which found nothing to do; `crate::self_wake` ended that.) CPU-heavy work
/// still goes to the blocking pool (`limits::HeavyPool`) and background
/// tasks stay on the main runtime.
fn connection_threads(
    app: App,
    limits: ConnectionLimits,
    draining: &watch::Receiver<bool>,
) -> std::io::Result<Vec<tokio::sync::mpsc::UnboundedSender<Accepted>>> {
    (0..limits.threads)
        .map(|index| {
            let (queue, mut accepted) = tokio::sync::mpsc::unbounded_channel::<Accepted>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let app = app.clone();
            let draining = draining.clone();
            std::thread::Builder::new()
                .name(format!("kit-conn-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        while let Some((stream, peer, admission)) = accepted.recv().await {
                            match tokio::net::TcpStream::from_std(stream) {
                                Ok(stream) => {
                                    tokio::spawn(connection(
                                        stream,
                                        peer,
                                        app.clone(),
                                        admission,
                                        draining.clone(),
                                    ));
                                }
                                Err(error) => {
                                    tracing::warn!(%error, "could not register a connection");
                                }
                            }
                        }
                    });
                })?;
            Ok(queue)
        })
        .collect()
}

/// A connection's task, on either kind of runtime: served by hyper, and
/// polled again at once when hyper wakes its own task during a poll
/// (`crate::self_wake`), so that a keep-alive request wakes no other worker.
fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: App,
    admission: Admission,
    draining: watch::Receiver<bool>,
) -> RepollOnSelfWake<impl std::future::Future<Output = ()> + Send> {
    RepollOnSelfWake::new(async move {
        let registry = admission.registry.clone();
        let id = admission.id;
        let service =
            hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let draining = draining.clone();
                registry.request_started(id);
                let tracked = InFlightRequest {
                    registry: registry.clone(),
                    id,
                };
                let request = request.map(Body::new);
                let app = app.clone();
                async move {
                    let mut response = app.respond(request, peer).await;
                    if *draining.borrow() {
                        // hyper closes the connection once this response is out.
                        response.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("close"),
                        );
                    }
                    Ok::<_, Infallible>(response.map(|inner| {
                        Body::new(TrackedBody {
                            inner,
                            _request: tracked,
                        })
                    }))
                }
            });
        let stream = TrackedStream {
            inner: stream,
            receiving: admission.receiving.clone(),
        };
        // The registry's sweeper enforces the header and idle timeouts.
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(None)
            .keep_alive(true)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        tokio::pin!(connection);
        let close = admission.close.clone();
        // Draining needs nothing here: responses say `Connection: close` and the
        // registry closes quiet connections (module docs).
        tokio::select! {
            _ = connection.as_mut() => {}
            // Evicted, idle too long, or quiet while draining: no request is in
            // flight, so just close.
            _ = close.notified() => {}
        }
        drop(admission);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(max_connections: usize, max_per_ip: usize) -> Arc<Registry> {
        Arc::new(Registry {
            limits: ConnectionLimits {
                header_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_millis(50),
                max_connections,
                max_per_ip,
                threads: 1,
            },
            state: Mutex::default(),
            metrics: Arc::new(Metrics::new()),
            epoch: Instant::now(),
        })
    }

    /// Sends `body` to `/echo` on a keep-alive connection and returns the
    /// response body.
    fn echo(client: &mut std::net::TcpStream, body: &[u8]) -> Vec<u8> {
        use std::io::{Read, Write};
        let head = format!(
            "POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        client.write_all(&[head.as_bytes(), body].concat()).unwrap();
        let mut response = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let read = client.read(&mut chunk).unwrap();
            assert!(read > 0, "connection closed after {response:?}");
            response.extend_from_slice(&chunk[..read]);
            let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map(|value| value.trim().parse().unwrap())
                .expect("content-length");
            if response.len() >= end + 4 + length {
                return response[end + 4..end + 4 + length].to_vec();
            }
        }
    }

    /// Keep-alive calls with a request body are served without waking the
    /// other worker of the work-stealing runtime (`crate::self_wake`): the
    /// workers park about once per call (the one that served it, waiting for
    /// the next request). Without `RepollOnSelfWake` each call parked twice:
    /// hyper's body wakes rescheduled the connection's task and tokio woke
    /// the idle worker to steal it, for nothing.
    #[test]
    fn keep_alive_calls_do_not_wake_a_second_worker() {
        const CALLS: u64 = 300;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let router = Router::new().route(
            "/echo",
            axum::routing::post(|body: Bytes| async move { body }),
        );
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let address = listener.local_addr().unwrap();
        let limits = ConnectionLimits {
            threads: 0,
            ..ConnectionLimits::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = runtime.spawn(serve(
            listener,
            router,
            limits,
            Arc::new(Metrics::new()),
            async move {
                let _ = stopped.await;
            },
        ));
        let mut client = std::net::TcpStream::connect(address).unwrap();
        client.set_nodelay(true).unwrap();
        for _ in 0..20 {
            assert_eq!(echo(&mut client, b"warm up"), b"warm up");
        }
        let metrics = runtime.metrics();
        let parks = || {
            (0..metrics.num_workers())
                .map(|worker| metrics.worker_park_count(worker))
                .sum::<u64>()
        };
        let before = parks();
        for call in 0..CALLS {
            let body = format!("call {call}");
            assert_eq!(echo(&mut client, body.as_bytes()), body.as_bytes());
        }
        let parked = parks() - before;
        drop(client);
        stop.send(()).unwrap();
        runtime.block_on(serving).unwrap().unwrap();
        assert!(
            parked < CALLS * 3 / 2,
            "{parked} worker parks for {CALLS} calls"
        );
    }

    #[test]
    fn caps_evict_the_longest_idle_connection_and_never_a_busy_one() {
        let registry = registry(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = registry.admit(a).unwrap();
        let second = registry.admit(a).unwrap();
        registry.request_started(second.id);
        // Per-IP cap: `a`'s idle first connection makes room.
        let third = registry.admit(a).unwrap();
        assert!(!registry.lock().entries.contains_key(&first.id));
        registry.request_started(third.id);
        // `a` has two busy connections: a third is refused.
        assert!(registry.admit(a).is_none());
        let other = registry.admit(b).unwrap();
        registry.request_started(other.id);
        // Everything is busy at the global cap: refused.
        assert!(registry.admit(b).is_none());
        registry.request_finished(other.id);
        let replacement = registry.admit(b);
        assert!(replacement.is_some(), "the idle one is evicted");
        assert_eq!(registry.open(), 3);
        drop(second);
        assert_eq!(registry.open(), 2);
    }

    #[test]
    fn idle_connections_expire_busy_ones_do_not() {
        let registry = registry(10, 10);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let idle = registry.admit(ip).unwrap();
        let busy = registry.admit(ip).unwrap();
        registry.request_started(busy.id);
        std::thread::sleep(Duration::from_millis(80));
        registry.sweep();
        assert!(!registry.lock().entries.contains_key(&idle.id));
        assert!(registry.lock().entries.contains_key(&busy.id));
    }

    #[test]
    fn the_header_timeout_runs_from_the_first_byte_not_from_idle() {
        let registry = Arc::new(Registry {
            limits: ConnectionLimits {
                header_timeout: Duration::from_millis(50),
                idle_timeout: Duration::from_secs(60),
                max_connections: 10,
                max_per_ip: 10,
                threads: 1,
            },
            state: Mutex::default(),
            metrics: Arc::new(Metrics::new()),
            epoch: Instant::now(),
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let quiet = registry.admit(ip).unwrap();
        let sending = registry.admit(ip).unwrap();
        sending.receiving.bytes_arrived();
        std::thread::sleep(Duration::from_millis(80));
        registry.sweep();
        assert!(
            registry.lock().entries.contains_key(&quiet.id),
            "idle, not late"
        );
        assert!(
            !registry.lock().entries.contains_key(&sending.id),
            "headers too slow"
        );
    }
}
