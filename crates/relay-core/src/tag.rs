//! The streaming call-tag parser: finds `<call>` ws* digits ws* `</call>` in the SLM's decoded
//! text as it arrives, chunk by chunk, whatever the chunk boundaries.
//!
//! The grammar, decided one character at a time so that no chunking can change the result:
//!
//! - A tag starts at an occurrence of the open string and runs to the **first** close string
//!   after it. What lies between (the body) is trimmed of whitespace:
//!   all ASCII digits → [`TagEvent::Call`]; empty → [`MalformedKind::Empty`];
//!   containing another open string (`<call><call>5</call>`) → [`MalformedKind::Nested`];
//!   anything else (`x`, `-3`, `1 2`) → [`MalformedKind::NotANumber`].
//! - `n` is accumulated with saturation, so `<call>99999999999999999999999</call>` is
//!   `u64::MAX`, a huge request that the limits then clamp; it never overflows.
//! - A body longer than [`TagConfig::max_body_len`] bytes cannot be a command: the open string
//!   alone becomes [`MalformedKind::Unclosed`] and what followed it is scanned again as text.
//!   The same happens to an open tag at [`CallTagParser::finish`]. Only the open string is
//!   taken, so prose after a stray `<call>` is never swallowed.
//! - Text that might still become a tag (a prefix of the open string, or an open tag's body)
//!   is held back; [`CallTagParser::finish`] decides it.
//!
//! Positions are byte offsets into the concatenation of every chunk pushed so far, so a driver
//! can map a tag back to the tokens it came from. The events of a stream tile it exactly:
//! each starts where the previous one ended.

use serde::{Deserialize, Serialize};

use crate::error::{RelayError, Result};

/// The command's tag strings. Round-trips through serde; every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TagConfig {
    pub open: String,
    pub close: String,
    /// Longest body (bytes between open and close) still read as a possible command.
    pub max_body_len: usize,
}

impl Default for TagConfig {
    fn default() -> Self {
        TagConfig {
            open: "<call>".into(),
            close: "</call>".into(),
            max_body_len: 64,
        }
    }
}

impl TagConfig {
    /// The command asking for `n` tokens, as the SLM should write it (warm-up data uses this).
    pub fn format(&self, n: u64) -> String {
        format!("{}{n}{}", self.open, self.close)
    }

    /// Checks the strings are usable: both non-empty.
    pub fn validate(&self) -> Result<()> {
        if self.open.is_empty() {
            return Err(RelayError::InvalidConfig {
                field: "tags.open",
                reason: "must not be empty".into(),
            });
        }
        if self.close.is_empty() {
            return Err(RelayError::InvalidConfig {
                field: "tags.close",
                reason: "must not be empty".into(),
            });
        }
        Ok(())
    }
}

/// Why a tag-shaped piece of text is not a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MalformedKind {
    /// `<call></call>` or only whitespace inside.
    Empty,
    /// The body is not ws* digits ws* (`x`, `-3`, `1 2`).
    NotANumber,
    /// Another open string inside the body: `<call><call>5</call>`.
    Nested,
    /// An open string with no close within `max_body_len`, or still open at `finish`.
    /// The event covers the open string only.
    Unclosed,
}

/// What the parser found. `start..end` are byte offsets in the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TagEvent {
    /// Plain text, decided not to be part of any tag.
    Text { start: usize, text: String },
    /// A well-formed command asking for `n` tokens.
    Call { start: usize, end: usize, n: u64 },
    /// Tag-shaped text that is not a command.
    Malformed {
        start: usize,
        end: usize,
        kind: MalformedKind,
    },
}

impl TagEvent {
    pub fn start(&self) -> usize {
        match self {
            TagEvent::Text { start, .. }
            | TagEvent::Call { start, .. }
            | TagEvent::Malformed { start, .. } => *start,
        }
    }

    pub fn end(&self) -> usize {
        match self {
            TagEvent::Text { start, text } => start + text.len(),
            TagEvent::Call { end, .. } | TagEvent::Malformed { end, .. } => *end,
        }
    }
}

#[derive(Debug, Clone)]
enum State {
    /// Outside a tag; `held` is a proper prefix of the open string that may still complete.
    Text { held: String },
    /// After an open string that began at `start`; `body` is everything since.
    Body { start: usize, body: String },
}

/// Incremental tag finder. Push chunks, collect events, call [`finish`](Self::finish) at the
/// end of the stream (or wherever the stream is interrupted, e.g. when the LLM writes next).
#[derive(Debug, Clone)]
pub struct CallTagParser {
    config: TagConfig,
    state: State,
    /// Byte offset of the next character to be read.
    pos: usize,
    /// Plain text decided during the current push, and where it starts.
    text: String,
    text_start: usize,
}

impl CallTagParser {
    pub fn new(config: TagConfig) -> Result<Self> {
        config.validate()?;
        Ok(CallTagParser {
            config,
            state: State::Text {
                held: String::new(),
            },
            pos: 0,
            text: String::new(),
            text_start: 0,
        })
    }

    pub fn config(&self) -> &TagConfig {
        &self.config
    }

    /// Total bytes pushed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes decided so far: every event returned covers `0..decided()`; the rest is held back.
    pub fn decided(&self) -> usize {
        match &self.state {
            State::Text { held } => self.pos - held.len(),
            State::Body { start, .. } => *start,
        }
    }

    /// Reads `chunk` and returns the events it decided, in stream order.
    pub fn push(&mut self, chunk: &str) -> Vec<TagEvent> {
        let mut out = Vec::new();
        self.push_into(chunk, &mut out);
        out
    }

    /// Like [`push`](Self::push), appending to `out`.
    pub fn push_into(&mut self, chunk: &str, out: &mut Vec<TagEvent>) {
        self.text_start = self.decided();
        for c in chunk.chars() {
            self.read_char(c, out);
        }
        self.flush_text(out);
    }

    /// Decides everything held back: an open tag becomes `Unclosed` (its body is scanned again
    /// as text), a partial open string becomes text. The parser stays usable and keeps its
    /// positions, so this also marks an interruption of the stream.
    pub fn finish(&mut self) -> Vec<TagEvent> {
        let mut out = Vec::new();
        self.text_start = self.decided();
        loop {
            match std::mem::replace(
                &mut self.state,
                State::Text {
                    held: String::new(),
                },
            ) {
                State::Body { start, body } => self.reject_open(start, body, &mut out),
                State::Text { held } => {
                    self.text.push_str(&held);
                    break;
                }
            }
        }
        self.flush_text(&mut out);
        out
    }

    fn read_char(&mut self, c: char, out: &mut Vec<TagEvent>) {
        self.pos += c.len_utf8();
        match &mut self.state {
            State::Text { held } => {
                held.push(c);
                // Drop characters from the front until `held` could still start the open string;
                // a dropped character cannot begin a tag, so it is plain text for good.
                while !held.is_empty() && !self.config.open.starts_with(held.as_str()) {
                    let first = held.chars().next().expect("non-empty");
                    self.text.push(first);
                    held.drain(..first.len_utf8());
                }
                if *held == self.config.open {
                    let start = self.pos - held.len();
                    self.flush_text(out);
                    self.state = State::Body {
                        start,
                        body: String::new(),
                    };
                }
            }
            State::Body { start, body } => {
                body.push(c);
                let start = *start;
                let close = &self.config.close;
                if body.ends_with(close.as_str()) {
                    let event = classify(
                        start,
                        self.pos,
                        &body[..body.len() - close.len()],
                        &self.config.open,
                    );
                    self.state = State::Text {
                        held: String::new(),
                    };
                    self.text_start = self.pos;
                    out.push(event);
                } else if body.len() >= self.config.max_body_len + close.len() {
                    // Even a close completing on the next character would leave a body longer
                    // than the limit: this open string is not a command.
                    let body = std::mem::take(body);
                    self.state = State::Text {
                        held: String::new(),
                    };
                    self.reject_open(start, body, out);
                }
            }
        }
    }

    /// Emits the open string at `start` as `Unclosed` and reads `body` again as fresh text.
    fn reject_open(&mut self, start: usize, body: String, out: &mut Vec<TagEvent>) {
        let open_end = start + self.config.open.len();
        out.push(TagEvent::Malformed {
            start,
            end: open_end,
            kind: MalformedKind::Unclosed,
        });
        self.pos = open_end;
        self.text_start = open_end;
        for c in body.chars() {
            self.read_char(c, out);
        }
    }

    fn flush_text(&mut self, out: &mut Vec<TagEvent>) {
        if !self.text.is_empty() {
            out.push(TagEvent::Text {
                start: self.text_start,
                text: std::mem::take(&mut self.text),
            });
        }
        self.text_start = self.decided();
    }
}

/// Decides what a closed tag `open body close` spanning `start..end` is.
fn classify(start: usize, end: usize, body: &str, open: &str) -> TagEvent {
    if body.contains(open) {
        return TagEvent::Malformed {
            start,
            end,
            kind: MalformedKind::Nested,
        };
    }
    let digits = body.trim();
    if digits.is_empty() {
        return TagEvent::Malformed {
            start,
            end,
            kind: MalformedKind::Empty,
        };
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return TagEvent::Malformed {
            start,
            end,
            kind: MalformedKind::NotANumber,
        };
    }
    let n = digits.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    });
    TagEvent::Call { start, end, n }
}

/// Merges adjacent `Text` events, so that two event lists of the same stream compare equal
/// whatever chunking produced them.
pub fn coalesce_text(events: impl IntoIterator<Item = TagEvent>) -> Vec<TagEvent> {
    let mut out: Vec<TagEvent> = Vec::new();
    for e in events {
        if let (Some(TagEvent::Text { text: prev, .. }), TagEvent::Text { text, .. }) =
            (out.last_mut(), &e)
        {
            prev.push_str(text);
            continue;
        }
        out.push(e);
    }
    out
}
