//! `plan SPEC`: plan the job and show the summary, Terraform style.

use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;

use crate::cost::usd;
use crate::error::Result;
use crate::exit::{self, Code};
use crate::plan::{self as planner, Planned};
use crate::protect::{self, OutputFrom};
use crate::settings::Global;
use crate::spec::units::human_bytes;
use crate::spec::{self, CheckedSpec};
use crate::state::{JobStore, PlanRecord};
use crate::ui::{Paint, Ui, num, plural, print_json};

pub fn run(g: &Global, spec_path: &Path, detailed_exitcode: bool, ui: &Ui) -> Result<Code> {
    let spec = spec::load(spec_path)?;
    for w in spec.warnings_text() {
        ui.warn(&w);
    }
    let (store, planned) = open_and_plan(g, &spec, ui)?;
    // An unchanged plan may be partly or wholly done: what is left is what
    // has no final outcome yet (Terraform's "no changes" when nothing is).
    let remaining = if planned.changed {
        planned.plan.outstanding
    } else {
        crate::apply::tally_of(&store, &spec, planned.plan.generation)?.pending
    };
    let shown = left_to_do(&planned.plan, remaining);
    let p = &shown;
    let state_dir = crate::registry::normal(&planned.job_dir)
        .display()
        .to_string();
    if ui.json {
        #[derive(Serialize)]
        struct Out<'a> {
            job: &'a str,
            changed: bool,
            /// Requests with no final outcome yet.
            remaining: u64,
            state_dir: &'a str,
            #[serde(flatten)]
            plan: &'a PlanRecord,
        }
        print_json(&Out {
            job: &planned.job,
            changed: planned.changed,
            remaining,
            state_dir: &state_dir,
            plan: p,
        });
    }
    for w in &p.warnings {
        ui.warn(w);
    }
    ui.show(|w| {
        render(
            w,
            ui.paint(),
            &planned.job,
            p,
            planned.changed,
            spec.endpoint.is_direct(),
            &state_dir,
        )?;
        if let Some(line) = deadline_line(&spec, &store)? {
            writeln!(w, "  {:<14} {line}", "deadline")?;
        }
        render_next(w, spec_path, p.outstanding)
    });
    Ok(exit::for_plan(remaining, detailed_exitcode))
}

/// The deadline, its margin, and the lane that takes the rows left.
fn deadline_line(spec: &CheckedSpec, store: &JobStore) -> io::Result<Option<String>> {
    let Some(d) = &spec.run.deadline else {
        return Ok(None);
    };
    if spec.endpoint.is_direct() {
        return Ok(Some(
            "set, but the job is in the direct lane already: it has no effect".into(),
        ));
    }
    let fallback = format!(
        "then the rows left go to the direct lane ({}, standard prices)",
        match spec.wire {
            crate::spec::Wire::AnthropicMessages => "POST /v1/messages",
            crate::spec::Wire::OpenAiChat => "POST /v1/chat/completions",
        }
    );
    let margin = match d.margin {
        Some(m) => crate::status::short_duration(m.as_secs()),
        None => "15% of the time left at the first apply, 1 to 30 minutes".into(),
    };
    let fixed = store
        .fixed_deadline()
        .ok()
        .flatten()
        .filter(|f| f.text == d.text);
    Ok(Some(match (fixed, d.when) {
        (Some(f), _) => format!(
            "{} (fixed by the first apply); margin {}; {fallback}",
            crate::status::deadline_line(&f.deadline, crate::state::now_secs())
                .trim_start_matches("deadline "),
            crate::status::short_duration(f.deadline.margin_secs)
        ),
        (None, crate::deadline::When::At(t)) => format!(
            "{}; margin {margin}; {fallback}",
            crate::status::utc_time(t)
        ),
        (None, crate::deadline::When::After(after)) => format!(
            "{} after the first apply; margin {margin}; {fallback}",
            crate::status::short_duration(after.as_secs())
        ),
    }))
}

/// The plan as it stands now: rows already answered since it was made are
/// done, and a plan with nothing left has nothing to submit.
fn left_to_do(plan: &PlanRecord, remaining: u64) -> PlanRecord {
    let mut p = plan.clone();
    if remaining < p.outstanding {
        p.outstanding = remaining;
        p.already_done = p.rows.saturating_sub(remaining);
        if remaining == 0 {
            p.prompt_tokens = 0;
            p.bytes = 0;
            p.chunks.clear();
            p.estimate = p
                .price
                .as_ref()
                .map(|price| crate::cost::estimate(price, 0, 0, None, Some(0)));
        }
    }
    p
}

/// Check what needs no state, then open the job's store once and plan into
/// it; `apply SPEC` goes on with the same store.
pub(super) fn open_and_plan(
    g: &Global,
    spec: &CheckedSpec,
    ui: &Ui,
) -> Result<(JobStore, Planned)> {
    super::homes::refuse_elsewhere(g, spec.name(), &spec.file)?;
    protect::check_output(
        &spec.output_path,
        OutputFrom::Spec(&spec.file),
        spec,
        g.pricing.as_deref(),
        &g.state_root,
    )?;
    // Ctrl-C stops planning between batches of rows; the guard hands
    // SIGINT back (to apply's runner) when planning is over.
    let _ctrl_c = crate::interrupt::catch();
    let prepared = planner::prepare(spec, g.pricing.as_deref())?;
    let store = JobStore::open(&g.state_root, spec.name())?;
    // A database that lost the job's records beside its files: planning
    // anew would trip over (and could orphan) what the folder holds.
    if store.plan()?.is_none()
        && let Some(damage) = super::job::lost_records(&store)
    {
        return Err(damage.into());
    }
    let mut planned = planner::plan(&store, spec, prepared, ui)?;
    super::homes::record(
        spec.name(),
        &spec.file,
        &g.state_root,
        crate::registry::Event::Plan,
        ui,
    );
    // Shown with the plan's warnings but not saved in it: it follows the
    // spec's `output` block, which can change without a new plan.
    planned
        .plan
        .warnings
        .extend(crate::simulate::spec_note(spec));
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
    direct: bool,
    state_dir: &str,
) -> io::Result<()> {
    // At least one space after the key, however long the label.
    let line = |w: &mut dyn Write, k: &str, v: &str| writeln!(w, "  {k:<14} {v}");
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
    if plan.gold_rows > 0 {
        line(
            w,
            "gold",
            &format!(
                "{} row{} with gold values (never sent; agreement is shown after the run)",
                num(plan.gold_rows),
                plural(plan.gold_rows, "s")
            ),
        )?;
    }
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
            line(w, cost_label(direct), &v)?;
            if let Some(c) = &e.cached {
                line(
                    w,
                    "",
                    &format!(
                        "{} prompt if the {}-token shared prefix is read from the cache by every request after each batch's first; the figures above assume no cache hits (caching is best effort)",
                        usd(c.low),
                        num(c.prefix_tokens)
                    ),
                )?;
            }
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
        _ => line(w, cost_label(direct), "unknown: the model has no price")?,
    }
    line(w, "state", state_dir)
}

/// The cost line's label names the prices the job's lane pays: the batch
/// discount, or standard prices for direct requests.
fn cost_label(direct: bool) -> &'static str {
    if direct {
        "cost (direct, standard prices)"
    } else {
        "cost (batch)"
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::{Estimate, Price};
    use crate::state::ChunkRecord;
    use crate::tokenize::Encoding;

    fn chunk(index: u32, requests: u64) -> ChunkRecord {
        ChunkRecord {
            index,
            file: format!("chunks/plan-2/chunk-{index:05}.jsonl"),
            requests,
            bytes: requests * 412,
            tokens: requests * 97,
            sha256: "0".repeat(64),
            first_seq: 0,
        }
    }

    fn plan_record(chunks: Vec<ChunkRecord>) -> PlanRecord {
        let outstanding: u64 = chunks.iter().map(|c| c.requests).sum();
        PlanRecord {
            generation: 2,
            plan_hash: "ab".repeat(32),
            created_at: 1_790_000_000,
            model: "gpt-4o-mini".into(),
            encoding: Encoding::O200kBase,
            rows: outstanding + 1_200,
            outstanding,
            already_done: 1_200,
            prompt_tokens: chunks.iter().map(|c| c.tokens).sum(),
            bytes: chunks.iter().map(|c| c.bytes).sum(),
            chunks,
            price: Some(Price {
                model: "gpt-4o-mini".into(),
                input_per_1m: 0.15,
                output_per_1m: 0.6,
                batch_input_per_1m: 0.075,
                batch_output_per_1m: 0.3,
                prices_as_of: "2026-01-01".into(),
                cached_input_per_1m: None,
                cache_write_per_1m: None,
            }),
            estimate: Some(Estimate {
                low: 0.3637,
                expected: Some(0.4216),
                high: Some(0.6533),
                cached: None,
            }),
            warnings: vec![],
            gold_rows: 0,
        }
    }

    fn text(job: &str, plan: &PlanRecord, changed: bool) -> String {
        let mut out = Vec::new();
        render(
            &mut out,
            Paint::plain(),
            job,
            plan,
            changed,
            false,
            "state/essays",
        )
        .unwrap();
        render_next(&mut out, Path::new("specs/essays.yaml"), plan.outstanding).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn summary_of_a_new_plan() {
        let plan = plan_record(vec![chunk(1, 20_000), chunk(2, 20_000), chunk(3, 8_800)]);
        insta::assert_snapshot!(text("essays", &plan, true));
    }

    #[test]
    fn summary_of_an_unchanged_plan_without_price() {
        let mut plan = plan_record(vec![]);
        plan.price = None;
        plan.estimate = None;
        plan.rows = 1_200;
        insta::assert_snapshot!(text("essays", &plan, false));
    }

    #[test]
    fn the_cost_line_names_the_lanes_prices() {
        for (direct, priced, want) in [
            (true, true, "cost (direct, standard prices)"),
            (true, false, "cost (direct, standard prices) unknown"),
            (false, true, "cost (batch)"),
            (false, false, "cost (batch)   unknown"),
        ] {
            let mut plan = plan_record(vec![chunk(1, 10)]);
            if !priced {
                plan.price = None;
                plan.estimate = None;
            }
            let mut out = Vec::new();
            render(&mut out, Paint::plain(), "j", &plan, true, direct, "s").unwrap();
            let t = String::from_utf8(out).unwrap();
            assert!(t.contains(want), "{direct} {priced}: {t}");
        }
    }

    #[test]
    fn many_chunks_are_elided() {
        let plan = plan_record((1..=30).map(|i| chunk(i, 1_000)).collect());
        let t = text("big", &plan, true);
        assert!(t.contains("… 19 more"), "{t}");
        assert!(
            t.contains("\n                 30 "),
            "the last chunk is shown: {t}"
        );
        assert!(!t.contains("\n                 11 "), "{t}");
        assert_eq!(t.lines().filter(|l| l.ends_with("KB")).count(), 11, "{t}");
    }
}
