//! The provider client and the runner for the commands that drive one
//! (`apply`, `resume`, `cancel`), and the async runtime they run on. When the
//! spec asks for the simulated provider, its server is started here and
//! stopped when the runner is done.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::apply::{ApplyOptions, Runner};
use crate::error::{Error, Result};
use crate::provider::{ClientConfig, OpenAiBatches, OpenAiClient, Secret};
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
    f: impl AsyncFnOnce(&mut Runner<'_, OpenAiBatches>) -> Result<T>,
) -> Result<T> {
    let (client, server) = connect(spec, store.layout()).await?;
    let name = if server.is_some() {
        "simulated"
    } else {
        "openai"
    };
    let backend = OpenAiBatches::new(client, name);
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

/// A client for the spec's provider; for `simulated`, the server it talks to.
async fn connect(spec: &CheckedSpec, layout: &Layout) -> Result<(OpenAiClient, Option<SimServer>)> {
    let p = &spec.spec.provider;
    if p.mode == ProviderMode::Direct || p.kind == ProviderKind::Anthropic {
        return Err(Error::usage_with_hint(
            format!(
                "{}: provider {} is not available in this version",
                spec.file.display(),
                if p.mode == ProviderMode::Direct {
                    "mode `direct`"
                } else {
                    "kind `anthropic`"
                }
            ),
            "use `kind: openai` (also for Azure and LiteLLM) or `kind: simulated` with `mode: batch`",
        ));
    }
    if p.kind == ProviderKind::Simulated {
        let s = p.simulated.clone().unwrap_or_default();
        let config = SimConfig::from_spec(&s, Some(layout.simulated()));
        let server = SimServer::start(config, 0)
            .await
            .map_err(|e| Error::io("start the simulated provider in", layout.simulated(), e))?;
        let cfg = ClientConfig::new(
            server.base_url(),
            // Any key works; this one is long and odd enough that redacting
            // it never masks a word of the server's messages.
            Secret::new("sk-sim-local-0000"),
            "(simulated provider)",
        );
        return Ok((OpenAiClient::new(cfg)?, Some(server)));
    }
    let cfg = ClientConfig::from_env(
        p.base_url.as_deref(),
        p.api_key_env.as_deref().unwrap_or("OPENAI_API_KEY"),
    )?;
    Ok((OpenAiClient::new(cfg)?, None))
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the async runtime for", PathBuf::from("."), e))
}
