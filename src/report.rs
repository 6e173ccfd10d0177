//! What users see: human text on stderr (styled on a terminal, plain in CI
//! or with `NO_COLOR`), machine JSON on stdout with `--json`.

use std::io::{IsTerminal, Write};

use console::Style;

use crate::cost::usd;
use crate::spec::units::human_bytes;
use crate::state::PlanRecord;

/// Output settings for one command run.
#[derive(Debug, Clone, Copy)]
pub struct Ui {
    pub json: bool,
    pub quiet: bool,
    pub color: bool,
    /// stderr is a terminal: progress bars and live tables are allowed.
    pub tty: bool,
}

impl Ui {
    pub fn new(json: bool, quiet: bool, no_color: bool) -> Ui {
        let tty = std::io::stderr().is_terminal();
        let color = tty && !no_color && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        console::set_colors_enabled_stderr(color);
        Ui {
            json,
            quiet,
            color,
            tty,
        }
    }

    fn style(&self, s: Style) -> Style {
        if self.color { s } else { Style::new() }
    }

    pub fn warn(&self, msg: &str) {
        if !self.quiet {
            eprintln!(
                "{} {msg}",
                self.style(Style::new().yellow().bold())
                    .apply_to("warning:")
            );
        }
    }

    pub fn error(&self, msg: &str) {
        eprintln!(
            "{} {msg}",
            self.style(Style::new().red().bold()).apply_to("error:")
        );
    }

    pub fn info(&self, msg: &str) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }

    pub fn bold(&self, s: &str) -> String {
        self.style(Style::new().bold()).apply_to(s).to_string()
    }

    pub fn dim(&self, s: &str) -> String {
        self.style(Style::new().dim()).apply_to(s).to_string()
    }

    /// A byte-based progress bar on stderr, only on a terminal.
    pub fn progress(&self, total: u64, what: &str) -> indicatif::ProgressBar {
        if !self.tty || self.quiet || total < 4 << 20 {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        bar
    }
}

/// Print a value as one JSON document on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}

/// Thousands separators: 1234567 → `1,234,567`.
pub fn num(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The plan summary, Terraform style.
pub fn plan_text(ui: &Ui, job: &str, plan: &PlanRecord, changed: bool, state_dir: &str) -> String {
    let mut s = String::new();
    let line = |s: &mut String, k: &str, v: String| s.push_str(&format!("  {:<15}{v}\n", k));
    if changed {
        s.push_str(&format!("{} {}\n", ui.bold("Plan for job"), ui.bold(job)));
    } else {
        s.push_str(&format!(
            "{} {}\n",
            ui.bold("No changes."),
            ui.dim(&format!(
                "The saved plan for `{job}` matches the spec and inputs."
            ))
        ));
    }
    line(
        &mut s,
        "model",
        format!("{} ({})", plan.model, plan.encoding),
    );
    line(
        &mut s,
        "rows",
        format!(
            "{}: {} to grade, {} already graded",
            num(plan.rows),
            num(plan.outstanding),
            num(plan.already_done)
        ),
    );
    line(
        &mut s,
        "prompt tokens",
        format!(
            "{} to submit ({} per request on average)",
            num(plan.prompt_tokens),
            num(plan
                .prompt_tokens
                .checked_div(plan.outstanding)
                .unwrap_or(0))
        ),
    );
    line(
        &mut s,
        "chunks",
        format!(
            "{} ({} of JSONL)",
            plan.chunks.len(),
            human_bytes(plan.bytes)
        ),
    );
    const SHOWN: usize = 12;
    if !plan.chunks.is_empty() {
        s.push_str(&ui.dim(&format!(
            "  {:>17} {:>10} {:>12} {:>10}\n",
            "chunk", "requests", "tokens", "size"
        )));
        for (i, c) in plan.chunks.iter().enumerate() {
            if plan.chunks.len() > SHOWN && i == SHOWN - 2 {
                s.push_str(&format!(
                    "  {:>17}\n",
                    format!("… {} more", plan.chunks.len() - SHOWN + 1)
                ));
            }
            if plan.chunks.len() > SHOWN && i >= SHOWN - 2 && i + 1 < plan.chunks.len() {
                continue;
            }
            s.push_str(&format!(
                "  {:>17} {:>10} {:>12} {:>10}\n",
                c.index,
                num(c.requests),
                num(c.tokens),
                human_bytes(c.bytes)
            ));
        }
    }
    match (&plan.price, &plan.estimate) {
        (Some(p), Some(e)) => {
            let mut v = format!("{} prompt", usd(e.low));
            if let Some(x) = e.expected {
                v.push_str(&format!(", ~{} expected", usd(x)));
            }
            match e.high {
                Some(h) => v.push_str(&format!(", at most {}", usd(h))),
                None => v.push_str(", no upper bound (the request sets no max_tokens)"),
            }
            line(&mut s, "cost (batch)", v);
            line(
                &mut s,
                "",
                ui.dim(&format!(
                    "{} at ${}/${} per 1M in/out tokens, prices of {}",
                    p.model, p.batch_input_per_1m, p.batch_output_per_1m, p.prices_as_of
                )),
            );
        }
        _ => line(
            &mut s,
            "cost (batch)",
            "unknown: the model has no price".into(),
        ),
    }
    line(&mut s, "state", state_dir.to_string());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands() {
        assert_eq!(num(0), "0");
        assert_eq!(num(999), "999");
        assert_eq!(num(1000), "1,000");
        assert_eq!(num(1234567), "1,234,567");
    }
}
