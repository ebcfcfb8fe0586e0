//! The two views of one conversation. The SLM view is the response as written (every SLM
//! token, tags included, and every LLM token); the LLM view is the same with the call tags
//! removed. This module owns the LLM view's building blocks: what the driver prefills into
//! the LLM at a call.
//!
//! A tag rarely matches token boundaries (` <call`, `5</call>.`): tokens untouched by tags
//! pass as ids; a token cut by a tag passes as its remaining text, which the driver tokenizes
//! for the LLM. The trailing text of a token in which a tag ends (`.` above) stays in both
//! views, before the LLM's tokens: the SLM wrote the whole token, and its cache holds it.

use serde::{Deserialize, Serialize};

use crate::trace::Source;

/// One piece of the LLM view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ViewPiece {
    /// A whole token as its model wrote it. With a shared tokenizer the driver passes `id`;
    /// with different tokenizers it tokenizes `text` when `source` is the other model.
    Token {
        id: u32,
        text: String,
        source: Source,
    },
    /// What is left of an SLM token after a tag was cut out of it; always tokenized by the driver.
    Text { text: String },
}

impl ViewPiece {
    pub fn text(&self) -> &str {
        match self {
            ViewPiece::Token { text, .. } | ViewPiece::Text { text } => text,
        }
    }
}

/// The LLM-view pieces the LLM's cache does not hold yet, handed out at each call.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LlmDelta {
    /// True at the session's first call: the LLM's sequence is empty, so the driver prefills
    /// the prompt (in the LLM's template) before `pieces`.
    pub first_call: bool,
    pub pieces: Vec<ViewPiece>,
}

impl LlmDelta {
    /// The delta as text (the bridge when the tokenizers differ).
    pub fn text(&self) -> String {
        self.pieces.iter().map(ViewPiece::text).collect()
    }

    /// The delta as ids when every piece is a whole token (the common shared-tokenizer case);
    /// `None` when some piece must be tokenized.
    pub fn token_ids(&self) -> Option<Vec<u32>> {
        self.pieces
            .iter()
            .map(|p| match p {
                ViewPiece::Token { id, .. } => Some(*id),
                ViewPiece::Text { .. } => None,
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }
}
