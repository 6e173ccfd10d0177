//! `report [JOB] [--out F.html]`: gather what the state knows of a job and
//! write it as one self-contained HTML file (`crate::htmlreport`).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::job;
use crate::apply::decide;
use crate::error::{Error, Result};
use crate::exit::Code;
use crate::htmlreport::{ChunkRow, ReportData, render};
use crate::provider::EndKind;
use crate::settings::Global;
use crate::spec::ProviderKind;
use crate::state::{JobStore, UnitRecord};
use crate::ui::{Ui, print_json};

pub fn run(g: &Global, job: Option<&str>, out: Option<&Path>, ui: &Ui) -> Result<Code> {
    let g = &super::homes::state_for(g, job, job::Verb::Report, ui)?;
    let job = job::resolve(g, job, job::Verb::Report)?;
    let store = JobStore::open_existing(&g.state_root, &job)?;
    let spec = job::saved_spec(&store)?;
    let plan = job::current_plan(&store, &job)?;
    let units = store.units(plan.generation)?;
    let graded = crate::apply::grade_stats(&store, &spec, &plan)?;
    let direct = spec.endpoint.is_direct();
    // Direct mode keeps no batch records: its spend is in the ledger.
    let (receipt, input_tokens, output_tokens) = if direct {
        let ledger = crate::state::Layout::ledger_in(&g.state_root);
        let (entries, _) =
            crate::costs::read(&g.state_root).map_err(|e| Error::io("read", &ledger, e))?;
        let s = crate::costs::direct_spend(&entries, &job);
        let receipt = crate::status::Receipt {
            paid_usd: s.cost_usd,
            standard_usd: s.cost_usd,
            saved_usd: 0.0,
            cache_saved_usd: None,
        };
        (receipt, s.input_tokens, s.output_tokens)
    } else {
        (
            decide::receipt(&units, plan.price.as_ref()),
            units.iter().map(|u| u.input_tokens).sum(),
            units.iter().map(|u| u.output_tokens).sum(),
        )
    };
    let data = ReportData {
        job: job.clone(),
        model: plan.model.clone(),
        simulated: spec.endpoint.kind == ProviderKind::Simulated,
        generated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        rows: plan.rows,
        outstanding: plan.outstanding,
        already_done: plan.already_done,
        prompt_tokens: plan.prompt_tokens,
        planned_chunks: plan.chunks.len(),
        estimate: plan.estimate,
        prices_as_of: plan.price.as_ref().map(|p| p.prices_as_of.clone()),
        direct,
        receipt,
        input_tokens,
        output_tokens,
        written: graded.written,
        grades: graded.grades,
        distribution: graded.distribution,
        parse_failures_by_reason: graded.parse_failures_by_reason,
        api_failures_by_code: graded.api_failures_by_code,
        chunks: units.iter().map(chunk_row).collect(),
        agreement: graded.agreement,
        failures: graded.failures,
    };
    // `--out DIR` (`.` included) puts the report in that folder, as `cp` would.
    let name = format!("{job}.report.html");
    let path = match out {
        None => PathBuf::from(name),
        Some(p) if p.is_dir() => p.join(name),
        Some(p) => p.to_path_buf(),
    };
    // The same guard as every output: not over the job's files, not into
    // the state folder (a report written over db/ lost the job).
    crate::protect::check_output(
        &path,
        crate::protect::OutputFrom::Flag("--out"),
        &spec,
        g.pricing.as_deref(),
        &g.state_root,
    )?;
    if crate::protect::same_file(&path, &spec.output_path) {
        return Err(crate::error::Error::usage_with_hint(
            format!(
                "--out {} is the job's output file; writing the report there would destroy the graded rows",
                path.display()
            ),
            "name another file, e.g. --out report.html",
        ));
    }
    write_atomically(&path, render(&data).as_bytes())?;
    if ui.json {
        print_json(&serde_json::json!({
            "job": job,
            "report_path": path.display().to_string(),
            "written": data.written,
        }));
    }
    let charts = (data.grades.len() + usize::from(!data.distribution.is_empty())) as u64;
    ui.show(|w| {
        writeln!(
            w,
            "{}: report of job {} ({} rows, {} chart{}{})",
            path.display(),
            job,
            crate::ui::num(data.rows),
            charts,
            crate::ui::plural(charts, "s"),
            match data.agreement.len() {
                0 => String::new(),
                n => format!(
                    ", agreement with gold for {n} field{}",
                    crate::ui::plural(n as u64, "s")
                ),
            }
        )
    });
    Ok(Code::Success)
}

fn chunk_row(u: &UnitRecord) -> ChunkRow {
    let state = match &u.end {
        Some(EndKind::Completed) => "completed".to_string(),
        Some(EndKind::Failed { reason }) => format!("failed: {reason}"),
        Some(EndKind::Expired) => "expired".into(),
        Some(EndKind::Cancelled) => "cancelled".into(),
        Some(other) => format!("{other:?}").to_lowercase(),
        None if u.given_up.is_some() => "given up".into(),
        None => u
            .remote_status
            .clone()
            .unwrap_or_else(|| format!("{:?}", u.phase).to_lowercase()),
    };
    ChunkRow {
        id: u.id,
        attempt: u.attempt,
        requests: u.requests,
        completed: u.completed,
        failed: u.failed,
        batch_id: u.batch_id.clone(),
        state,
        submitted_at: u.submitted_at,
        ended_at: u.ended_at,
        cost_usd: u.cost_usd,
    }
}

/// Temp file beside the target, then rename: never half a report.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create folder", dir, e))?;
    }
    let name = path
        .file_name()
        .map_or("report".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let res = crate::nofollow::write(&tmp, bytes)
        .map_err(|e| Error::io("write", &tmp, e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io("rename into", path, e)));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}
