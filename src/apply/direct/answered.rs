//! What an attempt's result does: an answer recorded (once durable, it
//! counts), a failure recorded or retried, an endpoint cooled down, or the
//! run stopped with what to do next.

use super::*;

impl DirectRunner<'_> {
    /// One attempt's result: record it, or return the request to send again.
    pub(super) fn handle(
        &mut self,
        d: Done,
        committer: &mut Committer,
        shifts: &mut VecDeque<Shift>,
        typical_tokens: u64,
    ) -> Result<Option<Req>> {
        let Done {
            mut req,
            endpoint,
            result,
        } = d;
        let now = self.ms();
        self.endpoints.finished(endpoint);
        let got = match &result {
            Attempted::Transport { failure, detail } => Got::Transport {
                failure: *failure,
                detail,
            },
            Attempted::Answer {
                status,
                retry,
                body,
                line,
                ..
            } => Got::Answer {
                status: *status,
                retry,
                body,
                line,
            },
        };
        // The endpoint's health.
        match &result {
            Attempted::Transport { failure, detail } => {
                let refused = *failure == TransportFailure::Connect;
                self.last_errors[endpoint] = Some(detail.clone());
                self.endpoint_failed(endpoint, now, refused);
            }
            Attempted::Answer { status, limits, .. } => {
                if *status >= 500 {
                    self.last_errors[endpoint] = Some(format!("HTTP {status}"));
                    self.endpoint_failed(endpoint, now, false);
                } else {
                    self.endpoints.answered(endpoint);
                    self.outage_since_ms = None;
                }
                if limits.any() {
                    self.pace.on_headers(now, limits, typical_tokens);
                }
                if *status == 429 {
                    let wait = match &result {
                        Attempted::Answer { retry, .. } => {
                            crate::provider::retry::retry_after(retry, SystemTime::now())
                        }
                        Attempted::Transport { .. } => None,
                    };
                    self.pace
                        .on_rate_limited(now, wait.map(|w| w.as_millis() as u64));
                } else {
                    self.pace.on_answer();
                }
            }
        }
        let verdict = verdict::judge(
            got,
            req.tries,
            req.limited,
            &self.policy,
            jitter(),
            SystemTime::now(),
        );
        match verdict {
            Verdict::Again {
                after,
                counts,
                class,
            } => {
                *self.errors.entry(class.to_string()).or_default() += 1;
                if counts {
                    req.tries += 1;
                }
                if class == "rate_limited" {
                    req.limited += 1;
                }
                req.not_before_ms = now + after.as_millis() as u64;
                Ok(Some(req))
            }
            Verdict::Stop(reason) => Err(self.stop_error(&result, &reason).into()),
            Verdict::Fail { code, message } => {
                let class = match &result {
                    Attempted::Transport { .. } => "network",
                    Attempted::Answer { .. } => "bad_response",
                };
                *self.errors.entry(class.to_string()).or_default() += 1;
                let message = self.client.redact(&message);
                self.record_failure(req, code, message, true, committer, shifts);
                Ok(None)
            }
            Verdict::Record => {
                let Attempted::Answer {
                    status,
                    request_id,
                    line,
                    ..
                } = result
                else {
                    unreachable!("only answers are recorded as they are")
                };
                match line {
                    LineOutcome::Success(s) => {
                        let after = RequestState::Succeeded {
                            parsed: self.frame.parser.parse(&s.content).is_ok(),
                        };
                        let u = s.usage;
                        shifts.push_back(Shift {
                            before: req.before,
                            after,
                            tokens: Tokens {
                                input: u.prompt_tokens,
                                output: u.completion_tokens,
                                cache_write: u.cache_write_tokens,
                                cache_read: u.cache_read_tokens,
                                reasoning: u.reasoning_tokens,
                            },
                        });
                        committer.push(
                            req.fingerprint,
                            Outcome::Success(ResultRecord {
                                answer: s.content,
                                input_tokens: u.prompt_tokens,
                                output_tokens: u.completion_tokens,
                                cache_write_tokens: u.cache_write_tokens,
                                cache_read_tokens: u.cache_read_tokens,
                                reasoning_tokens: u.reasoning_tokens,
                            }),
                        );
                    }
                    LineOutcome::Failure(f) => {
                        *self
                            .errors
                            .entry(verdict::failure_class(status).to_string())
                            .or_default() += 1;
                        let mut message = self.client.redact(&f.message);
                        if let Some(id) = request_id {
                            message.push_str(&format!(" (request {id})"));
                        }
                        self.record_failure(req, f.code, message, f.retryable, committer, shifts);
                    }
                }
                Ok(None)
            }
        }
    }

    pub(super) fn record_failure(
        &mut self,
        req: Req,
        code: String,
        message: String,
        retryable: bool,
        committer: &mut Committer,
        shifts: &mut VecDeque<Shift>,
    ) {
        let (attempts, runs) = match req.before {
            RequestState::Failed { attempts, runs, .. } => (attempts, runs),
            _ => (0, 0),
        };
        self.pass_failures += 1;
        // Server text, bound for the outcome log, the output and `report`.
        use crate::provider::bounded::{MAX_LABEL, MAX_MESSAGE, clean_text};
        let f = FailureRecord {
            code: clean_text(&code, MAX_LABEL),
            message: clean_text(&message, MAX_MESSAGE),
            retryable,
            attempts: attempts + 1,
            ran: true,
            runs: Some(runs + 1),
        };
        shifts.push_back(Shift {
            before: req.before,
            after: failed_state(&f),
            tokens: Tokens::default(),
        });
        committer.push(req.fingerprint, Outcome::Failure(f));
    }

    pub(super) fn endpoint_failed(&mut self, endpoint: usize, now: u64, refused: bool) {
        let was_out = self.endpoints.list[endpoint].cool_until_ms > now;
        if let Failed::CooledDown { until_ms } = self.endpoints.failed(endpoint, now, refused)
            && !was_out
        {
            self.event(&format!(
                "endpoint {} left out for {} ({})",
                self.client.shown(endpoint),
                status::short_duration(until_ms.saturating_sub(now).div_ceil(1000)),
                self.last_errors[endpoint].as_deref().unwrap_or("failing")
            ));
        }
        if self.endpoints.all_failing() {
            self.outage_since_ms.get_or_insert(now);
        }
    }

    pub(super) fn last_error_text(&self) -> String {
        (0..self.client.endpoints())
            .map(|i| {
                format!(
                    "{}: {}",
                    self.client.shown(i),
                    self.last_errors[i].as_deref().unwrap_or("-")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The error that ends the run, with what to do next.
    pub(super) fn stop_error(&self, result: &Attempted, reason: &Reason) -> ProviderError {
        let Attempted::Answer {
            status,
            request_id,
            body,
            line,
            ..
        } = result
        else {
            unreachable!("only answers stop a run")
        };
        let env = &self.frame.spec.endpoint.key_env;
        let job = self.frame.job();
        let (kind, hint) = match reason {
            Reason::Quota => (
                ErrorKind::Quota,
                format!(
                    "the account is out of credit or over its spend limit: add credit or raise the limit, then run `batchgrader resume {job}`"
                ),
            ),
            Reason::Unauthorized => (
                ErrorKind::Auth,
                format!("check that {env} holds a valid key for these servers"),
            ),
            Reason::Forbidden => (
                ErrorKind::Permission,
                format!("the key in {env} may not use this model or endpoint"),
            ),
            Reason::RetryAfterTooLong { wait } => (
                ErrorKind::RetryAfterTooLong,
                format!(
                    "the server asked to wait {}; run `batchgrader resume {job}` then",
                    crate::provider::error::human_wait(*wait)
                ),
            ),
            _ => (
                ErrorKind::Rejected,
                format!("run `batchgrader resume {job}`"),
            ),
        };
        let message = match line {
            LineOutcome::Failure(f) => f.message.clone(),
            LineOutcome::Success(_) => body.chars().take(200).collect(),
        };
        ProviderError::new(self.client.protocol().call(), kind)
            .with_status(Some(*status))
            .with_request_id(request_id.clone())
            .with_detail(self.client.redact(&message))
            .with_hint(Some(format!(
                "{hint} (recorded answers are kept; only requests without one are sent again)"
            )))
    }
}
