//! OpenAI-compatible batch provider: HTTP client, wire types, retry classification.
