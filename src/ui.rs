//! What users see: human text on stderr (styled on a terminal, plain in CI
//! or with `NO_COLOR`), machine JSON on stdout with `--json`.
//!
//! Renderers write to any `impl Write` and style text through `Paint`, so
//! tests render into a buffer with colour off; `Ui::show` hands them stderr.

use std::io::{IsTerminal, StderrLock, Write};

use console::Style;

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

    /// Plain text, no terminal: what tests render with.
    pub fn plain() -> Ui {
        Ui {
            json: false,
            quiet: false,
            color: false,
            tty: false,
        }
    }

    pub fn paint(&self) -> Paint {
        Paint { color: self.color }
    }

    fn style(&self, s: Style) -> Style {
        self.paint().style(s)
    }

    /// Let a renderer write human text to stderr (nothing with `--quiet`).
    /// A closed stderr is no reason to fail the command, so write errors
    /// are dropped.
    pub fn show(&self, render: impl FnOnce(&mut StderrLock<'static>) -> std::io::Result<()>) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = render(&mut err).and_then(|()| err.flush());
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
        self.paint().bold(s)
    }

    pub fn dim(&self, s: &str) -> String {
        self.paint().dim(s)
    }

    /// Progress of a step over bytes of input: a bar on a terminal, a
    /// line now and then elsewhere (see `Meter`).
    pub fn progress(&self, total: u64, what: &str) -> Meter {
        self.meter(total, what, Unit::Bytes)
    }

    /// Progress of a step over `total` rows.
    pub fn progress_rows(&self, total: u64, what: &str) -> Meter {
        self.meter(total, what, Unit::Rows)
    }

    fn meter(&self, total: u64, what: &str, unit: Unit) -> Meter {
        let hidden = Meter {
            bar: indicatif::ProgressBar::hidden(),
            lines: None,
        };
        // Small inputs take well under 2 s; no line or bar for them (and
        // no line that depends on the machine's speed in a test's output).
        let small = match unit {
            Unit::Bytes => total < 4 << 20,
            Unit::Rows => total < 10_000,
        };
        if self.quiet || small {
            return hidden;
        }
        if !self.tty {
            return Meter {
                lines: Some(std::sync::Mutex::new(Lines {
                    what: what.to_string(),
                    total,
                    unit,
                    started: std::time::Instant::now(),
                    last: None,
                })),
                ..hidden
            };
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        );
        let counts = match unit {
            Unit::Bytes => "{bytes}/{total_bytes}",
            Unit::Rows => "{human_pos}/{human_len} rows",
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{{msg}} [{{bar:30}}] {counts} ({{eta}})"
            ))
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        Meter { bar, lines: None }
    }
}

#[derive(Debug, Clone, Copy)]
enum Unit {
    Bytes,
    Rows,
}

/// Progress of one long local step (reading, counting, writing the output).
/// On a terminal, a bar; elsewhere (CI, pipes), a timestamped line once the
/// step has run for 2 s and then every 10 s, so no step is silent for long.
pub struct Meter {
    bar: indicatif::ProgressBar,
    lines: Option<std::sync::Mutex<Lines>>,
}

struct Lines {
    what: String,
    total: u64,
    unit: Unit,
    started: std::time::Instant,
    last: Option<std::time::Instant>,
}

/// Seconds before the first line off a terminal, and between lines.
const FIRST_LINE: u64 = 2;
const LINE_EVERY: u64 = 10;

impl Meter {
    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
        let Some(lines) = &self.lines else { return };
        let mut l = lines.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let due = match l.last {
            None => now.duration_since(l.started).as_secs() >= FIRST_LINE,
            Some(t) => now.duration_since(t).as_secs() >= LINE_EVERY,
        };
        if due {
            l.last = Some(now);
            let ts = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
            eprintln!("{ts} {}", meter_line(&l.what, pos, l.total, l.unit));
        }
    }

    pub fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }
}

/// `reading: 512.0 MiB of 1.0 GiB (50%)`, `writing the output: 3,000 of 10,000 rows (30%)`.
fn meter_line(what: &str, pos: u64, total: u64, unit: Unit) -> String {
    let pct = (pos.min(total) * 100).checked_div(total).unwrap_or(100);
    match unit {
        Unit::Bytes => format!(
            "{what}: {} of {} ({pct}%)",
            indicatif::HumanBytes(pos),
            indicatif::HumanBytes(total)
        ),
        Unit::Rows => format!(
            "{what}: {} of {} rows ({pct}%)",
            indicatif::HumanCount(pos),
            indicatif::HumanCount(total)
        ),
    }
}

/// Text styles for renderers: bold and dim on a colour terminal, nothing
/// otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Paint {
    color: bool,
}

impl Paint {
    /// No styles at all (tests, pipes, `NO_COLOR`).
    pub fn plain() -> Paint {
        Paint { color: false }
    }

    fn style(&self, s: Style) -> Style {
        if self.color {
            s.force_styling(true)
        } else {
            Style::new()
        }
    }

    pub fn bold(&self, s: &str) -> String {
        self.style(Style::new().bold()).apply_to(s).to_string()
    }

    pub fn dim(&self, s: &str) -> String {
        self.style(Style::new().dim()).apply_to(s).to_string()
    }
}

/// `s` when `n` is not 1: `plural(3, "es")`.
pub fn plural(n: u64, suffix: &str) -> &str {
    if n == 1 { "" } else { suffix }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_lines() {
        let cases = [
            (
                Unit::Bytes,
                512 << 20,
                1 << 30,
                "reading: 512.00 MiB of 1.00 GiB (50%)",
            ),
            (
                Unit::Rows,
                3_000_000,
                10_000_000,
                "reading: 3,000,000 of 10,000,000 rows (30%)",
            ),
            (Unit::Rows, 5, 0, "reading: 5 of 0 rows (100%)"),
        ];
        for (unit, pos, total, want) in cases {
            assert_eq!(meter_line("reading", pos, total, unit), want);
        }
    }

    #[test]
    fn thousands() {
        assert_eq!(num(0), "0");
        assert_eq!(num(999), "999");
        assert_eq!(num(1000), "1,000");
        assert_eq!(num(1234567), "1,234,567");
    }
}
