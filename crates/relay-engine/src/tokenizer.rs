//! Text ↔ token ids for the models the engine runs: a thin wrapper over HF `tokenizers` built
//! either from a `tokenizer.json` or from GGUF metadata (through candle's converter), so a GGUF
//! file needs nothing beside it.
//!
//! Only byte-level BPE vocabularies (GPT-2 style, the Qwen family) are supported: every token
//! then stands for an exact byte string, which is what lets [`crate::stream::TokenStreamDecoder`]
//! decode incrementally without ever disagreeing with [`Tokenizer::decode`].
//!
//! Special tokens (`<|im_start|>`) are read three ways ([`SpecialTokens`]). A chat prompt must
//! keep the template's markers special while the text of its messages never becomes one, or a
//! user could open a system turn by typing its markers. Templates transform content (`.strip()`,
//! `.split('</think>')`), so the content's place in the rendered text cannot be tracked; instead
//! special-token text in content is *escaped* before rendering ([`Tokenizer::escape_special_text`],
//! like HTML escaping), and [`Tokenizer::encode_escaped`] reads the rendered text: whatever is
//! special in it came from the template, and escaped text is tokenized as plain text.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use tokenizers::DecoderWrapper;

use crate::error::{EngineError, Result};

/// Token strings that end a turn in the chat formats we serve; added to the file's own EOS id
/// because Qwen's GGUF names only one of them (`<|im_end|>` for instruct models).
const EXTRA_EOS_TOKENS: [&str; 2] = ["<|im_end|>", "<|endoftext|>"];

/// Stand-in path for errors about GGUF metadata given as an already-parsed [`gguf_file::Content`].
const GGUF_METADATA: &str = "<gguf metadata>";

/// Starts an escape in [`Tokenizer::escape_special_text`]'s output: followed by itself it
/// stands for itself, followed by `ESCAPE_CODE_BASE + k` for the `k`-th special token's text.
/// The last private-use character, which no template writes.
const ESCAPE: char = '\u{10FFFD}';
const ESCAPE_CODE_BASE: u32 = 0x10_0000;
/// Codes run from the base up to (not including) the escape itself.
const MAX_ESCAPED_SPECIALS: usize = (ESCAPE as u32 - ESCAPE_CODE_BASE) as usize;

/// How special-token text written in a text (`<|im_start|>`) is tokenized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecialTokens {
    /// It becomes the special token's id: a raw prompt whose writer formats the turns.
    #[default]
    Parse,
    /// It is ordinary text, never a special id (HF's `split_special_tokens`).
    Plain,
    /// A chat rendered from messages: the template's own markers are special ids, the
    /// messages' content is `Plain`. The text is [`crate::chat::ChatTemplate::render_escaped`]'s.
    Template,
}

impl SpecialTokens {
    /// The name used in requests and responses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Parse => "parse",
            Self::Plain => "plain",
            Self::Template => "template",
        }
    }
}

/// A loaded tokenizer. Cheap to clone (shared behind an `Arc`).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    hf: tokenizers::Tokenizer,
    /// Bytes each id stands for (`None` for ids the vocabulary skips).
    token_bytes: Vec<Option<Box<[u8]>>>,
    eos_ids: Vec<u32>,
    /// Special tokens' text; the index is the token's escape code.
    specials: Vec<String>,
    special_ids: HashSet<u32>,
    /// `hf` with special-token matching off, built the first time plain text needs it (it
    /// doubles the vocabulary's memory, and most prompts never need it).
    plain: OnceLock<tokenizers::Tokenizer>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("eos_ids", &self.inner.eos_ids)
            .finish()
    }
}

impl Tokenizer {
    /// Loads a HF `tokenizer.json`. EOS ids come from `<|im_end|>` / `<|endoftext|>` and, when
    /// present next to it, `tokenizer_config.json`'s `eos_token` and `generation_config.json`'s
    /// `eos_token_id`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(EngineError::NotFound(path.to_path_buf()));
        }
        let hf = tokenizers::Tokenizer::from_file(path).map_err(|e| malformed(path, e))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut eos = eos_ids_from_configs(dir, &hf);
        add_named_eos(&hf, &mut eos);
        Self::build(hf, eos, path)
    }

    /// Builds the tokenizer from GGUF metadata (`tokenizer.ggml.*`), with candle's converter.
    /// For `tokenizer.ggml.pre = "qwen2"` the converter reproduces Qwen's `tokenizer.json`
    /// pipeline (NFC, the Qwen split regex, byte-level) — checked against it in the tests.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let path = Path::new(GGUF_METADATA);
        let hf = tokenizers::Tokenizer::from_gguf(&tokenizer_metadata_only(content))
            .map_err(|e| malformed(path, e))?;
        let mut eos = Vec::new();
        if let Some(v) = content.metadata.get("tokenizer.ggml.eos_token_id") {
            eos.push(
                gguf_u32(v).ok_or_else(|| {
                    malformed(path, "tokenizer.ggml.eos_token_id is not an integer")
                })?,
            );
        }
        add_named_eos(&hf, &mut eos);
        Self::build(hf, eos, path)
    }

    /// Reads the GGUF header of `path` and builds the tokenizer from its metadata.
    pub fn from_gguf_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let content = read_gguf_content(path)?;
        Self::from_gguf(&content).map_err(|e| with_path(e, path))
    }

    /// The tokenizer that belongs to a model: `path` may be a GGUF file (metadata), a
    /// safetensors/config file (the `tokenizer.json` in its folder), or a model folder
    /// (its `tokenizer.json`, else its only `.gguf` file).
    pub fn load_for_model(path: impl AsRef<Path>) -> Result<Self> {
        match model_tokenizer_source(path.as_ref())? {
            TokenizerSource::Gguf(p) => Self::from_gguf_file(p),
            TokenizerSource::Json(p) => Self::from_file(p),
        }
    }

    fn build(hf: tokenizers::Tokenizer, mut eos_ids: Vec<u32>, path: &Path) -> Result<Self> {
        match hf.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => {}
            other => {
                return Err(EngineError::Unsupported(format!(
                    "tokenizer {}: only byte-level BPE is supported, decoder is {:?}",
                    path.display(),
                    other.map(|d| serde_json::to_value(d).ok())
                )))
            }
        }
        let vocab = hf.get_vocab(true);
        let size = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        let mut token_bytes: Vec<Option<Box<[u8]>>> = vec![None; size];
        for (token, id) in &vocab {
            token_bytes[*id as usize] = Some(byte_level_bytes(token).into_boxed_slice());
        }
        let mut seen = HashSet::new();
        eos_ids.retain(|id| (*id as usize) < size && seen.insert(*id));
        let mut specials: Vec<(u32, String)> = hf
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (id, t.content))
            .collect();
        specials.sort();
        if specials.len() > MAX_ESCAPED_SPECIALS {
            return Err(EngineError::Unsupported(format!(
                "tokenizer {}: {} special tokens, at most {MAX_ESCAPED_SPECIALS} supported",
                path.display(),
                specials.len()
            )));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                hf,
                token_bytes,
                eos_ids,
                special_ids: specials.iter().map(|(id, _)| *id).collect(),
                specials: specials.into_iter().map(|(_, s)| s).collect(),
                plain: OnceLock::new(),
            }),
        })
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) become their
    /// ids. `add_special` applies the post-processor (BOS/EOS templates; a no-op for Qwen).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .hf
            .encode_fast(text, add_special)
            .map_err(|e| EngineError::InvalidInput(format!("cannot tokenize text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` with no special token matched: `<|im_start|>` written in it is
    /// tokenized as the characters it is made of ([`SpecialTokens::Plain`]).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let plain = self.inner.plain.get_or_init(|| {
            let mut plain = self.inner.hf.clone();
            plain.set_encode_special_tokens(true);
            plain
        });
        let enc = plain
            .encode_fast(text, false)
            .map_err(|e| EngineError::InvalidInput(format!("cannot tokenize text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` read the way `mode` says (no post-processor).
    pub fn encode_with(&self, text: &str, mode: SpecialTokens) -> Result<Vec<u32>> {
        match mode {
            SpecialTokens::Parse => self.encode(text, false),
            SpecialTokens::Plain => self.encode_plain(text),
            SpecialTokens::Template => self.encode_escaped(text),
        }
    }

    /// Special tokens' text, by escape code.
    pub fn special_tokens(&self) -> &[String] {
        &self.inner.specials
    }

    /// Whether `id` is a special token (one that [`SpecialTokens::Plain`] never produces).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.special_ids.contains(&id)
    }

    /// `text` with every special token's text (leftmost, longest first) and every escape
    /// character replaced by an escape, so that a template can place it in a prompt that
    /// [`Self::encode_escaped`] reads as plain text. Text with neither comes back as is.
    pub fn escape_special_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let specials = &self.inner.specials;
        if !text.contains(ESCAPE) && !specials.iter().any(|s| text.contains(s.as_str())) {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len() + 8);
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            let longest = specials
                .iter()
                .enumerate()
                .filter(|(_, s)| rest.starts_with(s.as_str()))
                .max_by_key(|(_, s)| s.len());
            let len = match longest {
                Some((code, s)) => {
                    out.push(ESCAPE);
                    out.push(escape_code(code));
                    s.len()
                }
                None if c == ESCAPE => {
                    out.push(ESCAPE);
                    out.push(ESCAPE);
                    c.len_utf8()
                }
                None => {
                    out.push(c);
                    c.len_utf8()
                }
            };
            rest = &rest[len..];
        }
        Cow::Owned(out)
    }

    /// The text an escaped text stands for (the inverse of [`Self::escape_special_text`], also
    /// on text around the escaped parts). An escape character followed by anything else is
    /// kept as it is.
    pub fn unescape<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if !text.contains(ESCAPE) {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c != ESCAPE {
                out.push(c);
                continue;
            }
            let special = chars
                .peek()
                .and_then(|&n| (n as u32).checked_sub(ESCAPE_CODE_BASE))
                .and_then(|code| self.inner.specials.get(code as usize));
            match (chars.peek(), special) {
                (Some(&ESCAPE), _) => {
                    out.push(ESCAPE);
                    chars.next();
                }
                (_, Some(s)) => {
                    out.push_str(s);
                    chars.next();
                }
                _ => out.push(ESCAPE),
            }
        }
        Cow::Owned(out)
    }

    /// Token ids of a text whose untrusted parts went through [`Self::escape_special_text`]
    /// ([`SpecialTokens::Template`]): special tokens written in the text become their ids,
    /// escaped text is tokenized as plain text together with the text around it. Without
    /// escapes this is [`Self::encode`], id for id.
    pub fn encode_escaped(&self, text: &str) -> Result<Vec<u32>> {
        if !text.contains(ESCAPE) {
            return self.encode(text, false);
        }
        // The special tokens HF finds here are the unescaped text's own; the stretches
        // between them are tokenized again, unescaped, with special-token matching off.
        let enc = self
            .inner
            .hf
            .encode(text, false)
            .map_err(|e| EngineError::InvalidInput(format!("cannot tokenize text: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len());
        let mut from = 0;
        let plain = |start: usize, end: usize, ids: &mut Vec<u32>| -> Result<()> {
            let piece = text.get(start..end).ok_or_else(|| {
                EngineError::InvalidInput(format!(
                    "cannot tokenize text: a special token ends or starts inside a character \
                     (bytes {start}..{end})"
                ))
            })?;
            ids.extend(self.encode_plain(&self.unescape(piece))?);
            Ok(())
        };
        for (&id, &(start, end)) in enc.get_ids().iter().zip(enc.get_offsets()) {
            if self.is_special(id) {
                plain(from, start, &mut ids)?;
                ids.push(id);
                from = end;
            }
        }
        plain(from, text.len(), &mut ids)?;
        Ok(ids)
    }

    /// `ids` in `target`'s vocabulary, through their text: special tokens stay special (where
    /// `target` has them) and text that only spells one stays plain text — so a prompt built
    /// with [`SpecialTokens::Template`] keeps that property in the other model's tokens.
    pub fn translate(&self, ids: &[u32], target: &Tokenizer) -> Result<Vec<u32>> {
        let mut text = String::new();
        for run in ids.chunk_by(|a, b| !self.is_special(*a) && !self.is_special(*b)) {
            let piece = self.decode(run)?;
            match run {
                [id] if self.is_special(*id) => text.push_str(&piece),
                _ => text.push_str(&target.escape_special_text(&piece)),
            }
        }
        target.encode_escaped(&text)
    }

    /// The text of `ids`, special tokens included; invalid UTF-8 (a multi-byte character cut
    /// by the end of the ids) becomes U+FFFD, as in HF `tokenizers`. Unknown ids are an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }

    /// The raw bytes `ids` stand for.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(self.checked_token_bytes(id)?);
        }
        Ok(out)
    }

    /// Bytes one token stands for, or `None` for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.inner.token_bytes.get(id as usize)?.as_deref()
    }

    pub(crate) fn checked_token_bytes(&self, id: u32) -> Result<&[u8]> {
        self.token_bytes(id).ok_or(EngineError::TokenOutOfVocab {
            id,
            vocab_size: self.vocab_size(),
        })
    }

    /// Id of a token given by its vocabulary string (`"<|im_end|>"`, `"Ġthe"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.hf.token_to_id(token)
    }

    /// Vocabulary string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.hf.id_to_token(id)
    }

    /// One past the largest token id (special tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.token_bytes.len()
    }

    /// Ids that end generation, the file's own EOS first.
    pub fn eos_ids(&self) -> &[u32] {
        &self.inner.eos_ids
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.inner.eos_ids.contains(&id)
    }

    /// The underlying HF tokenizer.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner.hf
    }
}

fn escape_code(code: usize) -> char {
    char::from_u32(ESCAPE_CODE_BASE + code as u32).expect("codes stay below the escape")
}

/// Where a model's tokenizer (and chat template) lives.
pub(crate) enum TokenizerSource {
    Gguf(PathBuf),
    /// A `tokenizer.json`; `tokenizer_config.json` is looked for beside it.
    Json(PathBuf),
}

pub(crate) fn model_tokenizer_source(path: &Path) -> Result<TokenizerSource> {
    if !path.exists() {
        return Err(EngineError::NotFound(path.to_path_buf()));
    }
    if path.is_dir() {
        let json = path.join("tokenizer.json");
        if json.is_file() {
            return Ok(TokenizerSource::Json(json));
        }
        let ggufs: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
            })
            .collect();
        return match ggufs.as_slice() {
            [one] => Ok(TokenizerSource::Gguf(one.clone())),
            _ => Err(EngineError::NotFound(json)),
        };
    }
    if is_gguf(path)? {
        return Ok(TokenizerSource::Gguf(path.to_path_buf()));
    }
    let json = path
        .parent()
        .unwrap_or(Path::new("."))
        .join("tokenizer.json");
    if json.is_file() {
        Ok(TokenizerSource::Json(json))
    } else {
        Err(EngineError::NotFound(json))
    }
}

fn is_gguf(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path)?;
    Ok(f.read_exact(&mut magic).is_ok() && &magic == b"GGUF")
}

/// Parses the GGUF header (metadata and tensor table, not the weights).
pub(crate) fn read_gguf_content(path: &Path) -> Result<gguf_file::Content> {
    if !path.is_file() {
        return Err(EngineError::NotFound(path.to_path_buf()));
    }
    let mut f = std::fs::File::open(path)?;
    gguf_file::Content::read(&mut f).map_err(|e| malformed(path, e))
}

/// A copy of the `tokenizer.*` metadata for candle's converter, with llama.cpp's "unused" tokens
/// (type 5, Qwen's `[PAD…]` fillers) made normal: the converter would make them special, so
/// the text `[PAD151665]` would become one token, which neither llama.cpp nor HF do.
fn tokenizer_metadata_only(content: &gguf_file::Content) -> gguf_file::Content {
    let mut metadata: HashMap<String, gguf_file::Value> = content
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer.") && k.as_str() != "tokenizer.chat_template")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(gguf_file::Value::Array(types)) = metadata.get_mut("tokenizer.ggml.token_type") {
        for t in types.iter_mut() {
            if gguf_u32(t) == Some(5) {
                *t = gguf_file::Value::I32(1);
            }
        }
    }
    gguf_file::Content {
        magic: content.magic,
        metadata,
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    }
}

pub(crate) fn gguf_u32(v: &gguf_file::Value) -> Option<u32> {
    use gguf_file::Value::*;
    match v {
        U8(x) => Some(*x as u32),
        I8(x) => u32::try_from(*x).ok(),
        U16(x) => Some(*x as u32),
        I16(x) => u32::try_from(*x).ok(),
        U32(x) => Some(*x),
        I32(x) => u32::try_from(*x).ok(),
        U64(x) => u32::try_from(*x).ok(),
        I64(x) => u32::try_from(*x).ok(),
        _ => None,
    }
}

fn add_named_eos(hf: &tokenizers::Tokenizer, eos: &mut Vec<u32>) {
    for name in EXTRA_EOS_TOKENS {
        if let Some(id) = hf.token_to_id(name) {
            eos.push(id);
        }
    }
}

/// EOS ids named by the HF config files in `dir` (both optional).
fn eos_ids_from_configs(dir: &Path, hf: &tokenizers::Tokenizer) -> Vec<u32> {
    let read = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok()
    };
    let mut out = Vec::new();
    if let Some(cfg) = read("tokenizer_config.json") {
        if let Some(tok) = special_token_content(cfg.get("eos_token")) {
            out.extend(hf.token_to_id(&tok));
        }
    }
    if let Some(cfg) = read("generation_config.json") {
        match cfg.get("eos_token_id") {
            Some(serde_json::Value::Number(n)) => out.extend(n.as_u64().map(|x| x as u32)),
            Some(serde_json::Value::Array(xs)) => {
                out.extend(xs.iter().filter_map(|x| x.as_u64()).map(|x| x as u32))
            }
            _ => {}
        }
    }
    out
}

/// `tokenizer_config.json` writes special tokens either as a string or as `{"content": …}`.
pub(crate) fn special_token_content(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// GPT-2's reversible byte → printable char table: printable Latin-1 bytes map to themselves,
/// the other 68 bytes to U+0100.. in byte order.
pub(crate) fn byte_to_char_table() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut table = ['\0'; 256];
        let mut n = 0u32;
        for b in 0..=255u8 {
            table[b as usize] = if printable(b) {
                b as char
            } else {
                n += 1;
                char::from_u32(255 + n).expect("valid char")
            };
        }
        table
    })
}

fn char_to_byte_map() -> &'static HashMap<char, u8> {
    static MAP: OnceLock<HashMap<char, u8>> = OnceLock::new();
    MAP.get_or_init(|| {
        byte_to_char_table()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect()
    })
}

/// Bytes a byte-level token string stands for. Same rule as `tokenizers`' ByteLevel decoder:
/// a token whose characters all come from the byte table is mapped back char by char; any
/// other token (an added token such as a special with a space) stands for its own UTF-8.
pub(crate) fn byte_level_bytes(token: &str) -> Vec<u8> {
    let map = char_to_byte_map();
    token
        .chars()
        .map(|c| map.get(&c).copied())
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| token.as_bytes().to_vec())
}

/// The byte-level token string for raw bytes (inverse of [`byte_level_bytes`]).
pub(crate) fn bytes_to_byte_level(bytes: &[u8]) -> String {
    let table = byte_to_char_table();
    bytes.iter().map(|&b| table[b as usize]).collect()
}

fn malformed(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Malformed {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn with_path(e: EngineError, path: &Path) -> EngineError {
    match e {
        EngineError::Malformed { path: p, reason } if p == Path::new(GGUF_METADATA) => {
            EngineError::Malformed {
                path: path.to_path_buf(),
                reason,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection_matching_gpt2() {
        let t = byte_to_char_table();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[b'a' as usize], 'a');
        let all: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(all.len(), 256);
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(byte_level_bytes(&bytes_to_byte_level(&bytes)), bytes);
    }
}
