//! The provider client and the runner for the commands that drive one
//! (`apply`, `resume`, `cancel`), and the async runtime they run on. When the
//! spec asks for the simulated provider, its server is started here and
//! stopped when the runner is done.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::apply::{ApplyOptions, Runner};
use crate::error::{Error, Result};
use crate::provider::{ClientConfig, OpenAiClient, Secret};
use crate::report::Ui;
use crate::simulate::{SimConfig, SimServer};
use crate::spec::{self, CheckedSpec, ProviderKind, ProviderMode, units};
use crate::state::{self, JobStore};

/// Connect to the spec's provider, let `f` drive a runner, then stop the
/// simulated server (if any) whatever `f` returned.
pub async fn with_runner<T>(
    store: &JobStore,
    spec: &CheckedSpec,
    plan: &state::PlanRecord,
    ui: &Ui,
    opts: ApplyOptions,
    interrupted: Arc<AtomicBool>,
    f: impl AsyncFnOnce(&mut Runner<'_>) -> Result<T>,
) -> Result<T> {
    let (client, server) = connect(spec, store.dir()).await?;
    let mut runner = Runner::new(
        store,
        spec,
        plan,
        &client,
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
async fn connect(spec: &CheckedSpec, job_dir: &Path) -> Result<(OpenAiClient, Option<SimServer>)> {
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
        let dur = |v: &str| units::parse_duration(v).unwrap_or(Duration::from_millis(200));
        let rate =
            |r: &Option<spec::Rate>| r.as_ref().and_then(|r| r.fraction().ok()).unwrap_or(0.0);
        let config = SimConfig {
            data_dir: Some(job_dir.join("simulated")),
            api_key: None,
            validating: dur(&s.validating),
            in_progress: dur(&s.in_progress),
            finalizing: dur(&s.finalizing),
            request_failure_rate: rate(&s.request_failure_rate),
            http_error_rate: rate(&s.http_error_rate),
            seed: 0,
            drop_metadata: false,
        };
        let server = SimServer::start(config, 0).await.map_err(|e| {
            Error::io(
                "start the simulated provider in",
                job_dir.join("simulated"),
                e,
            )
        })?;
        let cfg = ClientConfig::new(
            server.base_url(),
            Secret::new("simulated"),
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
