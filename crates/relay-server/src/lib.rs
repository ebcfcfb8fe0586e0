//! relay-server: the axum HTTP server — OpenAI-compatible API with streaming and per-model
//! provenance, the token-level API for RL frameworks, grading and reward endpoints, metrics,
//! and the page that shows where the LLM wrote.
//!
//! Not built yet: see the serving issue.
