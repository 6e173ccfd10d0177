//! `tokens SPEC|FILE`: token statistics per row (the old count-tokens mode).

use std::io::{self, Write};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::exit::Code;
use crate::rowtokens::Target;
use crate::settings::CountTarget;
use crate::stats::{TokenStats, summarize};
use crate::tokenize::Counter;
use crate::ui::{Paint, Ui, num, print_json};

/// Rows over `--limit` listed by place, at most this many.
const LISTED_OVER: usize = 10;

pub fn run(target: &CountTarget, limit: Option<u64>, ui: &Ui) -> Result<Code> {
    let t = resolve_target(target, ui)?;
    let counter = Counter::for_input(t.encoding, crate::input::size_hint(&t.sources))?;
    let bar = ui.progress(t.total_bytes(), "counting");
    let mut counts: Vec<u64> = Vec::new();
    let mut first_over: Vec<String> = Vec::new();
    t.for_each(
        &counter,
        false,
        |b| bar.set_position(b),
        |row, n, sources| {
            counts.push(n);
            if let Some(l) = limit
                && n > l
                && first_over.len() < LISTED_OVER
            {
                first_over.push(format!(
                    "{} (row {}): {} tokens",
                    crate::input::row_place(sources, row),
                    row.number,
                    num(n)
                ));
            }
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    if counts.is_empty() {
        return Err(Error::usage(format!(
            "{}: the input has no rows",
            t.input_paths()
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let stats = summarize(&counts, |i| (i + 1).to_string(), limit);
    let encoding = t.encoding.to_string();
    if ui.json {
        #[derive(Serialize)]
        struct Out<'a> {
            model: &'a str,
            encoding: &'a str,
            #[serde(flatten)]
            stats: &'a TokenStats,
        }
        print_json(&Out {
            model: &t.model,
            encoding: &encoding,
            stats: &stats,
        });
    }
    ui.show(|w| render(w, ui.paint(), &t.model, &encoding, &stats, &first_over));
    Ok(Code::Success)
}

/// Resolve `SPEC|FILE`, warning when the model's tokenizer is a guess.
pub(super) fn resolve_target(target: &CountTarget, ui: &Ui) -> Result<Target> {
    let t = Target::resolve(
        &target.path,
        target.model.as_deref(),
        target.column.as_deref(),
        target.format,
    )?;
    if t.guessed {
        ui.warn(&format!(
            "no known tokenizer for model `{}`; counting with {}",
            t.model, t.encoding
        ));
    }
    Ok(t)
}

fn render(
    w: &mut impl Write,
    p: Paint,
    model: &str,
    encoding: &str,
    stats: &TokenStats,
    first_over: &[String],
) -> io::Result<()> {
    writeln!(
        w,
        "{}",
        p.bold(&format!("Tokens per row ({model}, {encoding})"))
    )?;
    writeln!(w, "  {:<8}{}", "rows", num(stats.rows))?;
    writeln!(w, "  {:<8}{}", "total", num(stats.total))?;
    writeln!(w, "  {:<8}{:.1}", "mean", stats.mean)?;
    writeln!(w, "  {:<8}{}", "p50", num(stats.p50))?;
    writeln!(w, "  {:<8}{}", "p95", num(stats.p95))?;
    writeln!(
        w,
        "  {:<8}{} (row {})",
        "max",
        num(stats.max),
        stats.max_row.as_deref().unwrap_or("-")
    )?;
    if let Some(l) = stats.limit {
        writeln!(w, "  {} rows over {} tokens", num(stats.over_limit), num(l))?;
        for line in first_over {
            writeln!(w, "    {line}")?;
        }
    }
    Ok(())
}
