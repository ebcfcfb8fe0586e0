//! relay-server: the axum HTTP server — OpenAI-compatible API with streaming and per-model
//! provenance, the token-level API for RL frameworks, grading and reward endpoints, metrics,
//! and the page that shows where the LLM wrote.
//!
//! The data path reads top to bottom: a handler validates the body once into a
//! [`job::ValidJob`], [`admission`] hands it a concurrency slot (or 429), [`job::run_job`]
//! runs the relay on a blocking thread, and the handler turns its pieces into JSON or SSE.
//! Each request owns a cancel flag that is set when its client goes away or its time is up,
//! so the relay frees its sequences promptly.
//!
//! In front of the handlers: [`conn`] accepts connections (header read deadline, the drain on
//! shutdown) and [`door`] checks each request (`Host`, `Origin`, API key, body read deadline).
//!
//! Continuous batching: each request decodes on its own thread, and the in-process engines sit
//! behind a [`BatchingEngine`] that runs the decode steps of all running requests as one batch.
//!
//! The pair is swappable ([`weights`]): with `--allow-weight-sync` a trainer can load new SLM
//! weights between rollout batches; each job holds the pair it started on.

pub mod admission;
pub mod api;
pub mod conn;
pub mod door;
pub mod error;
pub mod job;
pub mod metrics;
pub mod native;
pub mod weights;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::Router;
use relay_engine::batching::{BatchStats, DEFAULT_JOIN_WINDOW};
use relay_engine::model::ModelPair;

pub use conn::serve_app;
pub use error::ApiError;

/// Server settings (the `serve` command's flags).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// When set, `/v1/*` and the native endpoints need `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// `Host` names answered besides localhost names and the bound address; `*` any.
    pub allowed_hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`) whose pages may call the API besides the server's
    /// own; `*` any.
    pub allowed_origins: Vec<String>,
    /// Requests decoding at once.
    pub max_concurrency: usize,
    /// Requests that may wait for a slot; one more is answered 429.
    pub queue: usize,
    /// Longest a request may take, waiting included.
    pub request_timeout: Duration,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Default `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
    /// Longest wait for a request's head (and between requests on a kept-alive connection).
    pub header_timeout: Duration,
    /// Longest wait for a request's body, once its head is in.
    pub body_timeout: Duration,
    /// On shutdown, how long requests in flight may take to finish before they are ended
    /// with a final message.
    pub shutdown_grace: Duration,
    /// `Some`: `POST /admin/weights` may load new weights from server-local paths, with these
    /// options (`--allow-weight-sync`); `None` (the default): it answers 403.
    pub weight_sync: Option<relay_engine::LoadOptions>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            max_concurrency: 4,
            queue: 64,
            request_timeout: Duration::from_secs(300),
            max_body_bytes: 2 * 1024 * 1024,
            default_max_tokens: 256,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(25),
            weight_sync: None,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    /// The pair requests run on (with its batchers); swapped whole by a weight sync.
    pub served: weights::ServedModels,
    pub config: ServerConfig,
    pub metrics: metrics::Metrics,
    pub slots: admission::Slots,
    /// Declared when a shutdown's grace runs out.
    pub grace_over: admission::GraceOver,
}

impl AppState {
    /// With more than one request decoding at once, each in-process engine gets a
    /// [`BatchingEngine`] in front, so the decode steps of all running requests (SLM steps, and
    /// LLM steps of calls that coincide) run as one batch. Remote engines are left alone: the
    /// server behind them batches its own requests.
    pub fn new(models: ModelPair, config: ServerConfig) -> Arc<Self> {
        let window = (config.max_concurrency > 1).then_some(DEFAULT_JOIN_WINDOW);
        let served = weights::ServedModels::new(models, window, config.weight_sync.as_ref());
        let slots = admission::Slots::new(config.max_concurrency, config.queue);
        Arc::new(Self {
            served,
            config,
            metrics: metrics::Metrics::default(),
            slots,
            grace_over: admission::GraceOver::default(),
        })
    }
}

/// All routes, with auth, the body limit and OpenAI-style 404s and 405s. [`serve_app`] puts
/// them behind the [`door::Door`].
pub fn router(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/v1/models", get(api::list_models))
        .route("/v1/chat/completions", post(api::chat_completions))
        .route("/v1/completions", post(api::completions))
        .route("/relay/generate", post(native::relay_generate))
        .route("/tokenize", post(native::tokenize))
        .route("/grade", post(native::grade))
        .route("/reward/group", post(native::reward_group))
        .route("/admin/weights", post(weights::sync_weights))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            door::require_key,
        ));
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .merge(protected)
        .fallback(|req: Request| async move { ApiError::not_found(req.uri().path()) })
        .method_not_allowed_fallback(|req: Request| async move {
            ApiError::method_not_allowed(req.method().as_str(), req.uri().path())
        })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}

/// Serves [`router`] until `shutdown` resolves, then drains (see [`conn`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_app(listener, router(state.clone()), state, shutdown).await
}

const PAGE: &str = include_str!("page.html");

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn health(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    use std::sync::atomic::Ordering::Relaxed;
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({
            "status": "ok",
            "running": state.metrics.running.load(Relaxed),
            "queued": state.metrics.queue_depth.load(Relaxed),
        })),
    )
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render()
            + &batch_metrics(&state.served.batch_stats())
            + &weights::metrics_text(state.served.current().versions),
    )
}

fn batch_metrics(batchers: &[(&'static str, BatchStats)]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if batchers.is_empty() {
        return s;
    }
    s.push_str("# HELP relay_decode_batches_total Batched decode steps run, by model.\n# TYPE relay_decode_batches_total counter\n");
    for (name, b) in batchers {
        let _ = writeln!(
            s,
            "relay_decode_batches_total{{model=\"{name}\"}} {}",
            b.batches
        );
    }
    s.push_str("# HELP relay_decode_batched_steps_total Sequence steps those batches held (÷ batches = mean batch size).\n# TYPE relay_decode_batched_steps_total counter\n");
    for (name, b) in batchers {
        let _ = writeln!(
            s,
            "relay_decode_batched_steps_total{{model=\"{name}\"}} {}",
            b.steps
        );
    }
    s
}

/// Binds `host:port`, prints `listening on http://ADDR` to stdout, and serves until SIGTERM or
/// SIGINT, then drains within the shutdown grace: the blocking entry point for the CLI (which
/// has no runtime of its own).
pub fn run(host: &str, port: u16, state: Arc<AppState>) -> std::io::Result<()> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let served = rt.block_on(async move {
        let stop = conn::stop_signals(state.clone())?;
        let listener = tokio::net::TcpListener::bind((host, port)).await?;
        println!("listening on http://{}", listener.local_addr()?);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        serve(listener, state, stop).await
    });
    // A job stuck in an engine call (a remote LLM that does not answer) must not hold the
    // exit: its thread is left behind.
    rt.shutdown_timeout(Duration::from_secs(1));
    served
}
