//! Where a problem is in the spec: a path of keys, the value there, and the
//! file position a `Problem` is reported at. Shared by the checks and the
//! rules.

use serde_json::Value;

use super::Problem;
use super::locate::{self, Seg, dotted};

pub(super) fn problem_at(locator: &locate::Locator, path: &[Seg], message: String) -> Problem {
    let (line, column) = locator.locate(path);
    Problem {
        line,
        column,
        field: dotted(path),
        message,
    }
}

pub(super) fn json_at<'a>(json: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let mut cur = json;
    for seg in path {
        cur = match seg {
            Seg::Key(k) => cur.get(k)?,
            Seg::Index(i) => cur.get(*i)?,
        };
    }
    Some(cur)
}

pub(super) fn key_path(keys: &[&str]) -> Vec<Seg> {
    keys.iter().map(|k| Seg::Key((*k).to_string())).collect()
}
