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
    fn thousands() {
        assert_eq!(num(0), "0");
        assert_eq!(num(999), "999");
        assert_eq!(num(1000), "1,000");
        assert_eq!(num(1234567), "1,234,567");
    }
}
