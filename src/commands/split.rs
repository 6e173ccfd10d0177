//! `split SPEC|FILE`: cut an input into parts under a token, row or byte limit.

use std::io::{self, Write};
use std::path::Path;

use super::tokens::resolve_target;
use crate::error::Result;
use crate::exit::Code;
use crate::settings::CountTarget;
use crate::split::{Part, SplitLimits, split};
use crate::tokenize::Counter;
use crate::ui::{Ui, num, plural, print_json};

pub fn run(target: &CountTarget, limits: SplitLimits, out_dir: &Path, ui: &Ui) -> Result<Code> {
    super::must_be_folder("--out-dir", out_dir)?;
    let t = resolve_target(target, ui)?;
    let counter = Counter::for_input(t.encoding, crate::input::size_hint(&t.sources))?;
    let bar = ui.progress(t.total_bytes(), "splitting");
    let parts = split(&t, &counter, limits, out_dir, |b| bar.set_position(b))?;
    bar.finish_and_clear();
    if ui.json {
        print_json(&parts);
    }
    ui.show(|w| render(w, &parts));
    Ok(Code::Success)
}

fn render(w: &mut impl Write, parts: &[Part]) -> io::Result<()> {
    for p in parts {
        writeln!(
            w,
            "{}  {} rows, {} tokens",
            p.path,
            num(p.rows),
            num(p.tokens)
        )?;
    }
    writeln!(
        w,
        "{} part{} written.",
        parts.len(),
        plural(parts.len() as u64, "s")
    )
}
