//! `plan SPEC`: plan the job and show the summary, Terraform style.

use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;

use crate::cost::usd;
use crate::error::Result;
use crate::exit::{self, Code};
use crate::plan::{self as planner, Planned};
use crate::report::{Paint, Ui, num, plural, print_json};
use crate::settings::Global;
use crate::spec::units::human_bytes;
use crate::spec::{self, CheckedSpec};
use crate::state::{JobStore, PlanRecord};

pub fn run(g: &Global, spec_path: &Path, detailed_exitcode: bool, ui: &Ui) -> Result<Code> {
    let spec = spec::load(spec_path)?;
    let (_store, planned) = open_and_plan(g, &spec, ui)?;
    let p = &planned.plan;
    let state_dir = planned.job_dir.display().to_string();
    if ui.json {
        #[derive(Serialize)]
        struct Out<'a> {
            job: &'a str,
            changed: bool,
            state_dir: &'a str,
            #[serde(flatten)]
            plan: &'a PlanRecord,
        }
        print_json(&Out {
            job: &planned.job,
            changed: planned.changed,
            state_dir: &state_dir,
            plan: p,
        });
    }
    for w in &p.warnings {
        ui.warn(w);
    }
    ui.show(|w| {
        render(w, ui.paint(), &planned.job, p, planned.changed, &state_dir)?;
        render_next(w, spec_path, p.outstanding)
    });
    Ok(exit::for_plan(p.outstanding, detailed_exitcode))
}

/// Check what needs no state, then open the job's store once and plan into
/// it; `apply SPEC` goes on with the same store.
pub(super) fn open_and_plan(
    g: &Global,
    spec: &CheckedSpec,
    ui: &Ui,
) -> Result<(JobStore, Planned)> {
    let prepared = planner::prepare(spec, g.pricing.as_deref())?;
    let store = JobStore::open(&g.state_root, &spec.spec.name)?;
    let planned = planner::plan(&store, spec, prepared, ui)?;
    Ok((store, planned))
}

/// Chunks listed in full up to this many; beyond, the first few and the last.
const SHOWN: usize = 12;

/// The plan summary: what will be submitted and what is already done.
pub(super) fn render(
    w: &mut impl Write,
    p: Paint,
    job: &str,
    plan: &PlanRecord,
    changed: bool,
    state_dir: &str,
) -> io::Result<()> {
    let line = |w: &mut dyn Write, k: &str, v: &str| writeln!(w, "  {k:<15}{v}");
    if changed {
        writeln!(w, "{} {}", p.bold("Plan for job"), p.bold(job))?;
    } else {
        writeln!(
            w,
            "{} {}",
            p.bold("No changes."),
            p.dim(&format!(
                "The saved plan for `{job}` matches the spec and inputs."
            ))
        )?;
    }
    line(w, "model", &format!("{} ({})", plan.model, plan.encoding))?;
    line(
        w,
        "rows",
        &format!(
            "{}: {} to grade, {} already graded",
            num(plan.rows),
            num(plan.outstanding),
            num(plan.already_done)
        ),
    )?;
    line(
        w,
        "prompt tokens",
        &format!(
            "{} to submit ({} per request on average)",
            num(plan.prompt_tokens),
            num(plan
                .prompt_tokens
                .checked_div(plan.outstanding)
                .unwrap_or(0))
        ),
    )?;
    line(
        w,
        "chunks",
        &format!(
            "{} ({} of JSONL)",
            plan.chunks.len(),
            human_bytes(plan.bytes)
        ),
    )?;
    if !plan.chunks.is_empty() {
        writeln!(
            w,
            "{}",
            p.dim(&format!(
                "  {:>17} {:>10} {:>12} {:>10}",
                "chunk", "requests", "tokens", "size"
            ))
        )?;
        let n = plan.chunks.len();
        for (i, c) in plan.chunks.iter().enumerate() {
            if n > SHOWN && i == SHOWN - 2 {
                writeln!(w, "  {:>17}", format!("… {} more", n - SHOWN + 1))?;
            }
            if n > SHOWN && i >= SHOWN - 2 && i + 1 < n {
                continue;
            }
            writeln!(
                w,
                "  {:>17} {:>10} {:>12} {:>10}",
                c.index,
                num(c.requests),
                num(c.tokens),
                human_bytes(c.bytes)
            )?;
        }
    }
    match (&plan.price, &plan.estimate) {
        (Some(price), Some(e)) => {
            let mut v = format!("{} prompt", usd(e.low));
            if let Some(x) = e.expected {
                v.push_str(&format!(", ~{} expected", usd(x)));
            }
            match e.high {
                Some(h) => v.push_str(&format!(", at most {}", usd(h))),
                None => v.push_str(", no upper bound (the request sets no max_tokens)"),
            }
            line(w, "cost (batch)", &v)?;
            line(
                w,
                "",
                &p.dim(&format!(
                    "{} at ${}/${} per 1M in/out tokens, prices of {}",
                    price.model,
                    price.batch_input_per_1m,
                    price.batch_output_per_1m,
                    price.prices_as_of
                )),
            )?;
        }
        _ => line(w, "cost (batch)", "unknown: the model has no price")?,
    }
    line(w, "state", state_dir)
}

/// What to run next.
fn render_next(w: &mut impl Write, spec_path: &Path, outstanding: u64) -> io::Result<()> {
    if outstanding > 0 {
        writeln!(
            w,
            "Next: `batchgrader apply {}` submits {} request{}.",
            spec_path.display(),
            num(outstanding),
            plural(outstanding, "s")
        )
    } else {
        writeln!(w, "Every row is already graded; nothing to submit.")
    }
}
