//! `cancel [JOB]`: stop the job's batches that are out and mark the job
//! cancelled, so `resume` collects partial results and submits nothing new.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::connect::{runtime, with_runner};
use super::job;
use crate::apply::ApplyOptions;
use crate::error::{Error, Result};
use crate::exit::Code;
use crate::settings::Global;
use crate::state::JobStore;
use crate::ui::{Ui, plural, print_json};

pub fn run(g: &Global, job: Option<&str>, ui: &Ui) -> Result<Code> {
    let g = &super::homes::state_for(g, job, job::Verb::Cancel, ui)?;
    let job = job::resolve(g, job, job::Verb::Cancel)?;
    let store = JobStore::open_existing(&g.state_root, &job)?;
    let spec = job::saved_spec(&store)?;
    let plan = job::current_plan(&store, &job)?;
    if spec.endpoint.mode == crate::spec::ProviderMode::Direct {
        // Nothing runs at the provider: stop sending is all there is. A run
        // in progress holds the job's lock, so this comes after it (Ctrl-C
        // stops one at once).
        store.set_cancelled(Some(crate::state::now_secs()))?;
        if ui.json {
            print_json(&serde_json::json!({
                "job": job,
                "batches_cancelled": 0,
                "batches_unreached": Vec::<String>::new(),
            }));
        }
        ui.show(|w| {
            writeln!(
                w,
                "Cancelled job `{job}` (direct mode): nothing more is sent. `batchgrader resume {job}` writes the output from the answers recorded; `batchgrader apply SPEC` starts the job again."
            )
        });
        return Ok(Code::Success);
    }
    let rt = runtime()?;
    let cancelled = rt.block_on(with_runner(
        &store,
        &spec,
        &plan,
        ui,
        ApplyOptions::default(),
        Arc::new(AtomicBool::new(false)),
        async |r| r.cancel().await,
    ))?;
    let Some((n, unreached)) = cancelled else {
        if ui.json {
            print_json(&serde_json::json!({
                "job": job,
                "batches_cancelled": 0,
                "batches_unreached": [],
                "nothing_to_cancel": true,
            }));
        }
        ui.show(|w| {
            writeln!(
                w,
                "Nothing to cancel: job `{job}` has no batch out and nothing left to submit. Nothing was changed."
            )
        });
        return Ok(Code::Success);
    };
    if ui.json {
        print_json(&serde_json::json!({
            "job": job,
            "batches_cancelled": n - unreached.len(),
            "batches_unreached": unreached,
        }));
    }
    if !unreached.is_empty() {
        // The job is marked cancelled, but the provider may still run these.
        return Err(Error::runtime_with_hint(
            format!(
                "job `{job}` is cancelled, but the provider could not be asked to stop {} of its {n} batch{} ({}); they may still run and be billed",
                unreached.len(),
                plural(n as u64, "es"),
                unreached.join(", ")
            ),
            format!("run `batchgrader cancel {job}` again when the provider answers"),
        ));
    }
    ui.show(|w| {
        writeln!(
            w,
            "Cancelled job `{job}`: asked {n} batch{} to stop. `batchgrader resume {job}` collects what they finished (nothing new is submitted); `batchgrader apply SPEC` starts the job again.",
            plural(n as u64, "es")
        )
    });
    Ok(Code::Success)
}
