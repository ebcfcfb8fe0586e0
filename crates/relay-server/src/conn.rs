//! Connections, from accept to close: HTTP/1.1 with a header read deadline (a client that
//! trickles its request head, or sits idle between requests, is dropped rather than held
//! forever), and the drain on shutdown: no new connections, requests in flight finish within
//! the grace, then any still running end with a final message ([`GraceOver`]) and the server
//! returns.
//!
//! [`GraceOver`]: crate::admission::GraceOver
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::door::Door;
use crate::AppState;

/// After the grace, how long the last events may take to reach clients before the server
/// returns anyway (a client that does not read must not hold the exit).
const LAST_WRITE: Duration = Duration::from_secs(2);

/// Serves `app` behind the [`Door`] on `listener` until `shutdown` resolves, then drains.
pub async fn serve_app(
    listener: TcpListener,
    app: Router,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Door::new(state.clone(), listener.local_addr()?).wrap(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(state.config.header_timeout);
    // Each connection task holds a `live` receiver: all gone means all connections closed.
    let (live_tx, live_rx) = watch::channel(());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    pause_after_accept_error(e).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Streamed tokens go out as written, not held back for the client's ACK.
        let _ = io.set_nodelay(true);
        let conn = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(app.clone()));
        let (mut stop, live) = (stop_rx.clone(), live_rx.clone());
        tokio::spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!("connection {peer}: {e}");
                    }
                }
                _ = async { drop(stop.wait_for(|&s| s).await) } => {
                    // Ends an idle connection now, a busy one after its current response.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(live);
        });
    }
    drop(listener);
    stop_tx.send_replace(true);
    drop(live_rx);
    let in_flight = state
        .metrics
        .running
        .load(std::sync::atomic::Ordering::Relaxed);
    tracing::info!("shutting down: no new connections; {in_flight} requests running");
    tokio::select! {
        _ = live_tx.closed() => return Ok(()),
        _ = tokio::time::sleep(state.config.shutdown_grace) => {}
        _ = state.grace_over.wait() => {}
    }
    state.grace_over.declare();
    let _ = tokio::time::timeout(LAST_WRITE, live_tx.closed()).await;
    Ok(())
}

/// A refused or reset connection is the client's business; anything else (out of file
/// descriptors) gets a pause, so the loop does not spin.
async fn pause_after_accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept: {e}");
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Resolves at the first SIGINT or SIGTERM (Ctrl-C elsewhere), and declares the grace over at
/// the second: systemd, Docker and Kubernetes stop a service with SIGTERM, a person with
/// Ctrl-C, and both mean "finish what you are doing". The handlers are installed here, before
/// the future is awaited, so a signal that comes at once is not lost.
pub fn stop_signals(state: Arc<AppState>) -> std::io::Result<impl Future<Output = ()>> {
    let mut signals = StopSignals::install()?;
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let name = signals.next().await;
        let grace = state.config.shutdown_grace.as_secs_f64();
        eprintln!(
            "{name}: finishing the requests in flight (up to {grace} s; a second signal ends them now)"
        );
        let _ = first_tx.send(());
        let name = signals.next().await;
        eprintln!("{name}: ending the requests in flight now");
        state.grace_over.declare();
    });
    Ok(async move {
        let _ = first_rx.await;
    })
}

struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
