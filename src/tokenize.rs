//! Token counting with tiktoken-rs, offline (the vocabularies are compiled
//! in). The encoder takes ~350 ms and ~50 MB to build, so only commands that
//! count build one.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

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
///
/// Each thread of rayon's pool counts with an encoder of its own. The
/// encoder's regex (fancy-regex) keeps its scratch space in a pool that only
/// the first thread to use it reaches without a lock; when two threads share
/// one encoder, the pool's get/put took over 15% of a `plan` profile and
/// counting ran about 20% slower than with one encoder per thread. An extra
/// encoder costs ~350 ms (built on its own thread, in parallel) and ~50 MB.
pub struct Counter {
    /// Built eagerly, so that a broken tokenizer fails at once; it serves
    /// the first thread that counts.
    first: CoreBPE,
    /// Slot (see `slot`) + 1 of the thread that owns `first`; 0 while nobody does.
    first_owner: AtomicUsize,
    /// Encoders of the other threads, built when a thread first counts
    /// (None if that build failed: the thread then shares `first`).
    own: Vec<OnceLock<Option<CoreBPE>>>,
    pub encoding: Encoding,
}

/// Chat format overhead, as OpenAI's cookbook counts it for current models:
/// every message costs 3 tokens plus its role and content, and every reply
/// is primed with 3 more.
const TOKENS_PER_MESSAGE: usize = 3;
const REPLY_PRIMING: usize = 3;

impl Counter {
    pub fn new(encoding: Encoding) -> Result<Counter, TokenizerError> {
        let first = build(encoding)?;
        // Slot 0 is every thread outside rayon's pool, then one per pool thread.
        let own = (0..=rayon::current_num_threads())
            .map(|_| OnceLock::new())
            .collect();
        Ok(Counter {
            first,
            first_owner: AtomicUsize::new(0),
            own,
            encoding,
        })
    }

    /// The encoder of the calling thread.
    fn bpe(&self) -> &CoreBPE {
        let slot = rayon::current_thread_index().map_or(0, |i| i + 1);
        let Some(own) = self.own.get(slot) else {
            return &self.first;
        };
        let owner = self.first_owner.load(Ordering::Relaxed);
        if owner == slot + 1
            || (owner == 0
                && self
                    .first_owner
                    .compare_exchange(0, slot + 1, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok())
        {
            return &self.first;
        }
        own.get_or_init(|| build(self.encoding).ok())
            .as_ref()
            .unwrap_or(&self.first)
    }

    /// Tokens in plain text; special-token text such as `<|endoftext|>` counts as ordinary text.
    pub fn count(&self, text: &str) -> usize {
        self.bpe().count_ordinary(text)
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

    /// `fixed_chat_tokens`, counted on a rayon pool thread, so that the
    /// eager encoder goes to a thread that counts rows rather than to a
    /// caller that counts once.
    pub fn fixed_chat_tokens_on_pool(&self, system: Option<&str>) -> usize {
        rayon::join(|| self.fixed_chat_tokens(system), || ()).0
    }
}

fn build(encoding: Encoding) -> Result<CoreBPE, TokenizerError> {
    match encoding {
        Encoding::O200kBase => tiktoken_rs::o200k_base(),
        Encoding::Cl100kBase => tiktoken_rs::cl100k_base(),
    }
    .map_err(|e| TokenizerError {
        encoding,
        message: e.to_string(),
    })
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

    #[test]
    fn every_thread_counts_alike() {
        use rayon::prelude::*;
        let c = Counter::new(Encoding::O200kBase).unwrap();
        let texts = [
            "Hello, world!",
            "Größe 東京 😀 \"quoted\"\nnew line",
            "<|endoftext|> is plain text here",
            "",
        ];
        let here: Vec<usize> = texts.iter().map(|t| c.count(t)).collect();
        // Counted on the pool's threads, each with its own encoder.
        let pooled: Vec<Vec<usize>> = (0..64)
            .into_par_iter()
            .map(|_| texts.iter().map(|t| c.count(t)).collect())
            .collect();
        assert_eq!(here[0], 4);
        assert_eq!(here[3], 0);
        for p in pooled {
            assert_eq!(p, here);
        }
    }
}
