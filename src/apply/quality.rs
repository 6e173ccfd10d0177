//! The quality gate during a run: the gold rows' answers, judged as they
//! arrive, compared with their gold values after every merge (batch lane)
//! or every group of answers (direct lane), so that a judge that disagrees
//! with the user's labels stops spending as a passed budget does.
//!
//! The gold values come from the plan's `gold.jsonl` (no input file is
//! read during a run); an answer, once in, is judged once and kept.

use serde_json::Value;

use super::decide::{self, GateCheck};
use crate::agreement::{Collector, Grade};
use crate::answer::Parser;
use crate::error::{Error, Result};
use crate::spec::{CheckedSpec, Gate};
use crate::state::{JobStore, Outcome, PlanRecord};

/// A gold row's answer, judged.
#[derive(Debug, Clone)]
enum Judged {
    Grade {
        text: String,
        json: Option<Value>,
    },
    /// The answer did not parse.
    NoGrade,
}

#[derive(Debug, Clone)]
struct Watched {
    row: u64,
    key: String,
    fingerprint: String,
    gold: Vec<Option<String>>,
    judged: Option<Judged>,
}

/// The gate and the gold rows it watches.
pub struct QualityWatch {
    gate: Gate,
    fields: Vec<crate::spec::GoldField>,
    rows: Vec<Watched>,
    /// The count of settled requests at the last check, and its verdict:
    /// nothing new settled, nothing to judge again.
    last: Option<(u64, GateCheck)>,
}

impl QualityWatch {
    /// The watch of a job with a quality gate; `None` without one.
    pub fn load(store: &JobStore, spec: &CheckedSpec, plan: &PlanRecord) -> Result<Option<Self>> {
        let Some(gate) = spec.run.halt.gate else {
            return Ok(None);
        };
        let mut rows = Vec::new();
        for g in super::gold_rows(store, spec, plan)? {
            let req = store.request(plan.generation, g.row)?.ok_or_else(|| {
                Error::io(
                    "read request records in",
                    store.plan_dir(plan.generation),
                    std::io::Error::other(format!("no record of gold row {}", g.row)),
                )
            })?;
            rows.push(Watched {
                row: g.row,
                key: req.key,
                fingerprint: req.fingerprint,
                gold: g.gold,
                judged: None,
            });
        }
        Ok(Some(QualityWatch {
            gate,
            fields: spec.gold.clone(),
            rows,
            last: None,
        }))
    }

    /// The gate's verdict now. `settled`: requests with a final outcome,
    /// so that nothing is read again when nothing new came in.
    pub fn check(&mut self, store: &JobStore, parser: &Parser, settled: u64) -> Result<GateCheck> {
        // A check costs a pass over the gold rows: it is made again once a
        // tenth of them could have come in (every answer, with few gold
        // rows), so that a long direct run does not spend its time here.
        let step = (self.rows.len() as u64 / 10).max(1);
        if let Some((at, verdict)) = &self.last
            && settled < at.saturating_add(step)
        {
            return Ok(verdict.clone());
        }
        let mut collector = Collector::new(&self.fields);
        for w in &mut self.rows {
            if w.judged.is_none()
                && let Some(Outcome::Success(res)) = store.outcome(&w.fingerprint)?
            {
                w.judged = Some(match parser.parse_value(&res.answer) {
                    Ok(v) => Judged::Grade {
                        text: v.text,
                        json: v.json,
                    },
                    Err(_) => Judged::NoGrade,
                });
            }
            let grade = match &w.judged {
                Some(Judged::Grade { text, json }) => Some(Grade {
                    text,
                    json: json.as_ref(),
                }),
                // Not answered yet: not a row without a grade, only not in.
                None => continue,
                Some(Judged::NoGrade) => None,
            };
            collector.add(w.row, &w.key, &w.gold, grade, "");
        }
        let numbers = collector.gate_numbers(self.gate.on == crate::spec::GateOn::LowerBound);
        let verdict = decide::quality_gate(&self.gate, &numbers);
        self.last = Some((settled, verdict.clone()));
        Ok(verdict)
    }
}
