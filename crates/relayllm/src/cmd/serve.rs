//! `relayllm serve`: the OpenAI-compatible relay server (relay-server) on a loaded pair.
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

use super::common::ModelArgs;

#[derive(Args)]
pub struct ServeArgs {
    /// The small model: a path, `slm`, or an `http://` URL of an OpenAI-compatible server.
    #[arg(long, default_value = "slm")]
    pub slm: String,
    /// The large model: a path, `llm`, or an `http://` URL.
    #[arg(long, default_value = "llm")]
    pub llm: String,
    /// Address to listen on. 127.0.0.1 takes only this machine's clients; 0.0.0.0 every
    /// interface's (put a key on it: --api-key-file).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (the address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on the API (not on /, /health, /metrics). A key
    /// given here shows in `ps` to every user of the machine: prefer --api-key-file or the
    /// RELAYLLM_API_KEY environment variable.
    #[arg(long, conflicts_with = "api_key_file")]
    pub api_key: Option<String>,
    /// Read the API key from this file (its first line; e.g. a Docker or Kubernetes secret).
    /// Without --api-key or this flag, the key is taken from $RELAYLLM_API_KEY when set.
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
    /// Also answer requests whose `Host` is NAME (repeatable; `*` any). Localhost names, the
    /// loopback addresses and the bound address are always answered (any address when bound
    /// to 0.0.0.0). Other names are refused with 403, so that a web page cannot reach this
    /// server through DNS rebinding; add the names clients use, e.g. behind a reverse proxy.
    #[arg(long, value_name = "NAME")]
    pub allowed_host: Vec<String>,
    /// Let web pages of ORIGIN (`https://app.example.com`, scheme://host[:port]) call the API
    /// from the browser (repeatable; `*` any page of any site). Requests that carry another
    /// page's `Origin` are refused with 403 (the page at / is this server's own and needs no
    /// flag); clients that send no Origin (curl, SDKs) are not affected.
    #[arg(long, value_name = "ORIGIN", value_parser = parse_origin)]
    pub allow_origin: Vec<String>,
    /// Requests decoding at once.
    #[arg(long, default_value_t = 4)]
    pub max_concurrency: usize,
    /// Requests that may wait for a slot; more are answered 429.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Seconds a request may take, waiting included.
    #[arg(long, default_value_t = 300)]
    pub request_timeout: u64,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// max_tokens when a request gives none.
    #[arg(long, default_value_t = 256)]
    pub default_max_tokens: usize,
    /// Seconds a client may take to send a request's head (and a kept-alive connection may
    /// sit idle); slower connections are closed, so clients trickling bytes cannot pile up.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub header_timeout: u64,
    /// Seconds a client may take to send a request's body once its head is in; slower ones
    /// are answered 408 and closed.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub body_timeout: u64,
    /// On SIGTERM or SIGINT: stop accepting, let requests in flight finish for up to SECS,
    /// then end those still running with a final error event and `[DONE]` (503 when not
    /// streaming) and exit, at most ~3 s later. A second signal ends them at once. Keep it
    /// below your supervisor's kill timeout (docker stop: 10 s, Kubernetes: 30 s).
    #[arg(long, value_name = "SECS", default_value_t = 25)]
    pub shutdown_grace: u64,
    /// Let clients replace the served weights: `POST /admin/weights {"model": "slm", "path":
    /// "/abs/path"}` loads a .gguf or safetensors folder of the same shape and vocabulary from
    /// this machine and swaps it in (requests in flight finish on the old weights). For a
    /// trainer that keeps the rollouts on its current policy. Off: the route answers 403.
    #[arg(long)]
    pub allow_weight_sync: bool,
    #[command(flatten)]
    pub models: ModelArgs,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let api_key = api_key(args.api_key, args.api_key_file.as_deref())?;
    let pair = args.models.load_pair(&args.slm, &args.llm)?;
    let mut allowed_hosts = args.allowed_host;
    // A name given to listen on is a name clients use.
    allowed_hosts.push(args.host.clone());
    let config = relay_server::ServerConfig {
        api_key,
        allowed_hosts,
        allowed_origins: args.allow_origin,
        header_timeout: Duration::from_secs(args.header_timeout.max(1)),
        body_timeout: Duration::from_secs(args.body_timeout.max(1)),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        max_concurrency: args.max_concurrency,
        queue: args.queue,
        request_timeout: Duration::from_secs(args.request_timeout.max(1)),
        max_body_bytes: args.max_body_bytes,
        default_max_tokens: args.default_max_tokens,
        weight_sync: if args.allow_weight_sync {
            Some(args.models.load_options()?)
        } else {
            None
        },
    };
    let state = relay_server::AppState::new(pair, config);
    relay_server::run(&args.host, args.port, state).context("serving")
}

/// The key from the flag, else its file, else `$RELAYLLM_API_KEY`; an empty one is an error
/// (it would let any `Bearer` header in).
fn api_key(flag: Option<String>, file: Option<&std::path::Path>) -> Result<Option<String>> {
    let key = match (flag, file) {
        (Some(k), _) => Some(k),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the API key from {}", path.display()))?;
            Some(text.lines().next().unwrap_or_default().trim().to_string())
        }
        (None, None) => std::env::var("RELAYLLM_API_KEY").ok(),
    };
    if key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        anyhow::bail!("the API key is empty (--api-key, --api-key-file or RELAYLLM_API_KEY)");
    }
    Ok(key)
}

/// `scheme://host[:port]` as browsers send it in `Origin`, or `*`/`null`.
fn parse_origin(s: &str) -> Result<String, String> {
    let s = s.trim_end_matches('/');
    if s == "*" || s == "null" {
        return Ok(s.to_string());
    }
    match s.split_once("://") {
        Some((scheme, authority))
            if !scheme.is_empty() && !authority.is_empty() && !authority.contains('/') =>
        {
            Ok(s.to_string())
        }
        _ => Err(format!(
            "{s:?} is not an origin: scheme://host[:port], no path (e.g. https://app.example.com)"
        )),
    }
}
