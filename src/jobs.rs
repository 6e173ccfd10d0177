//! The commands that work on a planned job: `apply`, `resume`, `status`,
//! `export`. They find the job, open its state, build the provider client
//! (starting the simulated server when the spec asks for it) and hand over
//! to `apply::Runner`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::apply::{ApplyOptions, Runner, Summary};
use crate::cost::usd;
use crate::error::{Error, Result};
use crate::exit::{self, Code};
use crate::plan::{Planned, plan, prepare};
use crate::provider::{ClientConfig, OpenAiClient, Secret};
use crate::report::{Ui, num, plan_text, print_json};
use crate::simulate::{SimConfig, SimServer};
use crate::spec::{self, CheckedSpec, ProviderKind, ProviderMode, units};
use crate::state::{self, JobStore};
use crate::status::{self, RunState, Snapshot};

/// The job a command means: the one named, else the only job in the state folder.
pub fn resolve_job(state_root: &Path, job: Option<&str>) -> Result<String> {
    if let Some(j) = job {
        return Ok(j.to_string());
    }
    let mut jobs: Vec<String> = std::fs::read_dir(state_root)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("db").is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    jobs.sort();
    match jobs.len() {
        1 => Ok(jobs.remove(0)),
        0 => Err(Error::usage_with_hint(
            format!("no job in {}", state_root.display()),
            "run `batchgrader plan SPEC` or `batchgrader apply SPEC` first, or pass --state",
        )),
        _ => Err(Error::usage_with_hint(
            format!(
                "{} holds several jobs ({}); say which one",
                state_root.display(),
                jobs.join(", ")
            ),
            "pass the job name, e.g. `batchgrader status NAME`",
        )),
    }
}

/// The job's spec as saved by `plan`, with paths resolved as they were then.
fn saved_spec(store: &JobStore) -> Result<CheckedSpec> {
    let job = store
        .job()?
        .ok_or_else(|| Error::usage("the job has no saved spec; plan it first"))?;
    Ok(spec::from_saved(Path::new(&job.spec_file), job.spec)?)
}

/// The job's current plan, or an error saying how to make one.
fn current_plan(store: &JobStore, job: &str) -> Result<state::PlanRecord> {
    store.plan()?.ok_or_else(|| {
        Error::usage_with_hint(
            format!("job `{job}` has no plan yet"),
            "run `batchgrader plan SPEC` or `batchgrader apply SPEC`",
        )
    })
}

/// Connect to the spec's provider, let `f` drive a runner, then stop the
/// simulated server (if any) whatever `f` returned.
async fn with_runner<T>(
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

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the async runtime for", PathBuf::from("."), e))
}

pub struct ApplyArgs<'a> {
    pub spec: Option<&'a Path>,
    pub job: Option<&'a str>,
    pub detach: bool,
    pub yes: bool,
    /// `resume`: never re-plan.
    pub resume: bool,
}

/// Check what needs no state, then open the job's store once and plan into
/// it; `apply SPEC` goes on with the same store.
pub fn open_and_plan(
    state_root: &Path,
    pricing: Option<&Path>,
    spec: &CheckedSpec,
    ui: &Ui,
) -> Result<(JobStore, Planned)> {
    let prepared = prepare(spec, pricing)?;
    let store = JobStore::open(state_root, &spec.spec.name)?;
    let planned = plan(&store, spec, prepared, ui)?;
    Ok((store, planned))
}

/// `apply [SPEC]` and `resume [JOB]`: plan if needed, then run the job with
/// the same store and spec.
pub fn apply(args: ApplyArgs, state_root: &Path, pricing: Option<&Path>, ui: &Ui) -> Result<Code> {
    let (store, spec, plan) = match (args.spec, args.resume) {
        (Some(spec_path), false) => {
            let spec = spec::load(spec_path)?;
            let (store, planned) = open_and_plan(state_root, pricing, &spec, ui)?;
            if planned.changed {
                ui.info(&ui.dim(
                    "The spec or its inputs changed since the last plan (or there was none): planned first.",
                ));
                for w in &planned.plan.warnings {
                    ui.warn(w);
                }
                ui.info(&plan_text(
                    ui,
                    &planned.job,
                    &planned.plan,
                    true,
                    &planned.job_dir.display().to_string(),
                ));
            }
            (store, spec, planned.plan)
        }
        _ => {
            let job = resolve_job(state_root, args.job)?;
            let store = JobStore::open_existing(state_root, &job)?;
            let spec = saved_spec(&store)?;
            let plan = current_plan(&store, &job)?;
            (store, spec, plan)
        }
    };
    if !args.resume && store.cancelled_at()?.is_some() {
        // `apply` is the user asking for the job to run again.
        store.set_cancelled(None)?;
        ui.info("The job was cancelled; applying it again.");
    }
    let started = !store.units(plan.generation)?.is_empty();
    if plan.outstanding > 0 && !started && !args.yes && !confirm(ui, &plan)? {
        ui.info("Nothing submitted.");
        return Ok(Code::Success);
    }
    let rt = runtime()?;
    let interrupted = Arc::new(AtomicBool::new(false));
    let result = rt.block_on(async {
        let flag = interrupted.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::SeqCst);
            }
        });
        let opts = ApplyOptions {
            detach: args.detach,
        };
        with_runner(
            &store,
            &spec,
            &plan,
            ui,
            opts,
            interrupted.clone(),
            async |r| r.run().await,
        )
        .await
    });
    let (ending, summary) = match result {
        Ok(r) => r,
        Err(e) => {
            // The state is consistent at every step; say how to go on.
            mark_detached(&store);
            return Err(e);
        }
    };
    if ui.json {
        /// The summary, and the warnings of the plan that was applied.
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            summary: &'a Summary,
            warnings: &'a [String],
        }
        print_json(&Out {
            summary: &summary,
            warnings: &plan.warnings,
        });
    }
    ui.info(&summary_text(ui, &summary));
    Ok(exit::for_ending(&ending, &summary))
}

/// A run that stopped on an error leaves batches running with nobody
/// watching; say so in the snapshot.
fn mark_detached(store: &JobStore) {
    if let Ok(Some(mut snap)) = status::read(store.dir())
        && snap.state == RunState::Running
    {
        snap.state = RunState::Detached;
        snap.pid = None;
        snap.message = Some("stopped on an error; fix it and run `batchgrader resume`".into());
        let _ = status::write(store.dir(), &snap);
    }
}

/// On a terminal, a large estimate asks first; CI never prompts.
fn confirm(ui: &Ui, plan: &state::PlanRecord) -> Result<bool> {
    const ASK_ABOVE_USD: f64 = 10.0;
    let Some(e) = &plan.estimate else {
        return Ok(true);
    };
    let worst = e.high.unwrap_or(e.expected.unwrap_or(e.low));
    if worst <= ASK_ABOVE_USD || !ui.tty || !std::io::stdin().is_terminal() || ui.json {
        return Ok(true);
    }
    eprint!(
        "Submit {} requests, estimated up to {}? [y/N] ",
        num(plan.outstanding),
        usd(worst)
    );
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Error::io("read the answer from", PathBuf::from("stdin"), e))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn summary_text(ui: &Ui, s: &Summary) -> String {
    let mut out = String::new();
    let head = match s.ending.as_str() {
        "finished" => "Finished",
        "halted" => "Halted",
        "detached" => "Detached",
        _ => "Interrupted",
    };
    out.push_str(&format!(
        "{} {}",
        ui.bold(head),
        ui.bold(&format!("job {}", s.job))
    ));
    if s.simulated {
        out.push_str(&ui.dim(" (simulated provider: the answers are made up, not from a model)"));
    }
    out.push('\n');
    if let Some(m) = &s.message {
        out.push_str(&format!("  {m}\n"));
    }
    if s.output_path.is_some() {
        out.push_str(&format!(
            "  rows        {}: {} graded, {} parse failure{}, {} failed{}\n",
            num(s.rows),
            num(s.graded),
            num(s.parse_failures),
            if s.parse_failures == 1 { "" } else { "s" },
            num(s.failed),
            if s.not_graded > 0 {
                format!(", {} not graded", num(s.not_graded))
            } else {
                String::new()
            }
        ));
        if s.rows > 0 && (s.failed > 0 || s.parse_failures > 0) {
            out.push_str(&format!(
                "  rates       API failures {:.1}%, parse failures {:.1}%\n",
                s.failed as f64 * 100.0 / s.rows as f64,
                s.parse_failures as f64 * 100.0 / s.rows as f64
            ));
        }
        if !s.distribution.is_empty() {
            let parts: Vec<String> = s
                .distribution
                .iter()
                .take(15)
                .map(|(v, n)| format!("{v}: {}", num(*n)))
                .collect();
            out.push_str(&format!("  values      {}\n", parts.join(", ")));
        }
    }
    out.push_str(&format!(
        "  cost        {} spent{}\n",
        usd(s.actual_cost_usd),
        s.estimated_cost_usd
            .map(|e| format!(" (estimated {})", usd(e)))
            .unwrap_or_default()
    ));
    if let Some(p) = &s.output_path {
        out.push_str(&format!("  output      {p}\n"));
    }
    out
}

/// `status [JOB]`: the snapshot `apply` keeps, without touching the lock.
pub fn status(
    state_root: &Path,
    job: Option<&str>,
    watch: bool,
    exit_status: bool,
    ui: &Ui,
) -> Result<Code> {
    let job = resolve_job(state_root, job)?;
    let dir = state::job_dir(state_root, &job);
    loop {
        let snap = read_snapshot(state_root, &job, &dir)?;
        if ui.json {
            print_json(&snap);
        } else if watch && ui.tty {
            let _ = console::Term::stderr().clear_screen();
        }
        if !ui.json || watch {
            ui.info(status::render(ui, &snap, state::now_secs()).trim_end());
        }
        let done = matches!(snap.state, RunState::Finished | RunState::Halted);
        if !watch || done {
            return Ok(if exit_status {
                exit::for_run_state(snap.state)
            } else {
                Code::Success
            });
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn read_snapshot(state_root: &Path, job: &str, dir: &Path) -> Result<Snapshot> {
    if let Some(mut snap) =
        status::read(dir).map_err(|e| Error::io("read", status::path(dir), e))?
    {
        if snap.state == RunState::Running && !snap.pid.is_some_and(process_alive) {
            snap.state = RunState::Detached;
            snap.message = Some(format!(
                "the process that was applying the job (pid {}) is gone; run `batchgrader resume`",
                snap.pid.unwrap_or(0)
            ));
        }
        return Ok(snap);
    }
    // Planned but never applied: build the snapshot from the plan.
    let store = JobStore::open_existing(state_root, job)?;
    let plan = current_plan(&store, job)?;
    Ok(Snapshot {
        job: job.to_string(),
        state: RunState::Planned,
        pid: None,
        updated_at: plan.created_at,
        started_at: None,
        model: plan.model.clone(),
        totals: status::Totals {
            rows: plan.rows,
            to_grade: plan.outstanding,
            already_done: plan.already_done,
            succeeded: 0,
            failed: 0,
            pending: plan.outstanding,
        },
        estimated_cost_usd: plan
            .estimate
            .as_ref()
            .map(|e| e.expected.or(e.high).unwrap_or(e.low)),
        actual_cost_usd: 0.0,
        output_path: None,
        message: Some("planned; run `batchgrader apply` to submit".into()),
        receipt: status::Receipt::default(),
        outage_since: None,
        units: vec![],
    })
}

fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// `export [JOB] --out F`: write the output again from the state.
pub fn export(state_root: &Path, job: Option<&str>, out: Option<&Path>, ui: &Ui) -> Result<Code> {
    let job = resolve_job(state_root, job)?;
    let store = JobStore::open_existing(state_root, &job)?;
    let spec = saved_spec(&store)?;
    let plan = current_plan(&store, &job)?;
    let path = out.map_or_else(|| spec.output_path.clone(), Path::to_path_buf);
    let (w, _) = crate::apply::write_output_to(
        &store,
        &spec,
        &plan,
        &path,
        if out.is_some() {
            None
        } else {
            spec.spec.output.format
        },
    )?;
    if ui.json {
        print_json(
            &serde_json::json!({"job": job, "output_path": path.display().to_string(), "written": w}),
        );
    }
    ui.info(&format!(
        "{}: {} rows ({} graded, {} parse failures, {} failed, {} not graded)",
        path.display(),
        num(w.rows),
        num(w.ok),
        num(w.parse_errors),
        num(w.failed),
        num(w.not_graded)
    ));
    Ok(Code::Success)
}

/// `cancel [JOB]`: stop the job's batches that are out.
pub fn cancel(state_root: &Path, job: Option<&str>, ui: &Ui) -> Result<Code> {
    let job = resolve_job(state_root, job)?;
    let store = JobStore::open_existing(state_root, &job)?;
    let spec = saved_spec(&store)?;
    let plan = current_plan(&store, &job)?;
    let rt = runtime()?;
    let n = rt.block_on(with_runner(
        &store,
        &spec,
        &plan,
        ui,
        ApplyOptions::default(),
        Arc::new(AtomicBool::new(false)),
        async |r| r.cancel().await,
    ))?;
    if ui.json {
        print_json(&serde_json::json!({"job": job, "batches_cancelled": n}));
    }
    ui.info(&format!(
        "Cancelled job `{job}`: asked {n} batch{} to stop. `batchgrader resume` collects what they finished (nothing new is submitted); `batchgrader apply SPEC` starts the job again.",
        if n == 1 { "" } else { "es" }
    ));
    Ok(Code::Success)
}

/// `simulate-server`: the simulated provider on its own.
pub fn simulate_server(config: SimConfig, port: u16) -> Result<Code> {
    let rt = runtime()?;
    rt.block_on(crate::simulate::run_forever(config, port))
        .map_err(|e| {
            Error::io(
                "run the simulated server on port",
                PathBuf::from(port.to_string()),
                e,
            )
        })?;
    Ok(Code::Success)
}
