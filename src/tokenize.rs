//! Token counting with tiktoken-rs, offline (the vocabularies are compiled
//! in). The encoder takes ~350 ms and ~50 MB to build, so only commands that
//! count build one.

use std::fmt;

use tiktoken_rs::CoreBPE;

#[derive(Debug, thiserror::Error)]
#[error("cannot build the {encoding} tokenizer: {message}")]
pub struct TokenizerError {
    encoding: Encoding,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    O200kBase,
    Cl100kBase,
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        })
    }
}

/// The encoding a model uses, and whether it was a guess. Longer prefixes
/// come first so `gpt-4o` is not taken for `gpt-4`.
pub fn encoding_for_model(model: &str) -> (Encoding, bool) {
    const TABLE: &[(&str, Encoding)] = &[
        ("gpt-4o", Encoding::O200kBase),
        ("chatgpt-4o", Encoding::O200kBase),
        ("gpt-4.1", Encoding::O200kBase),
        ("gpt-4.5", Encoding::O200kBase),
        ("gpt-5", Encoding::O200kBase),
        ("gpt-oss", Encoding::O200kBase),
        ("o1", Encoding::O200kBase),
        ("o3", Encoding::O200kBase),
        ("o4", Encoding::O200kBase),
        ("gpt-4", Encoding::Cl100kBase),
        ("gpt-3.5", Encoding::Cl100kBase),
        ("gpt-35", Encoding::Cl100kBase),
        ("text-embedding-3", Encoding::Cl100kBase),
        ("text-embedding-ada-002", Encoding::Cl100kBase),
    ];
    // Fine-tuned models are named `ft:<base>:<org>:...`.
    let base = model.strip_prefix("ft:").unwrap_or(model);
    TABLE
        .iter()
        .find(|(prefix, _)| base.starts_with(prefix))
        .map_or((Encoding::O200kBase, true), |(_, e)| (*e, false))
}

/// Counts tokens the way OpenAI bills prompts.
pub struct Counter {
    bpe: CoreBPE,
    pub encoding: Encoding,
}

/// Chat format overhead, as OpenAI's cookbook counts it for current models:
/// every message costs 3 tokens plus its role and content, and every reply
/// is primed with 3 more.
const TOKENS_PER_MESSAGE: usize = 3;
const REPLY_PRIMING: usize = 3;

impl Counter {
    pub fn new(encoding: Encoding) -> Result<Counter, TokenizerError> {
        let bpe = match encoding {
            Encoding::O200kBase => tiktoken_rs::o200k_base(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base(),
        }
        .map_err(|e| TokenizerError {
            encoding,
            message: e.to_string(),
        })?;
        Ok(Counter { bpe, encoding })
    }

    /// Tokens in plain text; special-token text such as `<|endoftext|>` counts as ordinary text.
    pub fn count(&self, text: &str) -> usize {
        self.bpe.count_ordinary(text)
    }

    /// Tokens of one chat message, overhead included.
    pub fn message_tokens(&self, role: &str, content: &str) -> usize {
        TOKENS_PER_MESSAGE + self.count(role) + self.count(content)
    }

    /// Prompt tokens of a whole chat request.
    pub fn chat_tokens<'a>(&self, messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> usize {
        messages
            .into_iter()
            .map(|(role, content)| self.message_tokens(role, content))
            .sum::<usize>()
            + REPLY_PRIMING
    }

    /// The constant part of every request's prompt tokens: the system message
    /// (if any), the reply priming and the user message's own overhead. A
    /// request costs this plus the tokens of its user text.
    pub fn fixed_chat_tokens(&self, system: Option<&str>) -> usize {
        system.map_or(0, |s| self.message_tokens("system", s))
            + self.message_tokens("user", "")
            + REPLY_PRIMING
    }

    /// `fixed_chat_tokens`, counted on a rayon pool thread. The tokenizer's
    /// regex keeps a scratch pool that is fastest for the first thread that
    /// uses it; that thread should be one of the threads that count rows.
    pub fn fixed_chat_tokens_on_pool(&self, system: Option<&str>) -> usize {
        rayon::join(|| self.fixed_chat_tokens(system), || ()).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_encodings() {
        let cases = [
            ("gpt-4o-mini", Encoding::O200kBase, false),
            ("gpt-4o-mini-2024-07-18", Encoding::O200kBase, false),
            ("gpt-4.1-nano", Encoding::O200kBase, false),
            ("gpt-5", Encoding::O200kBase, false),
            ("o3-mini", Encoding::O200kBase, false),
            ("o4-mini", Encoding::O200kBase, false),
            ("o1", Encoding::O200kBase, false),
            ("gpt-4", Encoding::Cl100kBase, false),
            ("gpt-4-turbo", Encoding::Cl100kBase, false),
            ("gpt-3.5-turbo", Encoding::Cl100kBase, false),
            ("ft:gpt-4o-mini:acme::abc", Encoding::O200kBase, false),
            ("claude-sonnet-4-5", Encoding::O200kBase, true),
            ("llama-3-70b", Encoding::O200kBase, true),
        ];
        for (model, enc, guessed) in cases {
            assert_eq!(encoding_for_model(model), (enc, guessed), "{model}");
        }
    }
}
