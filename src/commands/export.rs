//! `export [JOB] [--out F]`: write the output file again from the state.

use std::io::Write;
use std::path::Path;

use super::job;
use crate::error::{Error, Result};
use crate::exit::Code;
use crate::settings::Global;
use crate::state::JobStore;
use crate::ui::{Ui, num, print_json};

pub fn run(
    g: &Global,
    job: Option<&str>,
    out: Option<&Path>,
    disagreements: bool,
    ui: &Ui,
) -> Result<Code> {
    let g = &super::homes::state_for(g, job, job::Verb::Export, ui)?;
    let job = job::resolve(g, job, job::Verb::Export)?;
    let store = JobStore::open_existing(&g.state_root, &job)?;
    let spec = job::saved_spec(&store)?;
    if disagreements {
        if spec.gold.is_empty() {
            return Err(Error::usage_with_hint(
                format!("job `{job}` has no gold values, so there are no disagreements to export"),
                "name the column with the expected values in the spec's `output.gold`, then run `batchgrader apply SPEC` (no answer is paid for again)",
            ));
        }
        if out.is_none() {
            return Err(Error::usage_with_hint(
                "--disagreements writes only some rows, so it needs a file of its own",
                format!(
                    "add `--out FILE`, e.g. `batchgrader export {job} --disagreements --out disagreements.csv`"
                ),
            ));
        }
    }
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
        if disagreements {
            crate::apply::Rows::Disagreements
        } else {
            crate::apply::Rows::All
        },
        ui,
    )?;
    let shown = w.written.rows - w.left_out;
    let w = w.written;
    if ui.json {
        let mut v = serde_json::json!({"job": job, "output_path": path.display().to_string(), "written": w});
        if disagreements {
            v["disagreements"] = shown.into();
        }
        print_json(&v);
    }
    ui.show(|out| {
        if disagreements {
            writeln!(
                out,
                "{}: {} row{} where the judge and a gold value differ (of {} rows)",
                path.display(),
                num(shown),
                if shown == 1 { "" } else { "s" },
                num(w.rows),
            )
        } else {
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
        }
    });
    Ok(Code::Success)
}
