//! The gold values of a plan, `gold.jsonl` beside its request records:
//! one line per row that has at least one gold value
//! (`{"row": 12, "gold": ["billing", null]}`, in `spec.gold`'s order).
//! Written by `plan`, never changed; read by the quality gate during a run
//! and by `report` and `status`, which read no input file. Gold values are
//! not part of any request, so a re-plan that only changed them sends
//! nothing again.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const GOLD: &str = "gold.jsonl";

/// One row's gold values; `None` where its cell is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldRow {
    pub row: u64,
    pub gold: Vec<Option<String>>,
}

/// Appends the rows that have gold values.
pub struct Writer {
    out: BufWriter<File>,
}

impl Writer {
    pub fn create(dir: &Path) -> std::io::Result<Writer> {
        Ok(Writer {
            out: BufWriter::new(crate::nofollow::create(&dir.join(GOLD))?),
        })
    }

    /// Records `row`'s values, when it has any.
    pub fn push(&mut self, row: u64, gold: Vec<Option<String>>) -> std::io::Result<()> {
        if gold.iter().all(Option::is_none) {
            return Ok(());
        }
        serde_json::to_writer(&mut self.out, &GoldRow { row, gold })?;
        self.out.write_all(b"\n")
    }

    pub fn finish(self) -> std::io::Result<()> {
        self.out
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()
    }
}

/// The gold rows of the plan in `dir`; `None` when the plan recorded none
/// (it was made before gold values were set).
pub fn read(dir: &Path) -> std::io::Result<Option<Vec<GoldRow>>> {
    let file = match File::open(dir.join(GOLD)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        let row: GoldRow = serde_json::from_str(&line)
            .map_err(|e| std::io::Error::other(format!("{GOLD} line {} is damaged: {e}", i + 1)))?;
        rows.push(row);
    }
    Ok(Some(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_without_gold_are_left_out_and_the_rest_read_back() {
        let dir = std::env::temp_dir().join(format!("bg-gold-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read(&dir).unwrap(), None);
        let mut w = Writer::create(&dir).unwrap();
        w.push(1, vec![Some("a".into()), None]).unwrap();
        w.push(2, vec![None, None]).unwrap();
        w.push(3, vec![None, Some("7".into())]).unwrap();
        w.finish().unwrap();
        let rows = read(&dir).unwrap().unwrap();
        assert_eq!(
            rows,
            vec![
                GoldRow {
                    row: 1,
                    gold: vec![Some("a".into()), None]
                },
                GoldRow {
                    row: 3,
                    gold: vec![None, Some("7".into())]
                },
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
