//! The simulated OpenAI-compatible provider (Files, Batches, Chat Completions) on 127.0.0.1.
