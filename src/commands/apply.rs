//! `apply [SPEC]` and `resume [JOB]`: plan if needed (with the same store and
//! spec the run then uses), submit, poll, download, merge, and show the
//! final summary.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use super::connect::{DirectLane, run_direct, runtime, with_runner};
use super::job;
use crate::apply::decide::{self, RetryAsked};
use crate::apply::{ApplyOptions, Ending, Summary, tally_of};
use crate::cost::usd;
use crate::error::{Error, Result};
use crate::exit::{self, Code};
use crate::grades::{Bin, PropertyStats, Stats};
use crate::settings::{ApplySettings, Global};
use crate::spec;
use crate::state::{JobStore, PlanRecord};
use crate::status::{self, RunState, receipt_line};
use crate::ui::{Paint, Ui, num, plural, print_json};

pub fn run(g: &Global, args: &ApplySettings, ui: &Ui) -> Result<Code> {
    if let Some(n) = args.sample {
        return super::rehearse::run(g, args, n, ui);
    }
    let (store, spec, plan) = match (&args.spec, args.resume) {
        (Some(spec_path), false) => {
            let spec = spec::load(spec_path)?;
            for w in spec.warnings_text() {
                ui.warn(&w);
            }
            let (store, planned) = super::plan::open_and_plan(g, &spec, ui)?;
            if planned.changed {
                ui.info(&ui.dim(
                    "The spec or its inputs changed since the last plan (or there was none): planned first.",
                ));
                for w in &planned.plan.warnings {
                    ui.warn(w);
                }
                let state_dir = crate::registry::normal(&planned.job_dir)
                    .display()
                    .to_string();
                ui.show(|w| {
                    super::plan::render(
                        w,
                        ui.paint(),
                        &planned.job,
                        &planned.plan,
                        true,
                        spec.endpoint.is_direct(),
                        &state_dir,
                    )
                });
            } else {
                simulated_note(&spec, ui);
            }
            (store, spec, planned.plan)
        }
        _ => {
            let g = &super::homes::state_for(g, args.job.as_deref(), job::Verb::Resume, ui)?;
            let name = job::resolve(g, args.job.as_deref(), job::Verb::Resume)?;
            let store = JobStore::open_existing(&g.state_root, &name)?;
            let spec = job::saved_spec(&store)?;
            crate::protect::check_output(
                &spec.output_path,
                crate::protect::OutputFrom::Spec(&spec.file),
                &spec,
                g.pricing.as_deref(),
                &g.state_root,
            )?;
            let plan = job::current_plan(&store, &name)?;
            simulated_note(&spec, ui);
            if store.plan_is_stale(plan.generation)? {
                // Rows of the plan were answered outside its batches (a
                // rehearsal stopped before it planned again, or the
                // deadline's direct lane): its batches would carry them.
                // Planned again from the saved spec first.
                ui.info(&ui.dim(
                    "Rows of this plan were answered outside its batches (`apply --sample`, or the deadline's direct lane): planned again first, without them.",
                ));
                drop(store);
                let (store, planned) = super::plan::open_and_plan(g, &spec, ui)?;
                return run_planned(g, args, ui, store, spec, planned.plan);
            }
            // The saved plan is applied without reading the inputs again,
            // but the output needs them: a job with nothing sent yet stops
            // here rather than pay for answers it cannot write out. One
            // with batches out goes on to collect them (they are paid for).
            if let Err(e) = crate::plan::check_inputs(&spec.inputs) {
                if store.units(plan.generation)?.is_empty() {
                    return Err(e.into());
                }
                ui.warn(&format!(
                    "{e}; collecting what is out, but the output cannot be written until the input is back"
                ));
            }
            (store, spec, plan)
        }
    };
    run_planned(g, args, ui, store, spec, plan)
}

/// Run a job whose plan is current.
fn run_planned(
    g: &Global,
    args: &ApplySettings,
    ui: &Ui,
    store: JobStore,
    spec: spec::CheckedSpec,
    plan: PlanRecord,
) -> Result<Code> {
    super::homes::record(
        spec.name(),
        &spec.file,
        store.layout().root(),
        crate::registry::Event::Apply,
        ui,
    );
    if store.plan_is_stale(plan.generation)? {
        // Never reached by a plan made since (it has another generation):
        // the last guard before a batch could carry a row answered directly.
        return Err(Error::runtime_with_hint(
            format!(
                "the plan of job `{}` has rows answered outside its batches",
                spec.name()
            ),
            "run `batchgrader apply SPEC` to plan again",
        ));
    }
    if !args.resume && store.cancelled_at()?.is_some() {
        // `apply` is the user asking for the job to run again.
        store.set_cancelled(None)?;
        ui.info("The job was cancelled; applying it again.");
    }
    let deadline = fix_deadline(&store, &spec, ui)?;
    let started = !store.units(plan.generation)?.is_empty();
    if plan.outstanding > 0 && !started && !args.yes && !confirm(ui, &plan)? {
        // Not a success: a script that answered for the user must not go
        // on as if the job ran. The plan is kept; `apply` asks again.
        ui.info("Nothing submitted: the job is planned, and `apply` asks again.");
        return Ok(Code::Halted);
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
            retry: RetryAsked {
                failed: args.retry_failed,
                parse_failures: args.retry_parse_failures,
            },
            deadline,
        };
        if spec.endpoint.mode == spec::ProviderMode::Direct {
            return run_direct(
                &store,
                &spec,
                &plan,
                ui,
                opts,
                interrupted.clone(),
                DirectLane::Job,
            )
            .await;
        }
        let batch = with_runner(
            &store,
            &spec,
            &plan,
            ui,
            opts,
            interrupted.clone(),
            async |r| r.run().await,
        )
        .await?;
        if batch.0 != Ending::Deadline {
            return Ok(batch);
        }
        // The deadline's margin: the batches are cancelled and collected.
        // The rows left go to the direct lane. From here the plan's
        // unsubmitted chunks must never be sent: a later run plans again.
        store.mark_plan_stale(plan.generation)?;
        let before = tally_of(&store, &spec, plan.generation)?;
        let refused = fallback_refusal(&store, &spec, &plan)?;
        let (ending, mut summary) = run_direct(
            &store,
            &spec,
            &plan,
            ui,
            opts,
            interrupted.clone(),
            DirectLane::Fallback { refused },
        )
        .await?;
        let after = tally_of(&store, &spec, plan.generation)?;
        summary.lanes = Some(lanes(&store, &spec, before.settled(), after.settled()));
        Ok((ending, summary))
    });
    let (ending, mut summary) = match result {
        Ok(r) => r,
        Err(e) => {
            // The state is consistent at every step; say how to go on.
            mark_detached(&store);
            return Err(e);
        }
    };
    if summary.output_path.is_some()
        && decide::suggest_retry_failed(summary.failed, summary.graded, summary.parse_failures)
    {
        summary.retry_hint = Some(retry_command(g, args, &summary.job));
    }
    summary.plan_at_most_usd = plan.estimate.as_ref().and_then(|e| e.high);
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
    ui.show(|w| render_summary(w, ui.paint(), &summary));
    Ok(exit::for_run(ending.run_end(&summary)))
}

/// The job's deadline: fixed by its first `apply` (a duration counts from
/// then), and fixed again only when the spec's words change.
fn fix_deadline(
    store: &JobStore,
    spec: &spec::CheckedSpec,
    ui: &Ui,
) -> Result<Option<crate::deadline::Deadline>> {
    let Some(d) = &spec.run.deadline else {
        return Ok(None);
    };
    if spec.endpoint.is_direct() {
        return Ok(None);
    }
    if let Some(fixed) = store.fixed_deadline()?
        && fixed.text == d.text
    {
        return Ok(Some(fixed.deadline));
    }
    let now = crate::state::now_secs();
    let deadline = crate::deadline::resolve(d.when, d.margin, now);
    store.fix_deadline(&crate::state::FixedDeadline {
        text: d.text.clone(),
        deadline,
    })?;
    ui.info(&format!(
        "Deadline {} (in {}); the batches give way to the direct lane {} before it.",
        crate::status::utc_time(deadline.at),
        crate::status::short_duration(deadline.at.saturating_sub(now)),
        crate::status::short_duration(deadline.margin_secs)
    ));
    Ok(Some(deadline))
}

/// Whether the budget allows the deadline's direct fallback: the job's
/// spend so far (the ledger) plus the most the requests without a final
/// outcome can cost at standard prices.
fn fallback_refusal(
    store: &JobStore,
    spec: &spec::CheckedSpec,
    plan: &PlanRecord,
) -> Result<Option<String>> {
    let Some(budget) = spec.run.halt.max_cost_usd else {
        return Ok(None);
    };
    let Some(price) = plan.price.as_ref() else {
        return Ok(None);
    };
    let ledger = std::fs::read_to_string(store.layout().ledger()).unwrap_or_default();
    let spent = crate::costs::job_spend(&ledger, spec.name());
    let parser = crate::answer::Parser::for_spec(spec).map_err(Error::usage)?;
    let max_attempts = spec.run.max_attempts;
    let (mut requests, mut tokens) = (0u64, 0u64);
    for r in store.requests(plan.generation) {
        let r = r?;
        if r.seq.is_none() {
            continue;
        }
        let state = crate::apply::request_state(store.outcome(&r.fingerprint)?, &parser);
        if state == decide::RequestState::Pending || decide::should_retry(state, max_attempts) {
            requests += 1;
            tokens += r.tokens;
        }
    }
    let cap = spec
        .request()
        .get("max_completion_tokens")
        .or_else(|| spec.request().get("max_tokens"))
        .and_then(serde_json::Value::as_u64);
    let bound = cap.map(|c| crate::cost::standard(price, tokens, requests.saturating_mul(c)));
    Ok(crate::deadline::fallback_refused(
        Some(budget),
        spent,
        bound,
    ))
}

/// Requests and spend of each lane, for the receipt of a job whose deadline
/// switched lanes (`settled_*`: requests with a final outcome before and
/// after the direct lane ran).
fn lanes(
    store: &JobStore,
    spec: &spec::CheckedSpec,
    settled_before: u64,
    settled_after: u64,
) -> crate::apply::Lanes {
    let ledger = std::fs::read_to_string(store.layout().ledger()).unwrap_or_default();
    let entries = crate::costs::entries_of(&ledger);
    let job = entries.iter().filter(|e| e.job == spec.name());
    let (direct, batch): (Vec<_>, Vec<_>) = job.partition(|e| e.is_direct());
    crate::apply::Lanes {
        batch_requests: settled_before,
        batch_usd: batch.iter().map(|e| e.cost_usd).sum(),
        direct_requests: settled_after.saturating_sub(settled_before),
        direct_usd: direct.iter().map(|e| e.cost_usd).sum(),
    }
}

/// The command that sends this job's failed rows again: the one that was
/// run (`apply SPEC` or `resume JOB`), with the state folder when it is
/// not the default.
fn retry_command(g: &Global, args: &ApplySettings, job: &str) -> String {
    let state = if g.state_root == std::path::Path::new("state") {
        String::new()
    } else {
        format!(
            " --state {}",
            shell_word(&g.state_root.display().to_string())
        )
    };
    match (&args.spec, args.resume) {
        (Some(spec), false) => format!(
            "batchgrader{state} apply {} --retry-failed",
            shell_word(&spec.display().to_string())
        ),
        _ => format!(
            "batchgrader{state} resume {} --retry-failed",
            shell_word(job)
        ),
    }
}

/// A word as a shell reads it back: quoted when it holds anything but
/// plain path characters.
fn shell_word(w: &str) -> String {
    let plain = !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c));
    if plain {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

/// Before a run on the simulated provider: that its answers will not parse,
/// when it cannot write what the job's pattern matches (a fresh plan says
/// so among its warnings).
fn simulated_note(spec: &spec::CheckedSpec, ui: &Ui) {
    if let Some(note) = crate::simulate::spec_note(spec) {
        ui.warn(&note);
    }
}

/// A run that stopped on an error leaves batches running with nobody
/// watching; say so in the snapshot.
fn mark_detached(store: &JobStore) {
    if let Ok(Some(mut snap)) = status::read(store.layout())
        && snap.state == RunState::Running
    {
        snap.state = RunState::Detached;
        snap.pid = None;
        snap.message = Some(format!(
            "stopped on an error; fix it and run `batchgrader resume {}`",
            snap.job
        ));
        let _ = status::write(store.layout(), &snap);
    }
}

/// On a terminal, a large estimate asks first; CI never prompts.
fn confirm(ui: &Ui, plan: &PlanRecord) -> Result<bool> {
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

/// The line that says the spend passed the plan's "at most", or nothing.
/// The plan counts prompts by OpenAI's published rule and every answer at
/// its `max_tokens`; a provider that counts otherwise (another tokenizer, a
/// response schema's own tokens) can bill more, and the user must hear it.
/// Sub-cent rounding of the two sums is no excess.
pub(crate) fn past_the_bound(spent_usd: f64, at_most_usd: Option<f64>) -> Option<String> {
    let bound = at_most_usd?;
    let excess = spent_usd - bound;
    if excess <= 1e-9 {
        return None;
    }
    let share = if bound > 0.0 {
        format!(" (+{:.0}%)", (excess / bound * 100.0).ceil())
    } else {
        String::new()
    };
    Some(format!(
        "spent {}, more than the plan's at most {}{share}: the provider billed more tokens than the plan counted",
        usd(spent_usd),
        usd(bound)
    ))
}

/// The end-of-run summary: counts, rates, the values, spend, the output.
fn render_summary(w: &mut impl Write, p: Paint, s: &Summary) -> io::Result<()> {
    let head = match s.ending.as_str() {
        "finished" => "Finished",
        "halted" => "Halted",
        "detached" => "Detached",
        _ => "Interrupted",
    };
    write!(w, "{} {}", p.bold(head), p.bold(&format!("job {}", s.job)))?;
    if s.simulated {
        write!(
            w,
            "{}",
            p.dim(" (simulated provider: the answers are made up, not from a model)")
        )?;
    }
    writeln!(w)?;
    if let Some(m) = &s.message {
        writeln!(w, "  {m}")?;
    }
    if s.output_path.is_some() {
        writeln!(
            w,
            "  rows        {}: {} graded, {} parse failure{}, {} failed{}",
            num(s.rows),
            num(s.graded),
            num(s.parse_failures),
            plural(s.parse_failures, "s"),
            num(s.failed),
            if s.not_graded > 0 {
                format!(", {} not graded", num(s.not_graded))
            } else {
                String::new()
            }
        )?;
        // Rates over the rows that got an answer or a final error, as the
        // halt policy counts them (over all rows, a halted run's rates read
        // as much lower than the rate that halted it).
        if s.failed > 0 || s.parse_failures > 0 {
            write_rates(w, s)?;
        }
        write_values(w, s)?;
        render_grades(w, &s.grades)?;
        if !s.parse_failures_by_reason.is_empty() {
            let parts: Vec<String> = s
                .parse_failures_by_reason
                .iter()
                .take(5)
                .map(|(why, n)| format!("{why}: {}", num(*n)))
                .collect();
            let more = s.parse_failures_by_reason.len().saturating_sub(5);
            writeln!(
                w,
                "  unparsed    {}{}",
                parts.join("; "),
                if more > 0 {
                    format!("; {more} more reasons (`batchgrader report {}`)", s.job)
                } else {
                    String::new()
                }
            )?;
        }
        render_quality(w, p, s)?;
    }
    // The spend is the job's, over every run of its current plan (a resume
    // counts what earlier runs paid): said so, beside the plan's estimate,
    // which is for the same rows.
    writeln!(
        w,
        "  cost        {} spent by this job's plan, all runs{}",
        usd(s.actual_cost_usd),
        s.estimated_cost_usd
            .map(|e| format!(" (estimated {})", usd(e)))
            .unwrap_or_default()
    )?;
    if let Some(line) = past_the_bound(s.actual_cost_usd, s.plan_at_most_usd) {
        writeln!(w, "  {}", p.bold(&line))?;
    }
    if let Some(r) = receipt_line(&s.receipt) {
        writeln!(w, "  receipt     {r}")?;
    }
    if let Some(l) = &s.lanes {
        writeln!(
            w,
            "  lanes       batch: {} request{}, {}; direct (the deadline's fallback, standard prices): {} request{}, {}",
            num(l.batch_requests),
            plural(l.batch_requests, "s"),
            usd(l.batch_usd),
            num(l.direct_requests),
            plural(l.direct_requests, "s"),
            usd(l.direct_usd)
        )?;
    }
    if let Some(path) = &s.output_path {
        writeln!(w, "  output      {path}")?;
    }
    if let Some(cmd) = &s.retry_hint {
        writeln!(
            w,
            "  next        {} of {} rows failed for good; once the cause is fixed (the server, the key, \
             the request), `{cmd}` sends them again (they are paid again)",
            num(s.failed),
            num(s.rows),
        )?;
    }
    Ok(())
}

/// The failure rates over the rows that got an answer or a final error
/// (nothing when none did).
pub(super) fn write_rates(w: &mut impl Write, s: &Summary) -> io::Result<()> {
    let answered = s.graded + s.parse_failures + s.failed;
    if answered == 0 {
        return Ok(());
    }
    writeln!(
        w,
        "  rates       API failures {:.1}%, parse failures {:.1}% (of {} answered)",
        s.failed as f64 * 100.0 / answered as f64,
        s.parse_failures as f64 * 100.0 / answered as f64,
        num(answered)
    )
}

/// How often each value was answered (`number` and `label` parses), the
/// 15 commonest.
pub(super) fn write_values(w: &mut impl Write, s: &Summary) -> io::Result<()> {
    if s.distribution.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = s
        .distribution
        .iter()
        .take(15)
        .map(|(v, n)| format!("{v}: {}", num(*n)))
        .collect();
    writeln!(w, "  values      {}", parts.join(", "))
}

/// Agreement with the gold values, the quality gate, and example rows of
/// each failure class.
fn render_quality(w: &mut impl Write, p: Paint, s: &Summary) -> io::Result<()> {
    crate::agreement::text::write_quality(w, p, &s.job, &s.agreement, s.gate.as_ref(), &s.failures)
}

/// One line per graded property: quartiles and a sparkline of the
/// histogram for numbers, counts for enums and booleans.
fn render_grades(w: &mut impl Write, grades: &[PropertyStats]) -> io::Result<()> {
    let width = grades.iter().map(|g| g.name.len()).max().unwrap_or(0);
    for (i, g) in grades.iter().enumerate() {
        let head = if i == 0 { "grades" } else { "" };
        let body = match &g.stats {
            Stats::Numeric(n) => format!(
                "min {}  q1 {}  median {}  q3 {}  max {}  mean {}  {}",
                short(n.min),
                short(n.q1),
                short(n.median),
                short(n.q3),
                short(n.max),
                short(n.mean),
                sparkline(&n.histogram)
            ),
            Stats::Counts { counts } => counts
                .iter()
                .map(|(v, n)| format!("{v}: {}", num(*n)))
                .collect::<Vec<_>>()
                .join(", "),
        };
        writeln!(w, "  {head:<12}{:<width$}  {body}", g.name)?;
    }
    Ok(())
}

/// At most two decimals, no trailing zeros: 3, 2.5, 0.33.
fn short(x: f64) -> String {
    let s = format!("{x:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

fn sparkline(bins: &[Bin]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = bins.iter().map(|b| b.count).max().unwrap_or(0).max(1);
    bins.iter()
        .map(|b| {
            if b.count == 0 {
                ' '
            } else {
                BARS[((b.count * 7).div_ceil(max)) as usize]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Receipt;

    fn finished() -> Summary {
        Summary {
            job: "essays".into(),
            ending: "finished".into(),
            rows: 50_000,
            graded: 49_930,
            parse_failures: 42,
            failed: 28,
            not_graded: 0,
            already_graded_before: 1_200,
            estimated_cost_usd: Some(4.2163),
            actual_cost_usd: 3.9071,
            output_path: Some("out/essays.graded.csv".into()),
            distribution: (1..=10).map(|g| (g.to_string(), 5_000 - g * 7)).collect(),
            grades: vec![],
            parse_failures_by_reason: vec![],
            failures: vec![],
            agreement: vec![],
            gate: None,
            simulated: false,
            message: None,
            retry_hint: None,
            lanes: None,
            plan_at_most_usd: Some(4.4021),
            receipt: Receipt {
                paid_usd: 3.9071,
                standard_usd: 7.8142,
                saved_usd: 3.9071,
                cache_saved_usd: None,
            },
        }
    }

    #[test]
    fn spend_past_the_plan_s_at_most_is_said() {
        // (spent, at most, the line holds)
        let table = [
            (0.0390, Some(0.0390), None),
            (0.0389, Some(0.0390), None),
            (0.5, None, None),
            (
                0.0398,
                Some(0.0390),
                Some("spent $0.0398, more than the plan's at most $0.0390 (+3%)"),
            ),
            (
                0.01,
                Some(0.0),
                Some("spent $0.0100, more than the plan's at most $0.0000:"),
            ),
        ];
        for (spent, bound, want) in table {
            let got = past_the_bound(spent, bound);
            match want {
                None => assert_eq!(got, None, "{spent} {bound:?}"),
                Some(w) => assert!(got.as_deref().is_some_and(|g| g.contains(w)), "{got:?}"),
            }
        }
        let within = text(&finished());
        assert!(!within.contains("more than the plan"), "{within}");
        let over = text(&Summary {
            actual_cost_usd: 4.5,
            ..finished()
        });
        assert!(
            over.contains("spent $4.50, more than the plan's at most $4.40 (+3%)"),
            "{over}"
        );
    }

    fn text(s: &Summary) -> String {
        let mut out = Vec::new();
        render_summary(&mut out, Paint::plain(), s).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn final_summary() {
        insta::assert_snapshot!(text(&finished()));
    }

    #[test]
    fn summary_of_a_schema_job() {
        let mut tally = crate::grades::Tally::new(Some(&serde_json::json!({"properties": {
            "accuracy": {"type": "integer"},
            "verdict": {"enum": ["pass", "fail"]},
            "reason": {"type": "string"}
        }})));
        for i in 0..100u64 {
            let accuracy = [0, 1, 2, 2, 3, 3, 3, 3, 4, 5][(i % 10) as usize];
            let verdict = if i % 3 == 0 { "fail" } else { "pass" };
            tally
                .add(&serde_json::json!({"accuracy": accuracy, "verdict": verdict, "reason": "r"}));
        }
        for _ in 0..3 {
            tally.fail("not JSON");
        }
        tally.fail("maximum at /accuracy");
        let s = Summary {
            rows: 104,
            graded: 100,
            parse_failures: 4,
            failed: 0,
            distribution: vec![],
            grades: tally.properties(),
            parse_failures_by_reason: tally.failures(),
            ..finished()
        };
        insta::assert_snapshot!(text(&s));
    }

    /// The agreement block, the gate and failure examples, as users read them.
    #[test]
    fn summary_with_gold_values() {
        use crate::agreement::{Collector, Grade};
        use crate::spec::{GoldField, GoldKind};
        let field = GoldField {
            field: "route".into(),
            property: None,
            column: "gold_label".into(),
            kind: GoldKind::Classes(vec!["billing".into(), "bug".into(), "feature".into()]),
        };
        let mut c = Collector::new(&[field]);
        let gold = [
            "billing", "bug", "feature", "billing", "bug", "feature", "billing", "bug",
        ];
        let judge = [
            "billing", "bug", "feature", "bug", "bug", "billing", "billing", "bug",
        ];
        for (i, (g, j)) in gold.iter().zip(judge).enumerate() {
            let row = i as u64 + 1;
            let grade = Some(Grade {
                text: j,
                json: None,
            });
            c.add(
                row,
                &format!("t{row}"),
                &[Some(g.to_string())],
                grade,
                &format!("It is {j}."),
            );
        }
        c.add(
            9,
            "t9",
            &[Some("Billng".into())],
            Some(Grade {
                text: "bug",
                json: None,
            }),
            "bug",
        );
        c.add(
            10,
            "t10",
            &[None],
            Some(Grade {
                text: "bug",
                json: None,
            }),
            "bug",
        );
        let s = Summary {
            rows: 11,
            graded: 10,
            parse_failures: 1,
            failed: 0,
            distribution: vec![],
            agreement: c.finish(),
            gate: Some(crate::agreement::GateCheck::Passed(
                "route: κ 0.619 ≥ 0.400".into(),
            )),
            failures: vec![crate::grades::FailureClass {
                kind: "parse".into(),
                class: "not a label".into(),
                rows: 1,
                examples: vec![crate::grades::FailureExample {
                    row: 11,
                    key: "t11".into(),
                    raw: "unsure".into(),
                    error: "the answer \"unsure\" is none of the labels billing, bug, feature"
                        .into(),
                }],
            }],
            ..finished()
        };
        insta::assert_snapshot!(text(&s));
    }

    #[test]
    fn halt_summary() {
        let s = Summary {
            ending: "halted".into(),
            graded: 18_000,
            failed: 1_400,
            parse_failures: 0,
            not_graded: 30_600,
            message: Some("halted: failure rate 7.2% is above halt.max_failure_rate 5.0%".into()),
            actual_cost_usd: 1.4218,
            receipt: Receipt {
                paid_usd: 1.4218,
                standard_usd: 2.8436,
                saved_usd: 1.4218,
                cache_saved_usd: None,
            },
            distribution: vec![("7".into(), 9_000), ("8".into(), 9_000)],
            ..finished()
        };
        insta::assert_snapshot!(text(&s));
    }

    #[test]
    fn a_job_that_failed_for_good_is_told_how_to_send_it_again() {
        let g = |state: &str| Global {
            state_root: PathBuf::from(state),
            state_explicit: state != "state",
            new_state: false,
            pricing: None,
            output: Default::default(),
            typed: Vec::new(),
        };
        let args = |spec: Option<&str>, resume| ApplySettings {
            spec: spec.map(PathBuf::from),
            job: None,
            detach: false,
            yes: false,
            resume,
            retry_failed: false,
            retry_parse_failures: false,
            sample: None,
            seed: 0,
        };
        // (state folder, spec given, resume, the command)
        let cases = [
            (
                "state",
                Some("specs/essays.yaml"),
                false,
                "batchgrader apply specs/essays.yaml --retry-failed",
            ),
            (
                "state",
                None,
                true,
                "batchgrader resume essays --retry-failed",
            ),
            (
                "/tmp/my state",
                None,
                true,
                "batchgrader --state '/tmp/my state' resume essays --retry-failed",
            ),
            (
                "s",
                Some("it's.yaml"),
                false,
                "batchgrader --state s apply 'it'\\''s.yaml' --retry-failed",
            ),
            // `apply` with no spec continues the job, like `resume`.
            (
                "state",
                None,
                false,
                "batchgrader resume essays --retry-failed",
            ),
        ];
        for (state, spec, resume, want) in cases {
            assert_eq!(
                retry_command(&g(state), &args(spec, resume), "essays"),
                want
            );
        }
        let s = Summary {
            graded: 0,
            parse_failures: 0,
            failed: 50_000,
            distribution: vec![],
            retry_hint: Some("batchgrader apply specs/essays.yaml --retry-failed".into()),
            ..finished()
        };
        let t = text(&s);
        assert!(
            t.contains(
                "next        50,000 of 50,000 rows failed for good; once the cause is fixed"
            ) && t
                .contains("`batchgrader apply specs/essays.yaml --retry-failed` sends them again"),
            "{t}"
        );
        assert!(!text(&finished()).contains("--retry-failed"));
    }

    #[test]
    fn detached_summary_has_no_rows_and_no_empty_receipt() {
        let s = Summary {
            ending: "detached".into(),
            output_path: None,
            simulated: true,
            message: Some("detached: batches keep running".into()),
            actual_cost_usd: 0.0,
            receipt: Receipt::default(),
            ..finished()
        };
        let t = text(&s);
        assert!(
            t.starts_with("Detached job essays (simulated provider"),
            "{t}"
        );
        assert!(!t.contains("rows "), "{t}");
        assert!(!t.contains("receipt"), "an empty receipt is not shown: {t}");
    }
}
