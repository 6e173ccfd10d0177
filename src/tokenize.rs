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
///
/// Each thread of rayon's pool counts with an encoder of its own. The
/// encoder's regex (fancy-regex) keeps its scratch space in a pool that only
/// the first thread to use it reaches without a lock; when two threads share
/// one encoder, the pool's get/put took over 15% of a `plan` profile and
/// counting ran about 20% slower than with one encoder per thread.
///
/// An encoder costs ~350 ms to build and ~50 MB: a small input is counted
/// with one (`encoders_wanted`); for a larger one they are all built at
/// once, each on a thread of its own: built one after the other (or the
/// first up front and the others when their thread first counts), `plan`
/// spent ~350 ms with one core idle before counting the first row. Past
/// `MAX_ENCODERS` threads share them, which keeps memory bounded on large
/// machines.
pub struct Counter {
    /// Pool thread `i` counts with `encoders[i % len]`; threads outside the
    /// pool with `encoders[0]`.
    encoders: Vec<CoreBPE>,
    pub encoding: Encoding,
}

/// At most this many encoders (~50 MB each).
const MAX_ENCODERS: usize = 4;

/// Input smaller than this is counted with one encoder, shared by the pool's
/// threads. 1 MiB is ~250k tokens: counted in ~40 ms on a shared encoder
/// (6.05M tokens/s on two threads here), far less than the ~350 ms of CPU
/// and ~50 MB that a second encoder costs to build. Above it, the encoders
/// are the same whatever the size, so memory stays flat from 1 MiB to the
/// largest inputs.
const ONE_ENCODER_BELOW: u64 = 1 << 20;

/// How many encoders to build for `input_bytes` of input on a pool of
/// `threads`: one per thread, up to `MAX_ENCODERS`, once the input is large
/// enough for them to pay off.
fn encoders_wanted(threads: usize, input_bytes: u64) -> usize {
    if input_bytes < ONE_ENCODER_BELOW {
        1
    } else {
        threads.clamp(1, MAX_ENCODERS)
    }
}

/// Chat format overhead, as OpenAI's cookbook counts it for current models
/// ("How to count tokens with tiktoken", openai-cookbook
/// examples/How_to_count_tokens_with_tiktoken.ipynb): every message costs 3
/// tokens plus its role and content, and every reply is primed with 3 more.
const TOKENS_PER_MESSAGE: usize = 3;
pub const REPLY_PRIMING: usize = 3;

/// Prompt tokens of a chat request by that rule, with `count` counting a
/// text's tokens: the one rule of the plan's count ([`Counter::chat_tokens`])
/// and the simulated provider's bill, so that the plan's "at most" is a
/// bound there.
pub fn chat_rule<'a>(
    count: impl Fn(&str) -> usize,
    messages: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> usize {
    messages
        .into_iter()
        .map(|(role, content)| TOKENS_PER_MESSAGE + count(role) + count(content))
        .sum::<usize>()
        + REPLY_PRIMING
}

/// One encoder of `encoding` for the whole process, built on first use
/// (the simulated provider's counter); `None` if it cannot be built.
pub fn shared_encoder(encoding: Encoding) -> Option<&'static CoreBPE> {
    static O200K: std::sync::OnceLock<Option<CoreBPE>> = std::sync::OnceLock::new();
    static CL100K: std::sync::OnceLock<Option<CoreBPE>> = std::sync::OnceLock::new();
    let cell = match encoding {
        Encoding::O200kBase => &O200K,
        Encoding::Cl100kBase => &CL100K,
    };
    cell.get_or_init(|| build(encoding).ok()).as_ref()
}

impl Counter {
    /// A counter with an encoder for each of the pool's threads (up to
    /// `MAX_ENCODERS`).
    pub fn new(encoding: Encoding) -> Result<Counter, TokenizerError> {
        Counter::for_input(encoding, u64::MAX)
    }

    /// A counter for `input_bytes` of input: one encoder when the input is
    /// small (`encoders_wanted`).
    pub fn for_input(encoding: Encoding, input_bytes: u64) -> Result<Counter, TokenizerError> {
        let wanted = encoders_wanted(rayon::current_num_threads(), input_bytes);
        // Each is built on the pool thread that will use it.
        let encoders = rayon::broadcast(|ctx| (ctx.index() < wanted).then(|| build(encoding)))
            .into_iter()
            .flatten()
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Counter { encoders, encoding })
    }

    /// Tokens in plain text; special-token text such as `<|endoftext|>` counts as ordinary text.
    pub fn count(&self, text: &str) -> usize {
        match rayon::current_thread_index() {
            Some(i) => self.encoders[self.slot(i)].count_ordinary(text),
            // A thread outside the pool counts on it. An encoder's regex
            // keeps its scratch space in one pool, shared by its clones of
            // the regex, that is fast only for the first thread that used
            // it: a caller counting once (the system message) must not
            // become that thread and leave a pool thread on the slow path.
            None => rayon::join(|| self.count(text), || ()).0,
        }
    }

    /// The encoder of pool thread `i`.
    fn slot(&self, i: usize) -> usize {
        i % self.encoders.len()
    }

    /// Tokens of one chat message, overhead included.
    pub fn message_tokens(&self, role: &str, content: &str) -> usize {
        TOKENS_PER_MESSAGE + self.count(role) + self.count(content)
    }

    /// Prompt tokens of a whole chat request.
    pub fn chat_tokens<'a>(&self, messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> usize {
        chat_rule(|t| self.count(t), messages)
    }

    /// The constant part of every request's prompt tokens: the system message
    /// (if any), the reply priming and the user message's own overhead. A
    /// request costs this plus the tokens of its user text.
    pub fn fixed_chat_tokens(&self, system: Option<&str>) -> usize {
        system.map_or(0, |s| self.message_tokens("system", s))
            + self.message_tokens("user", "")
            + REPLY_PRIMING
    }
}

/// Freeing an encoder's ~400,000 small allocations took ~250 ms at the end
/// of `plan`, on one core, after the work was done: they are freed on a
/// thread of their own, which the process may end before it finishes.
impl Drop for Counter {
    fn drop(&mut self) {
        let encoders = std::mem::take(&mut self.encoders);
        if let Err(e) = std::thread::Builder::new()
            .name("free-encoders".into())
            .spawn(move || drop(encoders))
        {
            // No thread to be had: the memory is freed here instead.
            drop(e);
        }
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
    fn small_inputs_get_one_encoder_large_ones_one_per_thread_up_to_the_cap() {
        let cases = [
            // (threads, input bytes, encoders)
            (2, 0, 1),
            (2, 6, 1),
            (2, ONE_ENCODER_BELOW - 1, 1),
            (2, ONE_ENCODER_BELOW, 2),
            (1, ONE_ENCODER_BELOW, 1),
            (3, u64::MAX, 3),
            (MAX_ENCODERS, u64::MAX, MAX_ENCODERS),
            (MAX_ENCODERS + 4, u64::MAX, MAX_ENCODERS),
            (64, 1 << 40, MAX_ENCODERS),
            (0, u64::MAX, 1),
        ];
        for (threads, bytes, want) in cases {
            assert_eq!(encoders_wanted(threads, bytes), want, "{threads} {bytes}");
        }
        // Built: a small input on a pool of 3 has one encoder, which every
        // pool thread counts with.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let c = pool
            .install(|| Counter::for_input(Encoding::O200kBase, 1000))
            .unwrap();
        assert_eq!(c.encoders.len(), 1);
        let counts = pool.broadcast(|_| c.count("Größe 東京 😀"));
        assert!(counts.iter().all(|&n| n == c.count("Größe 東京 😀")));
    }

    #[test]
    fn each_pool_thread_has_an_encoder_of_its_own_up_to_the_cap() {
        for threads in [1, 3, MAX_ENCODERS + 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let c = pool.install(|| Counter::new(Encoding::O200kBase)).unwrap();
            assert_eq!(c.encoders.len(), threads.min(MAX_ENCODERS), "{threads}");
            let slots: Vec<usize> = pool.broadcast(|ctx| c.slot(ctx.index()));
            let mut distinct = slots.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), threads.min(MAX_ENCODERS), "{slots:?}");
            // Each counts alike, and so does a thread outside the pool.
            let counts = pool.broadcast(|_| c.count("Größe 東京 😀 \"quoted\""));
            assert!(
                counts
                    .iter()
                    .all(|&n| n == c.count("Größe 東京 😀 \"quoted\""))
            );
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
