//! `validate SPEC`: check a spec against the schema and the semantic rules.

use std::io::Write;
use std::path::Path;

use crate::error::Result;
use crate::exit::Code;
use crate::spec;
use crate::ui::{Ui, print_json};

pub fn run(path: &Path, ui: &Ui) -> Result<Code> {
    let checked = spec::load(path)?;
    if ui.json {
        print_json(&serde_json::json!({"valid": true, "spec": checked.saved()}));
    }
    ui.show(|w| writeln!(w, "{}: valid job spec `{}`", path.display(), checked.name()));
    Ok(Code::Success)
}
