//! `apply SPEC --sample N`: grade N rows of the job now, in the direct lane,
//! and stop; show what a user needs to decide whether to pay for the rest.
//!
//! The sample's answers are the job's: they go into the same outcome log
//! and ledger, and the job is planned again at the end so that its batches
//! leave those rows out. The plan is marked stale before the first request
//! is sent, so a rehearsal killed at any point is planned again by the next
//! `apply` or `resume` before a batch could carry a row it answered.

use std::collections::{BTreeSet, HashSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use super::connect::{DirectLane, Rehearsal, run_direct, runtime};
use crate::apply::{ApplyOptions, SampleFile, Summary, gold_rows};
use crate::cost::{self, usd};
use crate::error::{Error, Result};
use crate::exit::{self, Code};
use crate::rehearsal::{self, Candidate, SampleTokens};
use crate::settings::{ApplySettings, Global};
use crate::spec::{self, CheckedSpec};
use crate::state::{JobStore, Outcome, PlanRecord};
use crate::ui::{Paint, Ui, num, plural, print_json};

/// What a rehearsal says after its run, beside the run's own summary.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Rows asked for, and rows the sample holds (fewer when the job has fewer).
    pub asked: u64,
    pub sampled: u64,
    /// Of those, rows with a gold value.
    pub gold_rows: u64,
    pub seed: u64,
    /// Requests sent now (rows graded by an earlier rehearsal are not sent again).
    pub sent: u64,
    pub sample_file: String,
    /// What the rehearsal spent, at standard (direct) prices.
    pub spent_usd: f64,
    /// The rest of the job after the rehearsal: requests, the lane they go
    /// to, and their cost by the sample's real token counts beside the plan's.
    pub rest_requests: u64,
    pub rest_lane: &'static str,
    pub rest_estimated_usd: Option<f64>,
    pub rest_plan_usd: Option<f64>,
    /// The input and output tokens per request the sample was billed.
    pub input_tokens_per_request: Option<f64>,
    pub output_tokens_per_request: Option<f64>,
}

pub fn run(g: &Global, args: &ApplySettings, n: u64, ui: &Ui) -> Result<Code> {
    let Some(spec_path) = &args.spec else {
        return Err(Error::usage_with_hint(
            "--sample rehearses a job from its spec",
            "run `batchgrader apply SPEC --sample N`",
        ));
    };
    if n == 0 {
        return Err(Error::usage_with_hint(
            "--sample 0 grades nothing",
            "give the number of rows to rehearse on, e.g. `--sample 50`",
        ));
    }
    let spec = spec::load(spec_path)?;
    for w in spec.warnings_text() {
        ui.warn(&w);
    }
    let sample_path = sample_path(&spec.output_path);
    crate::protect::check_output(
        &sample_path,
        crate::protect::OutputFrom::Flag("--sample"),
        &spec,
        g.pricing.as_deref(),
        &g.state_root,
    )?;
    let (store, planned) = super::plan::open_and_plan(g, &spec, ui)?;
    if planned.changed {
        for w in &planned.plan.warnings {
            ui.warn(w);
        }
    }
    let plan = planned.plan;
    // Every request of the plan with its final outcome: nothing to send.
    if plan.outstanding == 0 || crate::apply::tally_of(&store, &spec, plan.generation)?.pending == 0
    {
        let msg = format!(
            "every row of job `{}` is graded already: nothing to rehearse (`batchgrader export {}` writes the output again)",
            spec.name(),
            spec.name()
        );
        if ui.json {
            print_json(
                &serde_json::json!({"job": spec.name(), "rehearsed": false, "message": msg}),
            );
        }
        ui.info(&msg);
        return Ok(Code::Success);
    }
    if !store.units(plan.generation)?.is_empty() {
        return Err(Error::usage_with_hint(
            format!(
                "job `{}` has sent batches already; a rehearsal comes before the job runs",
                spec.name()
            ),
            format!(
                "`batchgrader resume {}` finishes it; `batchgrader status {}` shows where it stands",
                spec.name(),
                spec.name()
            ),
        ));
    }
    let (rows, gold_in_sample) = choose(&store, &spec, &plan, n, args.seed)?;
    let (seqs, before) = scan_sample(&store, &plan, &rows)?;
    ui.info(&format!(
        "Rehearsing job `{}` on {} of its {} rows ({} with gold values; seed {}), in the direct lane at standard prices{}.",
        spec.name(),
        num(rows.len() as u64),
        num(plan.rows),
        num(gold_in_sample),
        args.seed,
        if seqs.len() < rows.len() {
            format!(
                "; {} of them answered before",
                num((rows.len() - seqs.len()) as u64)
            )
        } else {
            String::new()
        }
    ));
    let sent = seqs.len() as u64;
    // Before the first request: a kill from here on leaves a plan that the
    // next command makes again, without the rows answered now.
    store.mark_plan_stale(plan.generation)?;
    let rt = runtime()?;
    let interrupted = Arc::new(AtomicBool::new(false));
    let file = SampleFile {
        path: sample_path.clone(),
        rows: rows.clone(),
    };
    let result = rt.block_on(async {
        let flag = interrupted.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::SeqCst);
            }
        });
        run_direct(
            &store,
            &spec,
            &plan,
            ui,
            ApplyOptions::default(),
            interrupted.clone(),
            DirectLane::Rehearsal(Rehearsal { seqs, file }),
        )
        .await
    });
    let (ending, summary) = result?;
    let (_, tokens) = scan_sample(&store, &plan, &rows)?;
    let spent = spent_now(&plan, &tokens, &before);
    // Planned again now, without the rows the sample answered: what the
    // rest costs, and a plan whose batches never carry a sample row.
    drop(store);
    let quiet = Ui::new(ui.json, true, true);
    let (_store, replanned) = super::plan::open_and_plan(g, &spec, &quiet)?;
    let rest = replanned.plan;
    let rest_estimated = rest.price.as_ref().and_then(|p| {
        rehearsal::extrapolate(tokens, rest.outstanding, rest.prompt_tokens)
            .map(|(i, o)| cost::actual(p, i, o))
    });
    let verdict = Verdict {
        asked: n,
        sampled: rows.len() as u64,
        gold_rows: gold_in_sample,
        seed: args.seed,
        sent,
        sample_file: sample_path.display().to_string(),
        spent_usd: spent,
        rest_requests: rest.outstanding,
        rest_lane: if spec.endpoint.is_direct() {
            "direct"
        } else {
            "batch"
        },
        rest_estimated_usd: rest_estimated,
        rest_plan_usd: rest
            .estimate
            .as_ref()
            .map(|e| e.expected.or(e.high).unwrap_or(e.low)),
        input_tokens_per_request: (tokens.answered > 0)
            .then(|| tokens.input as f64 / tokens.answered as f64),
        output_tokens_per_request: (tokens.answered > 0)
            .then(|| tokens.output as f64 / tokens.answered as f64),
    };
    if ui.json {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            summary: &'a Summary,
            rehearsal: &'a Verdict,
        }
        print_json(&Out {
            summary: &summary,
            rehearsal: &verdict,
        });
    }
    ui.show(|w| render(w, ui.paint(), &summary, &verdict, spec.name()));
    Ok(exit::for_run(ending.run_end(&summary)))
}

/// `out/graded.csv` -> `out/graded.sample.csv`.
pub fn sample_path(output: &Path) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let name = match output.extension() {
        Some(ext) => format!("{stem}.sample.{}", ext.to_string_lossy()),
        None => format!("{stem}.sample"),
    };
    output.with_file_name(name)
}

/// The gold stratum of a row: its gold values, tidied (a value in another
/// case or with spaces around is the same value), joined.
fn stratum(gold: &[Option<String>]) -> Option<String> {
    if gold.iter().all(Option::is_none) {
        return None;
    }
    Some(
        gold.iter()
            .map(|g| g.as_deref().map(str::trim).unwrap_or("").to_lowercase())
            .collect::<Vec<_>>()
            .join("\u{1f}"),
    )
}

/// The sample's rows, and how many of them have a gold value. Every row of
/// the plan is a candidate (rows graded before stay in it without being
/// sent again, so the same seed keeps the same sample after an interrupted
/// rehearsal); the records are streamed, never held.
fn choose(
    store: &JobStore,
    spec: &CheckedSpec,
    plan: &PlanRecord,
    n: u64,
    seed: u64,
) -> Result<(BTreeSet<u64>, u64)> {
    let gold = gold_rows(store, spec, plan)?;
    let mut next_gold = gold.iter().peekable();
    let mut failed = None;
    let candidates = store
        .requests(plan.generation)
        .map_while(|r| r.map_err(|e| failed = Some(e)).ok())
        .map(|r| {
            while next_gold.peek().is_some_and(|g| g.row < r.row) {
                next_gold.next();
            }
            let g = match next_gold.peek() {
                Some(g) if g.row == r.row => stratum(&g.gold),
                _ => None,
            };
            Candidate {
                row: r.row,
                gold: g,
            }
        });
    let chosen = rehearsal::choose(candidates, n, seed);
    if let Some(e) = failed {
        return Err(e.into());
    }
    let with_gold = gold
        .iter()
        .filter(|g| chosen.contains(&g.row) && g.gold.iter().any(Option::is_some))
        .count() as u64;
    Ok((chosen, with_gold))
}

/// One pass over the sample's rows: the plan positions of those that still
/// need an answer, and the planned and billed tokens of those answered.
fn scan_sample(
    store: &JobStore,
    plan: &PlanRecord,
    rows: &BTreeSet<u64>,
) -> Result<(HashSet<u64>, SampleTokens)> {
    let mut seqs = HashSet::new();
    let mut t = SampleTokens::default();
    for r in store.requests(plan.generation) {
        let r = r?;
        if !rows.contains(&r.row) {
            continue;
        }
        if let Some(seq) = r.seq {
            seqs.insert(seq);
        }
        if let Some(Outcome::Success(res)) = store.outcome(&r.fingerprint)? {
            t.answered += 1;
            t.planned_input += r.tokens;
            t.input += res.input_tokens + res.cache_write_tokens + res.cache_read_tokens;
            t.output += res.output_tokens;
        }
    }
    Ok((seqs, t))
}

/// What this rehearsal's answers cost at standard prices (the rows
/// answered before it are left out).
fn spent_now(plan: &PlanRecord, now: &SampleTokens, before: &SampleTokens) -> f64 {
    plan.price.as_ref().map_or(0.0, |p| {
        cost::standard(
            p,
            now.input.saturating_sub(before.input),
            now.output.saturating_sub(before.output),
        )
    })
}

fn render(w: &mut impl Write, p: Paint, s: &Summary, v: &Verdict, job: &str) -> io::Result<()> {
    let head = match s.ending.as_str() {
        "halted" => "Rehearsal halted",
        "detached" => "Rehearsal interrupted",
        _ => "Rehearsed",
    };
    write!(w, "{} {}", p.bold(head), p.bold(&format!("job {job}")))?;
    if s.simulated {
        write!(
            w,
            "{}",
            p.dim(" (simulated provider: the answers are made up, not from a model)")
        )?;
    }
    writeln!(w)?;
    if let Some(m) = s.message.as_ref().filter(|_| s.ending != "finished") {
        writeln!(w, "  {m}")?;
    }
    writeln!(
        w,
        "  sample      {} of {} asked rows ({} with gold values, seed {}): {} graded, {} parse failure{}, {} failed{}",
        num(v.sampled),
        num(v.asked),
        num(v.gold_rows),
        v.seed,
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
    super::apply::write_rates(w, s)?;
    super::apply::write_values(w, s)?;
    crate::agreement::text::write_quality(w, p, job, &s.agreement, s.gate.as_ref(), &s.failures)?;
    writeln!(
        w,
        "  spent       {} for {} request{} sent now (direct lane, standard prices)",
        usd(v.spent_usd),
        num(v.sent),
        plural(v.sent, "s")
    )?;
    if let (Some(i), Some(o)) = (v.input_tokens_per_request, v.output_tokens_per_request) {
        writeln!(
            w,
            "  tokens      {i:.0} in, {o:.0} out per request (billed)"
        )?;
    }
    let rest = match (v.rest_estimated_usd, v.rest_plan_usd) {
        (Some(e), Some(pl)) => format!(
            ": about {} by the sample's tokens (the plan's estimate: {})",
            usd(e),
            usd(pl)
        ),
        (Some(e), None) => format!(": about {} by the sample's tokens", usd(e)),
        (None, Some(pl)) => format!(": the plan's estimate {}", usd(pl)),
        (None, None) => " (no price known for this model)".into(),
    };
    writeln!(
        w,
        "  the rest    {} request{} in the {} lane{rest}",
        num(v.rest_requests),
        plural(v.rest_requests, "s"),
        v.rest_lane
    )?;
    writeln!(w, "  sample file {}", v.sample_file)?;
    writeln!(
        w,
        "  next        `batchgrader apply SPEC` grades the rest; the sample's rows are not sent again"
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_file_sits_beside_the_output() {
        let cases = [
            ("out/graded.csv", "out/graded.sample.csv"),
            ("graded.jsonl", "graded.sample.jsonl"),
            ("out/a.b.json", "out/a.b.sample.json"),
            ("out/noext", "out/noext.sample"),
        ];
        for (out, want) in cases {
            assert_eq!(sample_path(Path::new(out)), PathBuf::from(want), "{out}");
        }
    }

    #[test]
    fn gold_strata_ignore_case_and_spaces() {
        let s = |v: &[Option<&str>]| {
            stratum(&v.iter().map(|x| x.map(str::to_string)).collect::<Vec<_>>())
        };
        assert_eq!(s(&[None, None]), None);
        assert_eq!(s(&[Some(" Billing ")]), s(&[Some("billing")]));
        assert_ne!(s(&[Some("a"), None]), s(&[None, Some("a")]));
    }
}
