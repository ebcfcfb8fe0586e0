//! Incremental detokenization: token ids in, finished text out.
//!
//! Byte-level BPE tokens are byte strings, and one UTF-8 character may be split over several
//! tokens, so text can only be released up to the last complete character. The decoder keeps
//! the undecided tail as bytes and follows `String::from_utf8_lossy` exactly, which is what
//! [`Tokenizer::decode`] uses: the concatenation of everything [`TokenStreamDecoder::push`]
//! returned plus [`TokenStreamDecoder::finish`] equals `decode(all ids)`. The relay's call-tag
//! parser and the streamed responses rely on that equality.

use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// Turns a stream of token ids into text chunks. Holds a clone of the (shared) tokenizer.
#[derive(Debug, Clone)]
pub struct TokenStreamDecoder {
    tokenizer: Tokenizer,
    /// Bytes received but not yet released: always a (possibly empty) prefix of one UTF-8
    /// character that more bytes could still complete.
    pending: Vec<u8>,
}

impl TokenStreamDecoder {
    pub fn new(tokenizer: &Tokenizer) -> Self {
        Self {
            tokenizer: tokenizer.clone(),
            pending: Vec::new(),
        }
    }

    /// Adds one token and returns the text it completes (often empty mid-character, sometimes
    /// more than the token's own bytes). An id outside the vocabulary is an error and leaves
    /// the decoder unchanged.
    pub fn push(&mut self, id: u32) -> Result<String> {
        let bytes = self.tokenizer.checked_token_bytes(id)?;
        let mut out = String::new();
        self.pending.extend_from_slice(bytes);
        self.release(&mut out);
        Ok(out)
    }

    /// Adds several tokens; returns the text they complete.
    pub fn push_all(&mut self, ids: &[u32]) -> Result<String> {
        let mut out = String::new();
        for &id in ids {
            out.push_str(&self.push(id)?);
        }
        Ok(out)
    }

    /// Ends the stream: an unfinished character left over becomes U+FFFD (as `decode` does).
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }

    /// Bytes held back because they may start a character still to come.
    pub fn pending_bytes(&self) -> &[u8] {
        &self.pending
    }

    /// Moves every decided byte of `pending` to `out`, replacing each invalid sequence by one
    /// U+FFFD exactly where `from_utf8_lossy` would.
    fn release(&mut self, out: &mut String) {
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    let prefix = &self.pending[start..start + valid];
                    out.push_str(
                        std::str::from_utf8(prefix).expect("valid_up_to marks valid UTF-8"),
                    );
                    start += valid;
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += n;
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..start);
    }
}
