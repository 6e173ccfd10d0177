//! The provider client and the runner for the commands that drive one
//! (`apply`, `resume`, `cancel`), and the async runtime they run on. When the
//! spec asks for the simulated provider, its server is started here and
//! stopped when the runner is done.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::apply::direct::DirectRunner;
use crate::apply::{ApplyOptions, Ending, Runner, Summary};
use crate::error::{Error, Result};
use crate::provider::anthropic::{self, AnthropicBatches};
use crate::provider::direct::DirectClient;
use crate::provider::{AnyBatches, ClientConfig, OpenAiBatches, OpenAiClient, Secret};
use crate::report::Ui;
use crate::simulate::{SimConfig, SimServer};
use crate::spec::{CheckedSpec, ProviderKind, ProviderMode};
use crate::state::{self, JobStore, Layout};

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
    let mut runner = Runner::new(
        store,
        spec,
        plan,
        &backend,
        ui,
        opts,
        interrupted,
        server.is_some(),
    );
    let out = f(&mut runner).await;
    if let Some(s) = server {
        s.shutdown().await;
    }
    out
}

/// The backend for the spec's provider; for `simulated`, the server it talks to.
async fn connect(spec: &CheckedSpec, layout: &Layout) -> Result<(AnyBatches, Option<SimServer>)> {
    let p = &spec.spec.provider;
    if p.mode == ProviderMode::Direct {
        return Err(Error::usage_with_hint(
            format!(
                "{}: provider mode `direct` is not available in this version",
                spec.file.display(),
            ),
            "use `mode: batch` with `kind: openai` (also for Azure and LiteLLM), \
             `kind: anthropic` or `kind: simulated`",
        ));
    }
    let version = p
        .anthropic_version
        .as_deref()
        .unwrap_or(anthropic::DEFAULT_VERSION);
    if p.kind == ProviderKind::Simulated {
        let s = p.simulated.clone().unwrap_or_default();
        let config = SimConfig::from_spec(&s, Some(layout.simulated()));
        let speaks_anthropic = config.anthropic;
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
        let backend = if speaks_anthropic {
            AnyBatches::Anthropic(AnthropicBatches::new(cfg, version, "simulated")?)
        } else {
            AnyBatches::OpenAi(OpenAiBatches::new(OpenAiClient::new(cfg)?, "simulated"))
        };
        return Ok((backend, Some(server)));
    }
    if p.kind == ProviderKind::Anthropic {
        let cfg = AnthropicBatches::config_from_env(
            p.base_urls().first().map(String::as_str),
            p.api_key_env
                .as_deref()
                .unwrap_or(anthropic::DEFAULT_KEY_ENV),
        )?;
        return Ok((
            AnyBatches::Anthropic(AnthropicBatches::new(cfg, version, "anthropic")?),
            None,
        ));
    }
    let cfg = ClientConfig::from_env(
        p.base_urls().first().map(String::as_str),
        p.api_key_env.as_deref().unwrap_or("OPENAI_API_KEY"),
    )?;
    Ok((
        AnyBatches::OpenAi(OpenAiBatches::new(OpenAiClient::new(cfg)?, "openai")),
        None,
    ))
}

/// Direct mode: connect to the spec's endpoints (for `simulated`, start its
/// server and use its chat completions endpoint) and run the job.
pub async fn run_direct(
    store: &JobStore,
    spec: &CheckedSpec,
    plan: &state::PlanRecord,
    ui: &Ui,
    interrupted: Arc<AtomicBool>,
) -> Result<(Ending, Summary)> {
    let p = &spec.spec.provider;
    let in_flight = spec.spec.concurrency.max_requests_in_flight as usize;
    let (configs, server) = match p.kind {
        ProviderKind::Anthropic => {
            return Err(Error::usage_with_hint(
                format!(
                    "{}: `mode: direct` is for OpenAI-compatible servers",
                    spec.file.display()
                ),
                "use `kind: openai` (any OpenAI-compatible server) or `kind: simulated`",
            ));
        }
        ProviderKind::Simulated => {
            let s = p.simulated.clone().unwrap_or_default();
            let config = SimConfig::from_spec(&s, Some(store.layout().simulated()));
            let server = SimServer::start(config, 0).await.map_err(|e| {
                Error::io(
                    "start the simulated provider in",
                    store.layout().simulated(),
                    e,
                )
            })?;
            let cfg = ClientConfig::new(
                server.base_url(),
                Secret::new("sk-sim-local-0000"),
                "(simulated provider)",
            )
            .with_timeout_from_env()?;
            (vec![cfg], Some(server))
        }
        ProviderKind::Openai => {
            let key_env = p.api_key_env.as_deref().unwrap_or("OPENAI_API_KEY");
            let urls = p.base_urls();
            // OPENAI_BASE_URL names one server and overrides the spec's list.
            let configs = if urls.len() <= 1 || std::env::var_os("OPENAI_BASE_URL").is_some() {
                vec![ClientConfig::from_env(
                    urls.first().map(String::as_str),
                    key_env,
                )?]
            } else {
                urls.iter()
                    .map(|u| ClientConfig::from_env(Some(u), key_env))
                    .collect::<Result<Vec<_>, _>>()?
            };
            (configs, None)
        }
    };
    let client = Arc::new(DirectClient::new(&configs, in_flight)?);
    let out = match DirectRunner::new(store, spec, plan, client, ui, interrupted, server.is_some())
    {
        Ok(mut r) => r.run().await,
        Err(e) => Err(e),
    };
    if let Some(s) = server {
        s.shutdown().await;
    }
    out
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the async runtime for", PathBuf::from("."), e))
}
