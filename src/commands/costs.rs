//! `costs [--since D]`: spend and tokens by day, model and job, from the
//! usage ledger.

use std::io::{self, Write};
use std::time::Duration;

use crate::cost::usd;
use crate::costs::{Report, Sum, aggregate, read};
use crate::error::{Error, Result};
use crate::exit::Code;
use crate::settings::Global;
use crate::state::now_secs;
use crate::ui::{Paint, Ui, num, plural, print_json};

pub fn run(g: &Global, since: Option<Duration>, ui: &Ui) -> Result<Code> {
    let ledger = crate::state::Layout::ledger_in(&g.state_root);
    let (entries, bad) = read(&g.state_root).map_err(|e| Error::io("read", &ledger, e))?;
    if let Some(first) = bad.first() {
        ui.warn(&format!(
            "{}:{first}: {} line{} of the ledger cannot be read and {} left out of these totals",
            ledger.display(),
            bad.len(),
            if bad.len() == 1 { "" } else { "s" },
            if bad.len() == 1 { "is" } else { "are" },
        ));
    }
    let cutoff = since.map(|d| now_secs().saturating_sub(d.as_secs()));
    let r = aggregate(&entries, cutoff);
    if ui.json {
        print_json(&r);
    }
    ui.show(|w| render(w, ui.paint(), &r));
    Ok(Code::Success)
}

fn render(w: &mut impl Write, p: Paint, r: &Report) -> io::Result<()> {
    writeln!(
        w,
        "{} {} in {}: {} input and {} output tokens",
        p.bold("Spend"),
        usd(r.total.cost_usd),
        what_ran(&r.total, ""),
        num(r.total.input_tokens),
        num(r.total.output_tokens)
    )?;
    if let Some(line) = cache_and_reasoning(&r.total) {
        writeln!(w, "  {line}")?;
    }
    for (title, group) in [
        ("day", &r.by_day),
        ("lane", &r.by_lane),
        ("provider", &r.by_provider),
        ("model", &r.by_model),
        ("job", &r.by_job),
    ] {
        if group.is_empty() {
            continue;
        }
        writeln!(w, "{}", p.dim(&format!("  by {title}")))?;
        for (k, v) in group {
            writeln!(
                w,
                "    {:<28} {:>10} {:>14} in {:>12} out",
                k,
                usd(v.cost_usd),
                num(v.input_tokens),
                num(v.output_tokens)
            )?;
        }
    }
    if r.simulated.batches + r.simulated.direct_lines > 0 {
        writeln!(
            w,
            "{}",
            p.dim(&format!(
                "  plus {} (no real spend)",
                what_ran(&r.simulated, "simulated ")
            ))
        )?;
    }
    Ok(())
}

/// `1,920,000 input tokens read from the prompt cache, 2,000 written to it
/// (the prompt cache saved $0.23); 12,000 output tokens spent reasoning`,
/// when any of them is there.
fn cache_and_reasoning(s: &Sum) -> Option<String> {
    let mut parts = Vec::new();
    if s.cache_read_tokens + s.cache_write_tokens > 0 {
        let saved = s
            .cache_saved_usd
            .map(|v| {
                crate::status::cache_saving_words(v)
                    .trim_start_matches("; ")
                    .to_string()
            })
            .map(|w| format!(" ({w})"))
            .unwrap_or_default();
        parts.push(format!(
            "{} input tokens read from the prompt cache, {} written to it{saved}",
            num(s.cache_read_tokens),
            num(s.cache_write_tokens)
        ));
    }
    if s.reasoning_tokens > 0 {
        parts.push(format!(
            "{} output tokens spent reasoning",
            num(s.reasoning_tokens)
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// `3 batches`, `direct runs`, `2 batches and direct runs`: a direct run
/// is no batch (and its ledger lines are not runs, so they are not counted).
fn what_ran(s: &Sum, kind: &str) -> String {
    let batches = format!("{} {kind}batch{}", num(s.batches), plural(s.batches, "es"));
    match (s.batches, s.direct_lines) {
        (_, 0) => batches,
        (0, _) => format!("{kind}direct runs"),
        _ => format!("{batches} and {kind}direct runs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::costs::Entry;

    #[test]
    fn the_cache_and_reasoning_line_says_what_there_is() {
        let sum = |read, write, reasoning, saved| Sum {
            cache_read_tokens: read,
            cache_write_tokens: write,
            reasoning_tokens: reasoning,
            cache_saved_usd: saved,
            ..Sum::default()
        };
        let cases = [
            (sum(0, 0, 0, None), None),
            (
                sum(1_920_000, 2_000, 0, Some(0.2304)),
                Some(
                    "1,920,000 input tokens read from the prompt cache, 2,000 written to it (the prompt cache saved $0.2304)",
                ),
            ),
            (
                sum(0, 5_000, 700, Some(-0.01)),
                Some(
                    "0 input tokens read from the prompt cache, 5,000 written to it (the prompt cache cost $0.0100 more); 700 output tokens spent reasoning",
                ),
            ),
            (
                sum(0, 0, 12, None),
                Some("12 output tokens spent reasoning"),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(cache_and_reasoning(&s).as_deref(), want);
        }
    }

    #[test]
    fn spend_by_day_model_and_job() {
        let entry = |ts, job: &str, model: &str, cost, simulated| Entry {
            ts,
            job: job.into(),
            batch_id: if job == "chat" {
                format!("direct-{ts}-77-1")
            } else {
                format!("batch_{ts}")
            },
            provider: if model.starts_with("claude") {
                "anthropic".into()
            } else {
                "openai".into()
            },
            model: model.into(),
            input_tokens: 1_000_000,
            output_tokens: 20_000,
            cache_write_tokens: 0,
            cache_read_tokens: 0,
            reasoning_tokens: 0,
            cache_saved_usd: None,
            cost_usd: cost,
            simulated,
        };
        let r = aggregate(
            &[
                entry(1_790_000_000, "essays", "gpt-4o-mini", 0.081, false),
                entry(1_790_090_000, "essays", "gpt-4o-mini", 0.081, false),
                entry(1_790_090_500, "tickets", "gpt-4.1", 2.08, false),
                entry(1_790_090_550, "tickets", "claude-haiku-4-5", 0.55, false),
                entry(1_790_090_600, "demo", "gpt-4o-mini", 0.0, true),
                entry(1_790_090_700, "chat", "gpt-4o-mini", 0.0621, false),
            ],
            None,
        );
        let mut out = Vec::new();
        render(&mut out, Paint::plain(), &r).unwrap();
        insta::assert_snapshot!(String::from_utf8(out).unwrap());
    }
}
