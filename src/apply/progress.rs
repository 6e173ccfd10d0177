//! What `apply` shows while it works: on a terminal, a live table of chunks
//! redrawn in place with event lines above it; elsewhere (CI, pipes),
//! plain timestamped lines and no escape codes.

use std::cell::Cell;

use console::Term;

use crate::state::now_secs;
use crate::status::{Snapshot, render};
use crate::ui::Ui;

pub struct Progress {
    ui: Ui,
    term: Term,
    /// Lines of the table currently drawn (terminal only).
    drawn: Cell<usize>,
}

impl Progress {
    pub fn new(ui: Ui) -> Progress {
        Progress {
            ui,
            term: Term::stderr(),
            drawn: Cell::new(0),
        }
    }

    fn live(&self) -> bool {
        self.ui.tty && !self.ui.quiet
    }

    /// One thing that happened, e.g. `chunk 3: submitted as batch_abc`.
    pub fn event(&self, unit: Option<u32>, msg: &str) {
        if self.ui.quiet {
            return;
        }
        let text = match unit {
            Some(u) => format!("chunk {u}: {msg}"),
            None => msg.to_string(),
        };
        if self.live() {
            self.clear();
            eprintln!("{text}");
        } else {
            let ts = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
            eprintln!("{ts} {text}");
        }
    }

    /// Redraw the chunk table (terminal only).
    pub fn table(&self, snap: &Snapshot) {
        if !self.live() {
            return;
        }
        self.clear();
        let text = render(&self.ui, snap, now_secs());
        let lines = text.lines().count();
        let _ = self.term.write_str(&text);
        self.drawn.set(lines);
    }

    /// Remove the table, so the next output starts clean.
    pub fn clear(&self) {
        let n = self.drawn.replace(0);
        if n > 0 {
            let _ = self.term.clear_last_lines(n);
        }
    }
}
