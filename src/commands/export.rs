//! `export [JOB] [--out F]`: write the output file again from the state.

use std::io::Write;
use std::path::Path;

use super::job;
use crate::error::Result;
use crate::exit::Code;
use crate::settings::Global;
use crate::state::JobStore;
use crate::ui::{Ui, num, print_json};

pub fn run(g: &Global, job: Option<&str>, out: Option<&Path>, ui: &Ui) -> Result<Code> {
    let job = job::resolve(&g.state_root, job)?;
    let store = JobStore::open_existing(&g.state_root, &job)?;
    let spec = job::saved_spec(&store)?;
    let plan = job::current_plan(&store, &job)?;
    let path = out.map_or_else(|| spec.output_path.clone(), Path::to_path_buf);
    crate::protect::check_output(
        &path,
        match out {
            Some(_) => crate::protect::OutputFrom::Flag("--out"),
            None => crate::protect::OutputFrom::Spec(&spec.file),
        },
        &spec,
        g.pricing.as_deref(),
        &g.state_root,
    )?;
    let w = crate::apply::write_output_to(
        &store,
        &spec,
        &plan,
        &path,
        if out.is_some() {
            None
        } else {
            spec.output().format
        },
        ui,
    )?
    .written;
    if ui.json {
        print_json(
            &serde_json::json!({"job": job, "output_path": path.display().to_string(), "written": w}),
        );
    }
    ui.show(|out| {
        writeln!(
            out,
            "{}: {} rows ({} graded, {} parse failures, {} failed, {} not graded)",
            path.display(),
            num(w.rows),
            num(w.ok),
            num(w.parse_errors),
            num(w.failed),
            num(w.not_graded)
        )
    });
    Ok(Code::Success)
}
