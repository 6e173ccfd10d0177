//! One type for "the spec's batch backend", so the runner (generic over
//! [`BatchBackend`]) is built once at the command edge whichever provider
//! the spec names.

use std::path::Path;

use super::anthropic::AnthropicBatches;
use super::batch::{BatchBackend, BatchLimits, RemoteBatch, ResultLine, ResultRef, SubmitIdentity};
use super::error::ProviderError;
use super::openai::OpenAiBatches;

pub enum AnyBatches {
    OpenAi(OpenAiBatches),
    Anthropic(AnthropicBatches),
}

macro_rules! each {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            AnyBatches::OpenAi($b) => $e,
            AnyBatches::Anthropic($b) => $e,
        }
    };
}

impl BatchBackend for AnyBatches {
    fn name(&self) -> &str {
        each!(self, b => b.name())
    }

    fn limits(&self) -> BatchLimits {
        each!(self, b => b.limits())
    }

    async fn stage(&self, chunk: &Path, name: &str) -> Result<Option<String>, ProviderError> {
        each!(self, b => b.stage(chunk, name).await)
    }

    async fn submit(
        &self,
        staged: Option<&str>,
        chunk: &Path,
        identity: &SubmitIdentity,
    ) -> Result<RemoteBatch, ProviderError> {
        each!(self, b => b.submit(staged, chunk, identity).await)
    }

    async fn find(
        &self,
        staged: Option<&str>,
        identity: &SubmitIdentity,
    ) -> Result<Option<RemoteBatch>, ProviderError> {
        each!(self, b => b.find(staged, identity).await)
    }

    async fn status(&self, batch_id: &str) -> Result<RemoteBatch, ProviderError> {
        each!(self, b => b.status(batch_id).await)
    }

    async fn fetch(&self, result: &ResultRef, dest: &Path) -> Result<u64, ProviderError> {
        each!(self, b => b.fetch(result, dest).await)
    }

    fn classify(&self, line: &str) -> Result<ResultLine, String> {
        each!(self, b => b.classify(line))
    }

    async fn cancel(&self, batch_id: &str) -> Result<(), ProviderError> {
        each!(self, b => b.cancel(batch_id).await)
    }

    async fn clean_up(
        &self,
        staged: Option<&str>,
        batch_id: &str,
        results: &[ResultRef],
    ) -> Result<(), ProviderError> {
        each!(self, b => b.clean_up(staged, batch_id, results).await)
    }
}
