//! `validate SPEC`: check a spec against the schema and the semantic rules.

use std::io::Write;
use std::path::Path;

use crate::error::Result;
use crate::exit::Code;
use crate::spec;
use crate::ui::{Ui, print_json};

pub fn run(path: &Path, ui: &Ui) -> Result<Code> {
    let checked = spec::load(path)?;
    // The inputs, when they are there: a placeholder or `input.id` naming
    // no column would otherwise pass here and fail only at `plan`.
    crate::plan::check_headers(&checked)?;
    for w in checked.warnings_text() {
        ui.warn(&w);
    }
    if ui.json {
        print_json(&serde_json::json!({"valid": true, "spec": checked.saved()}));
    }
    ui.show(|w| writeln!(w, "{}: valid job spec `{}`", path.display(), checked.name()));
    Ok(Code::Success)
}
