//! Chat templates: the model's own Jinja template (from GGUF metadata `tokenizer.chat_template`
//! or `tokenizer_config.json`) rendered with minijinja, set up to behave like HF transformers'
//! Jinja environment — `trim_blocks`/`lstrip_blocks`, Python string methods (`.strip()`,
//! `.startswith()`, `.split()` via minijinja-contrib's pycompat), `raise_exception`, and a
//! `tojson` that prints what Python's `json.dumps(ensure_ascii=False)` prints.
//!
//! [`ChatTemplate::prompt`] is how a conversation becomes token ids: the template's own markers
//! are special tokens, the messages' text never is (see [`crate::tokenizer`] for how).

use std::path::Path;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind};

use crate::error::{EngineError, Result};
use crate::tokenizer::{
    gguf_u32, model_tokenizer_source, read_gguf_content, special_token_content, Tokenizer,
    TokenizerSource,
};

/// Qwen2.5's chat template, copied from the real SLM's GGUF metadata by
/// `tests/fixtures/extract_chat_template.py` (the tiny test models carry it too).
pub const QWEN2_5_CHAT_TEMPLATE: &str =
    include_str!("../tests/fixtures/qwen2_5_chat_template.jinja");

/// Name the one template is registered under in its environment.
const TEMPLATE_NAME: &str = "chat";

/// One turn of a conversation, as templates see it (`message.role`, `message.content`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (templates may accept others, e.g. `tool`).
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Everything a render takes besides the messages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatOptions {
    /// Append the header that opens the assistant's turn.
    pub add_generation_prompt: bool,
    /// Qwen3's thinking switch; `None` leaves `enable_thinking` undefined (the template's default).
    pub enable_thinking: Option<bool>,
    /// Tool definitions (a JSON array); `None` renders with `tools = none`.
    pub tools: Option<serde_json::Value>,
}

/// A prompt as a model reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// The rendered template (or the raw text).
    pub text: String,
    /// Its tokens; from a template, special ids for the template's markers only
    /// ([`SpecialTokens::Template`]).
    ///
    /// [`SpecialTokens::Template`]: crate::tokenizer::SpecialTokens::Template
    pub ids: Vec<u32>,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("source_len", &self.source.len())
            .finish()
    }
}

impl Clone for ChatTemplate {
    fn clone(&self) -> Self {
        Self::new(self.source.clone())
            .expect("a template that compiled once compiles again")
            .with_special_tokens(self.bos_token.clone(), self.eos_token.clone())
    }
}

impl ChatTemplate {
    /// Compiles `source`; syntax errors are reported here, not at render time.
    pub fn new(source: impl Into<String>) -> Result<Self> {
        let source = source.into();
        let mut env = Environment::new();
        // What transformers' `ImmutableSandboxedEnvironment` uses for chat templates.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| {
                EngineError::InvalidInput(format!("chat template does not compile: {e:#}"))
            })?;
        Ok(Self {
            env,
            source,
            bos_token: String::new(),
            eos_token: String::new(),
        })
    }

    /// Sets the strings templates see as `bos_token` / `eos_token`.
    pub fn with_special_tokens(mut self, bos: impl Into<String>, eos: impl Into<String>) -> Self {
        self.bos_token = bos.into();
        self.eos_token = eos.into();
        self
    }

    /// From GGUF metadata: `tokenizer.chat_template`, with BOS/EOS strings from the token list.
    pub fn from_gguf(content: &candle_core::quantized::gguf_file::Content) -> Result<Self> {
        let source = content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| {
                EngineError::Unsupported("GGUF metadata has no tokenizer.chat_template".into())
            })?;
        let token = |key: &str| -> String {
            let tokens = content
                .metadata
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok());
            let id = content.metadata.get(key).and_then(gguf_u32);
            match (tokens, id) {
                (Some(tokens), Some(id)) => tokens
                    .get(id as usize)
                    .and_then(|t| t.to_string().ok())
                    .cloned()
                    .unwrap_or_default(),
                _ => String::new(),
            }
        };
        let (bos, eos) = (
            token("tokenizer.ggml.bos_token_id"),
            token("tokenizer.ggml.eos_token_id"),
        );
        Ok(Self::new(source.clone())?.with_special_tokens(bos, eos))
    }

    /// From a HF model folder's files: `chat_template.jinja` if present (newer exports), else
    /// `chat_template` in `tokenizer_config.json` (a string, or a list of named templates of
    /// which `default` is taken).
    pub fn from_tokenizer_config(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(EngineError::NotFound(path.to_path_buf()));
        }
        let malformed = |reason: String| EngineError::Malformed {
            path: path.to_path_buf(),
            reason,
        };
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)
            .map_err(|e| malformed(e.to_string()))?;
        let jinja_file = path.with_file_name("chat_template.jinja");
        let source = if jinja_file.is_file() {
            std::fs::read_to_string(jinja_file)?
        } else {
            match config.get("chat_template") {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Array(named)) => named
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| malformed("chat_template list has no `default` entry".into()))?,
                _ => {
                    return Err(EngineError::Unsupported(format!(
                        "{} has no chat_template",
                        path.display()
                    )))
                }
            }
        };
        let bos = special_token_content(config.get("bos_token")).unwrap_or_default();
        let eos = special_token_content(config.get("eos_token")).unwrap_or_default();
        Ok(Self::new(source)?.with_special_tokens(bos, eos))
    }

    /// The template that belongs to a model path (same lookup as
    /// [`crate::tokenizer::Tokenizer::load_for_model`]).
    pub fn load_for_model(path: impl AsRef<Path>) -> Result<Self> {
        match model_tokenizer_source(path.as_ref())? {
            TokenizerSource::Gguf(p) => {
                let content = read_gguf_content(&p)?;
                Self::from_gguf(&content)
            }
            TokenizerSource::Json(p) => {
                Self::from_tokenizer_config(p.with_file_name("tokenizer_config.json"))
            }
        }
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation; `add_generation_prompt` opens the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(
            messages,
            &ChatOptions {
                add_generation_prompt,
                ..ChatOptions::default()
            },
        )
    }

    /// Renders and tokenizes a conversation so that only the template's own markers are
    /// special tokens: special-token text in a message (any role) or in the tool definitions
    /// is tokenized as plain text. Where no message holds such text, the ids are exactly those
    /// of `tokenizer.encode(render_with(..))`.
    pub fn prompt(
        &self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        options: &ChatOptions,
    ) -> Result<Prompt> {
        let escaped = self.render_escaped(tokenizer, messages, options)?;
        Ok(Prompt {
            ids: tokenizer.encode_escaped(&escaped)?,
            text: tokenizer.unescape(&escaped).into_owned(),
        })
    }

    /// [`Self::render_with`] with the messages' roles and content and the tool definitions
    /// escaped by [`Tokenizer::escape_special_text`]: text for [`Tokenizer::encode_escaped`]
    /// (pieces of it too, cut where renders of a growing conversation meet).
    pub fn render_escaped(
        &self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        options: &ChatOptions,
    ) -> Result<String> {
        let escape = |s: &str| tokenizer.escape_special_text(s).into_owned();
        let messages: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage::new(escape(&m.role), escape(&m.content)))
            .collect();
        let options = ChatOptions {
            tools: options.tools.as_ref().map(|t| escape_json(t, &escape)),
            ..options.clone()
        };
        self.render_with(&messages, &options)
    }

    pub fn render_with(&self, messages: &[ChatMessage], options: &ChatOptions) -> Result<String> {
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", Value::from_serialize(messages)),
            (
                "add_generation_prompt",
                Value::from(options.add_generation_prompt),
            ),
            ("bos_token", Value::from(self.bos_token.as_str())),
            ("eos_token", Value::from(self.eos_token.as_str())),
            (
                "tools",
                options
                    .tools
                    .as_ref()
                    .map(Value::from_serialize)
                    .unwrap_or(Value::from(())),
            ),
        ];
        if let Some(thinking) = options.enable_thinking {
            ctx.push(("enable_thinking", Value::from(thinking)));
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .expect("registered in new()");
        template.render(Value::from_iter(ctx)).map_err(|e| {
            EngineError::InvalidInput(format!("chat template: {}", render_error_message(&e)))
        })
    }
}

/// `value` with every string in it (keys too) passed through `escape`.
fn escape_json(value: &serde_json::Value, escape: &dyn Fn(&str) -> String) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        J::String(s) => J::String(escape(s)),
        J::Array(xs) => J::Array(xs.iter().map(|x| escape_json(x, escape)).collect()),
        J::Object(o) => J::Object(
            o.iter()
                .map(|(k, v)| (escape(k), escape_json(v, escape)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `raise_exception(msg)` ends rendering with `msg` as the error (templates use it to reject
/// conversations they cannot format).
fn raise_exception(msg: String) -> std::result::Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

fn render_error_message(e: &JinjaError) -> String {
    match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(detail)) => detail.to_string(),
        _ => format!("{e:#}"),
    }
}

/// `value | tojson(indent=None, separators=None, sort_keys=False)` printed like Python's
/// `json.dumps(value, ensure_ascii=False, …)`, which is what HF renders (minijinja's own
/// `tojson` escapes HTML characters and drops the spaces after `,` and `:`).
fn tojson(
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, JinjaError> {
    let indent = match kwargs.get::<Option<Value>>("indent")?.or(indent) {
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(
            v.as_usize()
                .map(|n| " ".repeat(n))
                .or_else(|| v.as_str().map(str::to_owned))
                .ok_or_else(|| {
                    JinjaError::new(
                        ErrorKind::InvalidOperation,
                        "tojson: indent must be an integer",
                    )
                })?,
        ),
        None => None,
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let (item_sep, key_sep) = match kwargs.get::<Option<Value>>("separators")? {
        Some(v) if !v.is_none() => {
            let parts: Vec<String> = v.try_iter()?.map(|p| p.to_string()).collect();
            match parts.as_slice() {
                [a, b] => (a.clone(), b.clone()),
                _ => {
                    return Err(JinjaError::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair",
                    ))
                }
            }
        }
        _ => (
            (if indent.is_some() { "," } else { ", " }).to_string(),
            ": ".to_string(),
        ),
    };
    let _ = kwargs.get::<Option<bool>>("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let style = JsonStyle {
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    Ok(Value::from_safe_string(out))
}

struct JsonStyle {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn write_json(
    out: &mut String,
    v: &Value,
    style: &JsonStyle,
    depth: usize,
) -> std::result::Result<(), JinjaError> {
    let not_serializable = |what: &str| {
        JinjaError::new(
            ErrorKind::InvalidOperation,
            format!("tojson: {what} is not JSON serializable"),
        )
    };
    match v.kind() {
        ValueKind::Undefined => return Err(not_serializable("undefined")),
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&python_float_repr(f));
            }
        }
        ValueKind::String => {
            out.push_str(&serde_json::to_string(v.as_str().unwrap_or_default()).expect("string"))
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(out, '[', ']', &items, style, depth, |out, item, depth| {
                write_json(out, item, style, depth)
            })?;
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in v.try_iter()? {
                let item = v.get_item(&key)?;
                let key = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
                    ValueKind::None => "null".to_owned(),
                    ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).to_owned(),
                    _ => key.to_string(),
                };
                entries.push((key, item));
            }
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(
                out,
                '{',
                '}',
                &entries,
                style,
                depth,
                |out, (k, item), depth| {
                    out.push_str(&serde_json::to_string(k).expect("string"));
                    out.push_str(&style.key_sep);
                    write_json(out, item, style, depth)
                },
            )?;
        }
        _ => return Err(not_serializable(&format!("a value of kind {}", v.kind()))),
    }
    Ok(())
}

fn write_container<T>(
    out: &mut String,
    open: char,
    close: char,
    items: &[T],
    style: &JsonStyle,
    depth: usize,
    mut write_item: impl FnMut(&mut String, &T, usize) -> std::result::Result<(), JinjaError>,
) -> std::result::Result<(), JinjaError> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, depth: usize| {
        if let Some(ind) = &style.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(ind);
            }
        }
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&style.item_sep);
        }
        newline(out, depth + 1);
        write_item(out, item, depth + 1)?;
    }
    newline(out, depth);
    out.push(close);
    Ok(())
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form outside 1e-4 ≤ |x| < 1e16.
fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("LowerExp has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    if f == 0.0 || (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        format!(
            "{mantissa}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::python_float_repr;

    #[test]
    fn floats_print_like_python() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e20, "1.5e+20"),
            (123456789.25, "123456789.25"),
            (1e16, "1e+16"),
            (-2.0, "-2.0"),
            (0.0, "0.0"),
        ] {
            assert_eq!(python_float_repr(f), s, "{f}");
        }
    }
}
