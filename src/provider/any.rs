//! One type for "the spec's batch backend", so the runner (generic over
//! [`BatchBackend`]) is built once at the command edge whichever provider
//! the spec names.
//!
//! It is also where every backend's answers are bounded before the runner
//! stores, logs or shows them: ids a server hands out must be plain ids
//! (`bounded::id_problem`; they are used as given, so they are checked, not
//! cut), and its labels, reasons, codes and messages are cleaned and cut
//! (`bounded::clean_text`).

use std::path::Path;

use super::anthropic::AnthropicBatches;
use super::batch::{
    BatchBackend, BatchLimits, EndKind, LineError, OwnBatch, RemoteBatch, RemoteState, ResultLine,
    ResultRef, SubmitIdentity,
};
use super::bounded::{MAX_LABEL, MAX_MESSAGE, clean_text, id_problem};
use super::error::{ErrorKind, ProviderError};
use super::openai::OpenAiBatches;
use super::watch::CallWatch;

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

impl AnyBatches {
    /// The calls out, for the live view's waiting line.
    pub fn watch(&self) -> &CallWatch {
        match self {
            AnyBatches::OpenAi(b) => b.client().watch(),
            AnyBatches::Anthropic(b) => b.watch(),
        }
    }
}

/// `Err` naming the call when a server's id cannot be used.
fn check_id(op: &str, what: &str, id: &str) -> Result<(), ProviderError> {
    match id_problem(id) {
        None => Ok(()),
        Some(why) => Err(ProviderError::new(op, ErrorKind::Protocol)
            .with_detail(format!(
                "the server gave a {what} that cannot be used: {why}"
            ))
            .with_hint(Some(
                "check that the base URL is the provider's API; the call is tried again later"
                    .into(),
            ))),
    }
}

/// A batch as the runner may keep it: its ids checked, its text cleaned.
pub fn checked_batch(op: &str, b: RemoteBatch) -> Result<RemoteBatch, ProviderError> {
    check_id(op, "batch id", &b.id)?;
    let label = |l: String| clean_text(&l, MAX_LABEL);
    let reason = |r: String| clean_text(&r, MAX_MESSAGE);
    let state = match b.state {
        RemoteState::Running {
            label: l,
            done,
            failed,
        } => RemoteState::Running {
            label: label(l),
            done,
            failed,
        },
        RemoteState::Requeue {
            label: l,
            reason: r,
        } => RemoteState::Requeue {
            label: label(l),
            reason: reason(r),
        },
        RemoteState::Ended {
            label: l,
            end,
            results,
            usage,
        } => {
            for r in &results {
                check_id(op, &format!("{} file id", r.name), &r.id)?;
            }
            let end = match end {
                EndKind::Failed { reason: r } => EndKind::Failed { reason: reason(r) },
                EndKind::Lost { reason: r } => EndKind::Lost { reason: reason(r) },
                other => other,
            };
            RemoteState::Ended {
                label: label(l),
                end,
                results,
                usage,
            }
        }
    };
    Ok(RemoteBatch { id: b.id, state })
}

/// A result line as the runner may record it: a custom id that is an id,
/// the code and message of a failure cleaned (the answer of a success is
/// the user's data and stays as it is).
pub fn checked_line(line: ResultLine) -> Result<ResultLine, String> {
    if let Some(why) = id_problem(line.custom_id()) {
        return Err(format!("its `custom_id` is not one: {why}"));
    }
    Ok(match line {
        ResultLine::Failure {
            custom_id,
            code,
            message,
            retryable,
            ran,
        } => ResultLine::Failure {
            custom_id,
            code: clean_text(&code, MAX_LABEL),
            message: clean_text(&message, MAX_MESSAGE),
            retryable,
            ran,
        },
        success => success,
    })
}

impl BatchBackend for AnyBatches {
    fn name(&self) -> &str {
        each!(self, b => b.name())
    }

    fn limits(&self) -> BatchLimits {
        each!(self, b => b.limits())
    }

    async fn stage(&self, chunk: &Path, name: &str) -> Result<Option<String>, ProviderError> {
        let staged = each!(self, b => b.stage(chunk, name).await)?;
        if let Some(id) = &staged {
            check_id(&format!("upload file {name}"), "file id", id)?;
        }
        Ok(staged)
    }

    async fn submit(
        &self,
        staged: Option<&str>,
        chunk: &Path,
        identity: &SubmitIdentity,
    ) -> Result<RemoteBatch, ProviderError> {
        let b = each!(self, b => b.submit(staged, chunk, identity).await)?;
        // The server answered 2xx: the batch exists even if its id is unusable.
        checked_batch("create batch", b).map_err(ProviderError::into_unclear)
    }

    async fn find(
        &self,
        staged: Option<&str>,
        identity: &SubmitIdentity,
    ) -> Result<Option<RemoteBatch>, ProviderError> {
        each!(self, b => b.find(staged, identity).await)?
            .map(|b| checked_batch("find batch", b))
            .transpose()
    }

    async fn list_own(
        &self,
        job: &str,
        plan: &str,
        since: u64,
    ) -> Result<Option<Vec<OwnBatch>>, ProviderError> {
        let Some(found) = each!(self, b => b.list_own(job, plan, since).await)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(found.len());
        for o in found {
            out.push(OwnBatch {
                batch: checked_batch("list batches", o.batch)?,
                ..o
            });
        }
        Ok(Some(out))
    }

    async fn status(&self, batch_id: &str) -> Result<RemoteBatch, ProviderError> {
        let b = each!(self, b => b.status(batch_id).await)?;
        checked_batch(&format!("retrieve batch {batch_id}"), b)
    }

    async fn fetch(&self, result: &ResultRef, dest: &Path) -> Result<u64, ProviderError> {
        each!(self, b => b.fetch(result, dest).await)
    }

    fn classify(&self, line: &str, submit: &SubmitIdentity) -> Result<ResultLine, LineError> {
        checked_line(each!(self, b => b.classify(line, submit))?).map_err(LineError::Unreadable)
    }

    async fn cancel(&self, batch_id: &str) -> Result<(), ProviderError> {
        each!(self, b => b.cancel(batch_id).await)
    }

    fn calls(&self) -> Option<&CallWatch> {
        Some(self.watch())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(results: Vec<ResultRef>, end: EndKind) -> RemoteBatch {
        RemoteBatch {
            id: "batch_1".into(),
            state: RemoteState::Ended {
                label: "completed".into(),
                end,
                results,
                usage: None,
            },
        }
    }

    #[test]
    fn batches_are_checked_and_cleaned() {
        let r = |id: &str| ResultRef {
            name: "output".into(),
            id: id.into(),
        };
        let long = "x".repeat(5000);
        // (batch, Ok(expected) or Err(part of the message))
        let cases: Vec<(RemoteBatch, Result<RemoteBatch, &str>)> = vec![
            (
                ended(vec![r("file-1")], EndKind::Completed),
                Ok(ended(vec![r("file-1")], EndKind::Completed)),
            ),
            (
                RemoteBatch {
                    id: "batch_\u{1b}[2J".into(),
                    state: RemoteState::Running {
                        label: "x".into(),
                        done: 0,
                        failed: 0,
                    },
                },
                Err("batch id that cannot be used"),
            ),
            (
                ended(vec![r(&long)], EndKind::Completed),
                Err("output file id that cannot be used: it is 5000 bytes long"),
            ),
            (
                ended(
                    vec![],
                    EndKind::Failed {
                        reason: format!("\u{1b}]0;t\u{7}bad {long}"),
                    },
                ),
                Ok(ended(
                    vec![],
                    EndKind::Failed {
                        reason: format!("bad {}…", &long[..MAX_MESSAGE - 4]),
                    },
                )),
            ),
            (
                RemoteBatch {
                    id: "b".into(),
                    state: RemoteState::Running {
                        label: format!("in_progress\u{1b}[31m{long}"),
                        done: 1,
                        failed: 2,
                    },
                },
                Ok(RemoteBatch {
                    id: "b".into(),
                    state: RemoteState::Running {
                        label: format!("in_progress{}…", &long[..MAX_LABEL - 11]),
                        done: 1,
                        failed: 2,
                    },
                }),
            ),
        ];
        for (input, want) in cases {
            let got = checked_batch("retrieve batch b", input.clone());
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{input:?}"),
                (Err(e), Err(part)) => {
                    assert!(e.to_string().contains(part), "{e}");
                    assert!(e.to_string().starts_with("retrieve batch b failed"), "{e}");
                }
                (g, w) => panic!("{input:?}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn result_lines_are_checked_and_cleaned() {
        let fail = |id: &str, code: &str, message: &str| ResultLine::Failure {
            custom_id: id.into(),
            code: code.into(),
            message: message.into(),
            retryable: true,
            ran: true,
        };
        let ok = ResultLine::Success {
            custom_id: "r1".into(),
            answer: "\u{1b}[1mkept as it is\n".into(),
            input_tokens: 1,
            output_tokens: 2,
            cache_write_tokens: 0,
            cache_read_tokens: 0,
            reasoning_tokens: 0,
        };
        assert_eq!(checked_line(ok.clone()), Ok(ok));
        assert_eq!(
            checked_line(fail("r2", "server\u{7}_error", "boom\u{1b}[2J\nagain")),
            Ok(fail("r2", "server _error", "boom again"))
        );
        let e = checked_line(fail("r\u{1b}[2J", "c", "m")).unwrap_err();
        assert!(e.contains("custom_id"), "{e}");
        let e = checked_line(fail(&"r".repeat(2000), "c", "m")).unwrap_err();
        assert!(e.contains("2000 bytes"), "{e}");
    }
}
