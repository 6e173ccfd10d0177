//! The simulated OpenAI-compatible provider (Files, Batches, Chat Completions) on 127.0.0.1.
//!
//! It speaks the wire protocol of `reference/provider-apis.md` so that the
//! real HTTP client can be tested (and demoed) offline. Answers are
//! deterministic functions of each request, batches move through their
//! lifecycle on the wall clock, and everything it produces is marked as
//! simulated (`system_fingerprint: "batchgrader-simulated"`, ids with `sim`).
//!
//! With a `data_dir`, files and batches survive a restart: a batch's status is
//! computed from its creation time, so a new server carries on where the old
//! one stopped.

mod answers;
pub mod anthropic;
mod api_error;
mod app;
mod batch_file;
mod batches_api;
mod extract;
mod faults;
mod files_api;
mod hash;
mod routes;
mod state;
mod store;
mod wire;

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::spec::{CheckedSpec, Output, ParseMode, Simulated, Wire};
use app::App;

pub use answers::AnswerShape;

/// How long `shutdown` waits for open connections (a long download, say).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct SimConfig {
    /// Persist files and batches here, so a restarted server continues the
    /// same batches; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    /// When set, `Authorization: Bearer <key>` must match exactly; otherwise
    /// any non-empty bearer token is accepted.
    pub api_key: Option<String>,
    /// Time a batch stays in `validating`.
    pub validating: Duration,
    /// Time from `in_progress` until every request is done.
    pub in_progress: Duration,
    pub finalizing: Duration,
    /// Fraction of batch requests that end as HTTP 500 lines in the error file.
    /// The draw depends on the batch and the request, so such a request fails
    /// every time it is in that batch.
    pub request_failure_rate: f64,
    /// Fraction of requests (batch lines, Anthropic results, chat
    /// completions) answered HTTP 400 `invalid_request_error`: a final
    /// error, never worth retrying, as a gateway without its database or a
    /// server that refuses the request's grammar answers every request.
    /// Drawn per request and batch (per call in chat), so a server started
    /// without it answers the same requests.
    pub reject_rate: f64,
    /// Fraction of batch requests that fail once, as an HTTP 500 or 503 line:
    /// the next time this server runs the same `custom_id` with the same body
    /// (in another batch, also after a restart with `data_dir`) it succeeds.
    pub request_flake_rate: f64,
    /// Fraction of `/v1` calls answered 500 or 429 (half each) before doing
    /// anything, to exercise client retries. Kept for older specs; the two
    /// rates below say which fault is meant.
    pub http_error_rate: f64,
    /// Fraction of `/v1` calls answered HTTP 429 `rate_limit_exceeded` (with
    /// `retry-after` and `retry-after-ms`) before doing anything.
    pub rate_limit_rate: f64,
    /// Fraction of `/v1` calls answered HTTP 500, 502 or 503 before doing anything.
    pub server_error_rate: f64,
    /// Fraction of `POST /v1/batches` that create the batch (it runs and is
    /// listed) and then answer 500: a client that retries blindly makes a
    /// duplicate.
    pub create_commit_error_rate: f64,
    /// Every Nth batch created (N, 2N, ...; counted over the server's life,
    /// kept in `data_dir`) fails validation with `token_limit_exceeded`, as
    /// OpenAI reports a full enqueued-token quota; 0 = never.
    pub token_limit_every: u64,
    /// Every Nth batch created, counted like `token_limit_every` (the same
    /// ordinal; a batch due for both fails with the token limit), ends
    /// `expired` after running only the first half of its requests; 0 = never.
    pub expire_every: u64,
    /// Seeds what must be reproducible: output order and `request_failure_rate`.
    /// The injected HTTP errors do not use it alone: they also mix in a value
    /// drawn when the server starts, so a restarted server fails other calls.
    pub seed: u64,
    /// Answer `metadata: null` on every Batch object, as some
    /// OpenAI-compatible servers do (metadata is still kept for `/_sim/stats`).
    pub drop_metadata: bool,
    /// Message Batches: every line of every results stream is cut in the
    /// middle (no line is JSON), as a proxy that mangles the stream would.
    pub malformed_results: bool,
    /// OpenAI Batches: share of `POST /v1/batches` that make a second batch
    /// of the same file and metadata behind the answer (a gateway that
    /// retried a create whose first try made its batch and answered 500),
    /// answered with the second. The client sees one batch; two run.
    pub twin_create_rate: f64,
    /// Speak Anthropic's Message Batches API instead of OpenAI's Files +
    /// Batches (see `anthropic`).
    pub anthropic: bool,
    /// The shape of the answers to requests without a JSON `response_format`:
    /// the job's labels or pattern, so a rehearsal parses as the real job would.
    pub answers: AnswerShape,
    /// Prompt tokens billed on every answered batch line beyond the chat
    /// rule the plan counts with: a provider whose count differs from the
    /// plan's (another tokenizer, a schema's tokens). 0 by default.
    pub extra_prompt_tokens: u64,
}

/// By hand, so that a key never reaches a log.
impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("data_dir", &self.data_dir)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("validating", &self.validating)
            .field("in_progress", &self.in_progress)
            .field("finalizing", &self.finalizing)
            .field("request_failure_rate", &self.request_failure_rate)
            .field("reject_rate", &self.reject_rate)
            .field("request_flake_rate", &self.request_flake_rate)
            .field("http_error_rate", &self.http_error_rate)
            .field("rate_limit_rate", &self.rate_limit_rate)
            .field("server_error_rate", &self.server_error_rate)
            .field("create_commit_error_rate", &self.create_commit_error_rate)
            .field("token_limit_every", &self.token_limit_every)
            .field("expire_every", &self.expire_every)
            .field("seed", &self.seed)
            .field("drop_metadata", &self.drop_metadata)
            .field("malformed_results", &self.malformed_results)
            .field("twin_create_rate", &self.twin_create_rate)
            .field("anthropic", &self.anthropic)
            .field("answers", &self.answers)
            .field("extra_prompt_tokens", &self.extra_prompt_tokens)
            .finish()
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            data_dir: None,
            api_key: None,
            validating: Duration::from_millis(200),
            in_progress: Duration::from_secs(1),
            finalizing: Duration::from_millis(200),
            request_failure_rate: 0.0,
            reject_rate: 0.0,
            request_flake_rate: 0.0,
            http_error_rate: 0.0,
            rate_limit_rate: 0.0,
            server_error_rate: 0.0,
            create_commit_error_rate: 0.0,
            token_limit_every: 0,
            expire_every: 0,
            seed: 0,
            drop_metadata: false,
            malformed_results: false,
            twin_create_rate: 0.0,
            anthropic: false,
            answers: AnswerShape::Free,
            extra_prompt_tokens: 0,
        }
    }
}

impl SimConfig {
    /// The simulator a job spec asks for: its `provider.simulated` block
    /// (defaults when it has none), speaking the job's wire, answering in
    /// the shape its `output` block parses.
    pub fn from_spec(spec: &CheckedSpec, data_dir: Option<PathBuf>) -> SimConfig {
        let block = spec.endpoint.simulated.clone().unwrap_or_default();
        SimConfig {
            answers: AnswerShape::for_output(spec.output(), spec.schema.is_some()),
            ..SimConfig::from_block(&block, spec.wire, data_dir)
        }
    }

    /// The server a `provider.simulated` block describes. The spec was
    /// validated, so a value that does not parse keeps the default.
    fn from_block(s: &Simulated, wire: Wire, data_dir: Option<PathBuf>) -> SimConfig {
        use crate::spec::{Rate, units};
        let defaults = SimConfig::default();
        let duration = |v: &str, default: Duration| units::parse_duration(v).unwrap_or(default);
        let rate = |r: &Option<Rate>| r.as_ref().and_then(|r| r.fraction().ok()).unwrap_or(0.0);
        SimConfig {
            data_dir,
            validating: duration(&s.validating, defaults.validating),
            in_progress: duration(&s.in_progress, defaults.in_progress),
            finalizing: duration(&s.finalizing, defaults.finalizing),
            request_failure_rate: rate(&s.request_failure_rate),
            request_flake_rate: rate(&s.request_flake_rate),
            http_error_rate: rate(&s.http_error_rate),
            rate_limit_rate: rate(&s.rate_limit_rate),
            server_error_rate: rate(&s.server_error_rate),
            create_commit_error_rate: rate(&s.create_commit_error_rate),
            token_limit_every: s.token_limit_every.unwrap_or(0),
            expire_every: s.expire_every.unwrap_or(0),
            anthropic: wire == Wire::AnthropicMessages,
            ..defaults
        }
    }
}

impl AnswerShape {
    /// The shape an `output` block parses: its labels for `parse: label`,
    /// its pattern for `parse: regex`; with a schema the requests carry it
    /// (and are answered by it), so the shape stays free.
    pub fn for_output(output: &Output, has_schema: bool) -> AnswerShape {
        let labels = output.labels.clone().unwrap_or_default();
        match (output.parse, &output.pattern) {
            _ if has_schema => AnswerShape::Free,
            (ParseMode::Label, _) => AnswerShape::Labels(labels),
            (ParseMode::Regex, Some(pattern)) => AnswerShape::Pattern {
                pattern: pattern.clone(),
                labels,
            },
            _ => AnswerShape::Free,
        }
    }
}

/// What to tell the user before a job runs on the simulated provider:
/// that it cannot write answers the job's `output.pattern` matches, if so.
pub fn spec_note(spec: &CheckedSpec) -> Option<String> {
    if !spec.endpoint.is_simulated() {
        return None;
    }
    AnswerShape::for_output(spec.output(), spec.schema.is_some()).note()
}

/// A running simulated provider. Dropping it stops serving; prefer
/// [`SimServer::shutdown`], which also waits for background work to finish.
pub struct SimServer {
    pub addr: SocketAddr,
    /// The OpenAI simulation's state; `None` for the Message Batches one,
    /// which has no background work to stop.
    app: Option<Arc<App>>,
    stop: tokio::sync::watch::Sender<bool>,
    server: Option<JoinHandle<io::Result<()>>>,
}

impl SimServer {
    /// Binds `127.0.0.1:port` (0 picks a free port) and serves on the current
    /// tokio runtime.
    pub async fn start(config: SimConfig, port: u16) -> io::Result<SimServer> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
        let addr = listener.local_addr()?;
        let stop_tx = tokio::sync::watch::Sender::new(false);
        let mut stop = stop_tx.subscribe();
        let (app, router) = if config.anthropic {
            let sim = anthropic::open(config)?;
            sim.set_base(anthropic::base_url(addr));
            (None, anthropic::router(sim))
        } else {
            let app = App::open(config)?;
            let mut app_stop = app.shutdown_signal();
            let tx = stop_tx.clone();
            // The OpenAI simulation's own stop signal also stops serving.
            tokio::spawn(async move {
                let _ = app_stop.wait_for(|s| *s).await;
                tx.send_replace(true);
            });
            (Some(app.clone()), routes::router(app))
        };
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                })
                .await
        });
        if let Some(app) = &app {
            app.resume_drivers();
        }
        Ok(SimServer {
            addr,
            app,
            stop: stop_tx,
            server: Some(server),
        })
    }

    /// `http://127.0.0.1:PORT/v1`; for the Message Batches API, without
    /// `/v1` (its paths start with it).
    pub fn base_url(&self) -> String {
        match self.app {
            Some(_) => format!("http://{}/v1", self.addr),
            None => anthropic::base_url(self.addr),
        }
    }

    /// Stops accepting calls, lets open ones finish (for a few seconds), and
    /// waits for the batch workers, leaving `data_dir` consistent.
    pub async fn shutdown(mut self) {
        match &self.app {
            Some(app) => app.stop().await,
            None => {
                self.stop.send_replace(true);
            }
        }
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
                .await
                .is_err()
        {
            server.abort();
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        // Graceful: the server and the workers see the signal and wind down.
        if let Some(app) = &self.app {
            app.signal_stop();
        }
        self.stop.send_replace(true);
    }
}

/// For `batchgrader simulate-server`: serves until Ctrl-C or SIGTERM.
pub async fn run_forever(config: SimConfig, port: u16) -> io::Result<()> {
    let server = SimServer::start(config, port).await?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "simulate-server listening on {}", server.base_url())?;
    stdout.flush()?;
    drop(stdout);
    termination().await?;
    server.shutdown().await;
    Ok(())
}

async fn termination() -> io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Rate, Simulated};

    #[test]
    fn from_spec_maps_every_key() {
        let spec = Simulated {
            api: Default::default(),
            validating: "1s".into(),
            in_progress: "3s".into(),
            finalizing: "40ms".into(),
            request_failure_rate: Some(Rate::Percent("2%".into())),
            http_error_rate: Some(Rate::Fraction(0.25)),
            rate_limit_rate: Some(Rate::Percent("5%".into())),
            server_error_rate: Some(Rate::Fraction(0.1)),
            create_commit_error_rate: Some(Rate::Fraction(0.5)),
            token_limit_every: Some(3),
            expire_every: Some(4),
            request_flake_rate: Some(Rate::Percent("1%".into())),
        };
        let dir = PathBuf::from("/tmp/sim");
        let c = SimConfig::from_block(
            &spec,
            Wire::of(crate::spec::ProviderKind::Simulated, spec.api),
            Some(dir.clone()),
        );
        assert_eq!(c.data_dir, Some(dir));
        assert_eq!(
            (c.validating, c.in_progress, c.finalizing),
            (
                Duration::from_secs(1),
                Duration::from_secs(3),
                Duration::from_millis(40)
            )
        );
        assert_eq!(c.request_failure_rate, 0.02);
        assert_eq!(c.http_error_rate, 0.25);
        assert_eq!(
            (
                c.rate_limit_rate,
                c.server_error_rate,
                c.create_commit_error_rate
            ),
            (0.05, 0.1, 0.5)
        );
        assert_eq!((c.token_limit_every, c.expire_every), (3, 4));
        assert_eq!(c.request_flake_rate, 0.01);
        assert_eq!((c.api_key, c.seed, c.drop_metadata), (None, 0, false));
    }

    #[test]
    fn from_spec_defaults() {
        let c = SimConfig::from_block(&Simulated::default(), Wire::OpenAiChat, None);
        assert_eq!(c.data_dir, None);
        assert_eq!(c.validating, Duration::from_millis(200));
        assert_eq!(c.in_progress, Duration::from_secs(2));
        assert_eq!(c.request_failure_rate, 0.0);
        assert_eq!(c.http_error_rate, 0.0);
        let off = (
            c.rate_limit_rate,
            c.server_error_rate,
            c.create_commit_error_rate,
            c.request_flake_rate,
        );
        assert_eq!(off, (0.0, 0.0, 0.0, 0.0));
        assert_eq!((c.token_limit_every, c.expire_every), (0, 0));
    }

    /// A checked spec on `provider` with `output` lines after `path:`.
    fn checked(provider: &str, output: &str) -> CheckedSpec {
        let text = format!(
            "version: 1\nname: t\nmodel: gpt-4o-mini\nprovider:\n  kind: {provider}\n\
             input:\n  path: in.csv\nprompt:\n  user: \"{{{{ text }}}}\"\n\
             output:\n  path: out.csv\n{output}"
        );
        crate::spec::check(std::path::Path::new("s.yaml"), &text).unwrap()
    }

    #[test]
    fn from_spec_answers_in_the_shape_the_output_parses() {
        let labels = vec!["billing".to_string(), "bug".into()];
        let cases = [
            ("", AnswerShape::Free),
            ("  parse: number\n", AnswerShape::Free),
            (
                "  parse: label\n  labels: [billing, bug]\n",
                AnswerShape::Labels(labels),
            ),
            (
                "  parse: regex\n  pattern: 'Score: (\\d+)'\n",
                AnswerShape::Pattern {
                    pattern: "Score: (\\d+)".into(),
                    labels: vec![],
                },
            ),
            // A schema rides in the request and shapes the answer itself.
            (
                "  schema:\n    type: object\n    properties: {grade: {type: integer}}\n    \
                 required: [grade]\n    additionalProperties: false\n",
                AnswerShape::Free,
            ),
        ];
        for (output, want) in cases {
            let spec = checked("simulated", output);
            let c = SimConfig::from_spec(&spec, None);
            assert_eq!(c.answers, want, "{output}");
            assert!(!c.anthropic);
            assert_eq!(
                c.in_progress,
                Duration::from_secs(2),
                "the block's defaults"
            );
        }
    }

    #[test]
    fn a_pattern_the_simulator_cannot_answer_is_said_before_the_run() {
        let never = "  parse: regex\n  pattern: '^\\d{5}$'\n";
        let note = spec_note(&checked("simulated", never)).unwrap();
        assert!(
            note.contains("simulated provider cannot write answers"),
            "{note}"
        );
        // A real provider's model may well write them.
        assert_eq!(spec_note(&checked("openai", never)), None);
        let fine = "  parse: regex\n  pattern: '(\\d+)/10'\n";
        assert_eq!(spec_note(&checked("simulated", fine)), None);
    }
}
