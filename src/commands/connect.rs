//! The provider client and the runner for the commands that drive one
//! (`apply`, `resume`, `cancel`), and the async runtime they run on. When the
//! spec asks for the simulated provider, its server is started here and
//! stopped when the runner is done.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::apply::direct::DirectRunner;
use crate::apply::{ApplyOptions, Ending, RunFrame, Runner, SampleFile, Summary};
use crate::error::{Error, Result};
use crate::provider::anthropic::AnthropicBatches;
use crate::provider::direct::{DirectClient, Protocol};
use crate::provider::{AnyBatches, ClientConfig, OpenAiBatches, OpenAiClient, Secret};
use crate::simulate::{SimConfig, SimServer};
use crate::spec::{CheckedSpec, Wire};
use crate::state::{self, JobStore, Layout};
use crate::ui::Ui;

/// Connect to the spec's provider, let `f` drive a runner, then stop the
/// simulated server (if any) whatever `f` returned.
pub async fn with_runner<T>(
    store: &JobStore,
    spec: &CheckedSpec,
    plan: &state::PlanRecord,
    ui: &Ui,
    opts: ApplyOptions,
    interrupted: Arc<AtomicBool>,
    f: impl AsyncFnOnce(&mut Runner<'_, AnyBatches>) -> Result<T>,
) -> Result<T> {
    let (backend, server) = connect(spec, store.layout()).await?;
    let out = match RunFrame::open(store, spec, plan, ui, interrupted, server.is_some()) {
        Ok(frame) => f(&mut Runner::new(frame, &backend, opts)).await,
        Err(e) => Err(e),
    };
    if let Some(s) = server {
        s.shutdown().await;
    }
    out
}

/// The backend for the spec's provider; for `simulated`, the server it talks to.
async fn connect(spec: &CheckedSpec, layout: &Layout) -> Result<(AnyBatches, Option<SimServer>)> {
    let e = &spec.endpoint;
    if e.is_direct() {
        return Err(Error::usage_with_hint(
            format!(
                "{}: provider mode `direct` is not available in this version",
                spec.file.display(),
            ),
            "use `mode: batch` with `kind: openai` (also for Azure and LiteLLM), \
             `kind: anthropic` or `kind: simulated`",
        ));
    }
    let name = e.provider_name();
    let (cfg, server) = match &e.simulated {
        Some(_) => {
            let (cfg, server) = simulated(spec, layout).await?;
            (cfg, Some(server))
        }
        None => {
            let base = e.base_urls.first().map(String::as_str);
            let cfg = match spec.wire {
                Wire::AnthropicMessages => AnthropicBatches::config_from_env(base, &e.key_env)?,
                Wire::OpenAiChat => ClientConfig::from_env(base, &e.key_env)?,
            };
            (cfg, None)
        }
    };
    let backend = match spec.wire {
        Wire::AnthropicMessages => {
            AnyBatches::Anthropic(AnthropicBatches::new(cfg, &e.anthropic_version, name)?)
        }
        Wire::OpenAiChat => AnyBatches::OpenAi(OpenAiBatches::new(OpenAiClient::new(cfg)?, name)),
    };
    Ok((backend, server))
}

/// Start the simulated provider of the spec in the job's folder, and the
/// client settings that reach it.
async fn simulated(spec: &CheckedSpec, layout: &Layout) -> Result<(ClientConfig, SimServer)> {
    let config = SimConfig::from_spec(spec, Some(layout.simulated()));
    let server = SimServer::start(config, 0)
        .await
        .map_err(|e| Error::io("start the simulated provider in", layout.simulated(), e))?;
    let cfg = ClientConfig::new(
        server.base_url(),
        // Any key works; this one is long and odd enough that redacting
        // it never masks a word of the server's messages.
        Secret::new("sk-sim-local-0000"),
        "(simulated provider)",
    )
    .with_timeout_from_env()?;
    Ok((cfg, server))
}

/// A rehearsal's part of a direct run: the plan positions to send, and
/// the sample file its rows go to.
pub struct Rehearsal {
    pub seqs: std::collections::HashSet<u64>,
    pub file: SampleFile,
}

/// What a direct run is for.
pub enum DirectLane {
    /// A direct-mode job.
    Job,
    /// `apply --sample`: a sample of a job of either mode.
    Rehearsal(Rehearsal),
    /// A batch job past its deadline's margin: the rows its batches did
    /// not answer; `refused` when the budget does not allow it.
    Fallback { refused: Option<String> },
}

/// Direct mode: connect to the spec's endpoints (for `simulated`, start its
/// server) in the protocol of the spec's wire, and run the job (or, with
/// `rehearsal`, its sample: the direct lane of a job of either mode).
pub async fn run_direct(
    store: &JobStore,
    spec: &CheckedSpec,
    plan: &state::PlanRecord,
    ui: &Ui,
    opts: ApplyOptions,
    interrupted: Arc<AtomicBool>,
    lane: DirectLane,
) -> Result<(Ending, Summary)> {
    let e = &spec.endpoint;
    let in_flight = spec.run.max_requests_in_flight as usize;
    let protocol = match spec.wire {
        Wire::OpenAiChat => Protocol::ChatCompletions,
        Wire::AnthropicMessages => Protocol::Messages {
            version: e.anthropic_version.clone(),
        },
    };
    // ANTHROPIC_BASE_URL or OPENAI_BASE_URL, as the wire's batch lane reads it.
    let (base_env, from_env) = match spec.wire {
        Wire::OpenAiChat => ("OPENAI_BASE_URL", ClientConfig::from_env as ConfigFn),
        Wire::AnthropicMessages => (
            crate::provider::anthropic::BASE_URL_ENV,
            AnthropicBatches::config_from_env as ConfigFn,
        ),
    };
    let (configs, server) = match &e.simulated {
        Some(_) => {
            let (cfg, server) = simulated(spec, store.layout()).await?;
            (vec![cfg], Some(server))
        }
        None => {
            let urls = &e.base_urls;
            // The base URL variable names one server and overrides the spec's list.
            let configs = if urls.len() <= 1 || std::env::var_os(base_env).is_some() {
                vec![from_env(urls.first().map(String::as_str), &e.key_env)?]
            } else {
                urls.iter()
                    .map(|u| from_env(Some(u), &e.key_env))
                    .collect::<Result<Vec<_>, _>>()?
            };
            (configs, None)
        }
    };
    let client = Arc::new(DirectClient::new(&configs, in_flight, protocol)?);
    let out = match RunFrame::open(store, spec, plan, ui, interrupted, server.is_some()) {
        Ok(frame) => match lane {
            DirectLane::Job => {
                DirectRunner::new(frame, client)
                    .retrying(opts.retry)
                    .run()
                    .await
            }
            DirectLane::Rehearsal(r) => {
                DirectRunner::new(frame.rehearsing(r.file), client)
                    .only(r.seqs)
                    .run()
                    .await
            }
            DirectLane::Fallback { refused } => {
                DirectRunner::new(frame, client)
                    .after_batches(refused)
                    .run()
                    .await
            }
        },
        Err(e) => Err(e),
    };
    if let Some(s) = server {
        s.shutdown().await;
    }
    out
}

/// How a wire's client settings are read from the environment.
type ConfigFn =
    fn(Option<&str>, &str) -> std::result::Result<ClientConfig, crate::provider::ProviderError>;

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the async runtime for", PathBuf::from("."), e))
}
