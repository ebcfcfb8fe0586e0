//! The native endpoints RL frameworks use: token ids in, ids + source mask + SLM log-probs
//! out (`/relay/generate`); the SLM's tokenizer and chat template (`/tokenize`), so a client
//! builds `prompt_ids` exactly as the server's relay reads them; the grader (`/grade`); the
//! group reward (`/reward/group`).
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use relay_core::reward::{group_rewards, RewardKind, RhoKind, Rollout};
use relay_core::Source;
use relay_engine::tokenizer::SpecialTokens;
use relay_grader::GradeMode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{
    check_prompt, finish, json_object, messages, model_choice, off_runtime, refused, settings,
    special_tokens, start,
};
use crate::error::ApiError;
use crate::job::{ModelChoice, ValidJob};
use crate::AppState;

pub async fn relay_generate(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrived = Instant::now();
    let st = state.clone();
    let valid = off_runtime(move || {
        let state = st;
        let obj = json_object(body)?;
        let model = model_choice(&obj, Some(ModelChoice::Relay))?;
        let ids: Vec<u32> = match obj.get("prompt_ids") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_u64()
                        .filter(|&t| t <= u32::MAX as u64)
                        .map(|t| t as u32)
                })
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    ApiError::invalid("prompt_ids", "prompt_ids must be a list of token ids")
                })?,
            _ => {
                return Err(ApiError::invalid(
                    "prompt_ids",
                    "prompt_ids (a list of token ids) is required",
                ))
            }
        };
        let s = settings(&state, &obj)?;
        check_prompt(&state, &ids, "prompt_ids", s.max_tokens)?;
        let served = state.served.current();
        let llm_prompt = match &served.pair.llm_tokenizer {
            None => ids.clone(),
            Some(tok) => served
                .pair
                .slm_tokenizer
                .translate(&ids, tok)
                .map_err(|e| ApiError::invalid("prompt_ids", e.to_string()))?,
        };
        Ok(ValidJob {
            model,
            slm_prompt: ids,
            llm_prompt,
            config: s.config,
            sampling: s.sampling,
            stop: Vec::new(),
            n: 1,
        })
    })
    .await;
    let job = match valid {
        Ok(j) => j,
        Err(e) => return refused(&state, e),
    };
    let running = match start(&state, job, arrived).await {
        Ok(r) => r,
        Err(e) => return refused(&state, e),
    };
    let versions = running.versions;
    let choice = match finish(running).await {
        Ok(mut c) => c.remove(0),
        Err(e) => return e.into_response(),
    };
    let out = &choice.relay;
    let mask: Vec<u8> = out
        .sources
        .iter()
        .map(|s| u8::from(*s == Source::Llm))
        .collect();
    Json(json!({
        "ids": out.tokens,
        "source_mask": mask,
        "slm_logprobs": out.slm_logprobs,
        "calls": out.trace.calls,
        "text": out.text,
        "finish_reason": choice.finish_reason,
        "trace": out.trace,
        "weights_versions": versions,
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GradeRequest {
    gold: String,
    pred: String,
    #[serde(default = "default_mode")]
    mode: GradeMode,
}

fn default_mode() -> GradeMode {
    GradeMode::Verify
}

fn parse<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let obj = json_object(body)?;
    serde_json::from_value(Value::Object(obj))
        .map_err(|e| ApiError::bad_json(format!("invalid request: {e}")))
}

pub async fn grade(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req: GradeRequest = match parse(body) {
        Ok(r) => r,
        Err(e) => return refused(&state, e),
    };
    let correct =
        tokio::task::spawn_blocking(move || relay_grader::grade(req.mode, &req.gold, &req.pred))
            .await;
    match correct {
        Ok(correct) => Json(json!({"correct": correct})).into_response(),
        Err(e) => ApiError::internal(format!("grader failed: {e}")).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RewardRequest {
    rollouts: Vec<Rollout>,
    #[serde(default)]
    reward: RewardKind,
    #[serde(default)]
    rho: RhoKind,
}

pub async fn reward_group(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req: RewardRequest = match parse(body) {
        Ok(r) => r,
        Err(e) => return refused(&state, e),
    };
    let group = relay_core::reward::RolloutGroup {
        rollouts: req.rollouts,
    };
    Json(group_rewards(&group, req.reward, req.rho)).into_response()
}

/// `{"messages": [...]}` (chat template applied, with the assistant header) or `{"prompt":
/// "text"}` (as is) → `{"tokens": [...], "text": rendered, "special_tokens": mode}` in the SLM's
/// vocabulary: the `prompt_ids` that `/relay/generate` takes. `mode` says how special-token
/// text was read: `template` for messages (the template's markers are special, the content
/// never is; the only mode a chat takes), `parse` (default) or `plain` for a prompt, as the
/// request's `special_tokens` asks.
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let st = state.clone();
    let result = off_runtime(move || {
        let obj = json_object(body)?;
        let served = st.served.current();
        let slm = &served.models.slm;
        let (text, tokens, mode) = match (obj.get("messages"), obj.get("prompt")) {
            (Some(_), None) => {
                let msgs = messages(&obj)?;
                let mode = special_tokens(&obj, &[SpecialTokens::Template])?;
                let prompt = slm
                    .prompt(&msgs, true)
                    .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
                (prompt.text, prompt.ids, mode)
            }
            (None, Some(Value::String(p))) => {
                let mode = special_tokens(&obj, &[SpecialTokens::Parse, SpecialTokens::Plain])?;
                let ids = slm
                    .tokenizer
                    .encode_with(p, mode)
                    .map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
                (p.clone(), ids, mode)
            }
            (None, Some(_)) => return Err(ApiError::invalid("prompt", "prompt must be text")),
            _ => {
                return Err(ApiError::bad_json(
                    "give exactly one of `messages` (a chat) or `prompt` (text)",
                ))
            }
        };
        Ok(json!({"tokens": tokens, "text": text, "special_tokens": mode.name()}))
    })
    .await;
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => refused(&state, e),
    }
}
