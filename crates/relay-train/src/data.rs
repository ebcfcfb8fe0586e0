//! SFT data: JSONL, one conversation a line, turned into token ids and a loss mask.
//!
//! A line either carries its tokens — `{"messages": [...], "input_ids": [...], "loss_mask":
//! [0|1, ...]}`, used as given (the warm-up generator writes these, with the prompt and the
//! LLM-written tokens at 0) — or only `{"messages": [...]}`, which is rendered with the model's
//! chat template and tokenized, with the loss on the assistant turns alone.

use std::path::Path;

use relay_engine::chat::{ChatMessage, ChatOptions, ChatTemplate};
use relay_engine::tokenizer::Tokenizer;

use crate::error::{Result, TrainError};

/// One training sequence: `loss_mask[t] = 1` where token `t` is learned (predicted from
/// `input_ids[..t]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftExample {
    pub input_ids: Vec<u32>,
    pub loss_mask: Vec<u8>,
}

impl SftExample {
    /// Tokens that carry loss (position 0 never does: nothing predicts it).
    pub fn loss_tokens(&self) -> usize {
        self.loss_mask.iter().skip(1).filter(|&&m| m == 1).count()
    }
}

/// The examples of a file, and the lines left out because no learned token was left.
#[derive(Debug, Clone)]
pub struct SftData {
    pub examples: Vec<SftExample>,
    /// 1-based line numbers of examples with no loss token within `max_len`.
    pub skipped_lines: Vec<usize>,
}

/// What reading a file needs from the model.
pub struct Vocab<'a> {
    pub tokenizer: &'a Tokenizer,
    pub template: Option<&'a ChatTemplate>,
    pub vocab_size: usize,
}

/// Reads a JSONL file: blank lines are ignored, a malformed line is an error naming its line
/// number. Sequences are cut to `max_len` tokens; `limit` keeps the first N examples.
pub fn read_sft_jsonl(
    path: &Path,
    vocab: &Vocab<'_>,
    max_len: usize,
    limit: Option<usize>,
) -> Result<SftData> {
    if max_len < 2 {
        return Err(TrainError::InvalidInput(format!(
            "max length {max_len} leaves nothing to predict"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        TrainError::InvalidInput(format!("cannot read data file {}: {e}", path.display()))
    })?;
    let mut examples = Vec::new();
    let mut skipped_lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if limit.is_some_and(|n| examples.len() >= n) {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| TrainError::BadData {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let mut ex = parse_line(line, vocab).map_err(bad)?;
        ex.input_ids.truncate(max_len);
        ex.loss_mask.truncate(max_len);
        if ex.loss_tokens() == 0 {
            skipped_lines.push(i + 1);
            continue;
        }
        examples.push(ex);
    }
    if examples.is_empty() {
        return Err(TrainError::InvalidInput(format!(
            "{}: no example with a learned token{}",
            path.display(),
            if skipped_lines.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} left out: no loss token within --max-len)",
                    skipped_lines.len()
                )
            }
        )));
    }
    Ok(SftData {
        examples,
        skipped_lines,
    })
}

fn parse_line(line: &str, vocab: &Vocab<'_>) -> std::result::Result<SftExample, String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    match (obj.get("input_ids"), obj.get("loss_mask")) {
        (Some(ids), Some(mask)) => given_tokens(ids, mask, vocab.vocab_size),
        (Some(_), None) => Err("has `input_ids` but no `loss_mask`".into()),
        (None, Some(_)) => Err("has `loss_mask` but no `input_ids`".into()),
        (None, None) => {
            let messages = obj
                .get("messages")
                .ok_or("needs `messages` (and optionally `input_ids` + `loss_mask`)")?;
            let messages = parse_messages(messages)?;
            let template = vocab.template.ok_or(
                "the model has no chat template: give `input_ids` and `loss_mask` instead",
            )?;
            render_messages(&messages, template, vocab.tokenizer)
        }
    }
}

fn given_tokens(
    ids: &serde_json::Value,
    mask: &serde_json::Value,
    vocab_size: usize,
) -> std::result::Result<SftExample, String> {
    let ids = ids.as_array().ok_or("`input_ids` is not an array")?;
    let mask = mask.as_array().ok_or("`loss_mask` is not an array")?;
    if ids.len() != mask.len() {
        return Err(format!(
            "`input_ids` has {} entries, `loss_mask` {}",
            ids.len(),
            mask.len()
        ));
    }
    if ids.len() < 2 {
        return Err("needs at least 2 tokens".into());
    }
    let mut input_ids = Vec::with_capacity(ids.len());
    for (j, x) in ids.iter().enumerate() {
        let id = x
            .as_u64()
            .ok_or_else(|| format!("input_ids[{j}] = {x} is not a token id"))?;
        if id as usize >= vocab_size {
            return Err(format!(
                "input_ids[{j}] = {id} is out of the vocabulary (size {vocab_size})"
            ));
        }
        input_ids.push(id as u32);
    }
    let mut loss_mask = Vec::with_capacity(mask.len());
    for (j, x) in mask.iter().enumerate() {
        match x.as_u64() {
            Some(m @ (0 | 1)) => loss_mask.push(m as u8),
            _ => return Err(format!("loss_mask[{j}] = {x}: must be 0 or 1")),
        }
    }
    Ok(SftExample {
        input_ids,
        loss_mask,
    })
}

fn parse_messages(v: &serde_json::Value) -> std::result::Result<Vec<ChatMessage>, String> {
    let arr = v.as_array().ok_or("`messages` is not an array")?;
    let mut out = Vec::with_capacity(arr.len());
    for (j, m) in arr.iter().enumerate() {
        let role = m.get("role").and_then(|r| r.as_str());
        let content = m.get("content").and_then(|c| c.as_str());
        match (role, content) {
            (Some(r), Some(c)) => out.push(ChatMessage::new(r, c)),
            _ => return Err(format!("messages[{j}] needs string `role` and `content`")),
        }
    }
    if !out.iter().any(|m| m.role == "assistant") {
        return Err("no assistant message to learn".into());
    }
    Ok(out)
}

/// Renders the conversation turn by turn so that each assistant turn's tokens are known: the
/// text the template adds for assistant turn `i` is `render(..=i)` minus `render(..i, with the
/// generation prompt)`. Pieces are tokenized separately; they meet at special tokens or line
/// ends, where the tokenizer splits anyway. Message content is escaped before rendering, so
/// special-token text in it is plain text and only the template's markers are special ids.
fn render_messages(
    messages: &[ChatMessage],
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
) -> std::result::Result<SftExample, String> {
    let render = |m: &[ChatMessage], gen: bool| {
        let options = ChatOptions {
            add_generation_prompt: gen,
            ..ChatOptions::default()
        };
        template
            .render_escaped(tokenizer, m, &options)
            .map_err(|e| e.to_string())
    };
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    let mut push = |text: &str, m: u8| -> std::result::Result<(), String> {
        let t = tokenizer.encode_escaped(text).map_err(|e| e.to_string())?;
        mask.extend(std::iter::repeat_n(m, t.len()));
        ids.extend(t);
        Ok(())
    };
    let not_incremental = || {
        "the chat template does not render this conversation turn by turn (an earlier turn \
         changes when a later one is added); give `input_ids` and `loss_mask` instead"
            .to_string()
    };
    let mut done = String::new();
    for i in 0..messages.len() {
        if messages[i].role != "assistant" {
            continue;
        }
        let before = render(&messages[..i], true)?;
        let after = render(&messages[..=i], false)?;
        let head = before
            .strip_prefix(done.as_str())
            .ok_or_else(not_incremental)?;
        let turn = after
            .strip_prefix(before.as_str())
            .ok_or_else(not_incremental)?;
        push(head, 0)?;
        push(turn, 1)?;
        done = after;
    }
    let all = render(messages, false)?;
    let tail = all
        .strip_prefix(done.as_str())
        .ok_or_else(not_incremental)?;
    push(tail, 0)?;
    Ok(SftExample {
        input_ids: ids,
        loss_mask: mask,
    })
}
