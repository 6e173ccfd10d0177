//! Which HTTP calls are out and since when, so the live view and `status`
//! can say what a run is waiting for when a server is slow ("waiting for
//! 127.0.0.1:8089: create batch from file-1, 25s") instead of standing
//! still. A client registers each call for as long as it is out; a call
//! dropped mid-way (Ctrl-C, a cancelled task) unregisters itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shared by a client and its clones.
#[derive(Debug, Clone, Default)]
pub struct CallWatch(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    next: AtomicU64,
    out: Mutex<BTreeMap<u64, (Instant, Arc<str>)>>,
}

/// A call that is out; dropping it ends it.
#[derive(Debug)]
pub struct Pending {
    watch: CallWatch,
    id: u64,
}

/// The oldest call out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// What it is, e.g. `127.0.0.1:8089: create batch from file-1`.
    pub what: String,
    pub for_: Duration,
    /// Calls out in all.
    pub calls: usize,
}

impl CallWatch {
    /// Registers a call described by `what` (shared, so direct mode's
    /// thousands of calls to one endpoint do not each copy the text).
    pub fn start(&self, what: Arc<str>) -> Pending {
        let id = self.0.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut out) = self.0.out.lock() {
            out.insert(id, (Instant::now(), what));
        }
        Pending {
            watch: self.clone(),
            id,
        }
    }

    /// The call out longest, if any.
    pub fn oldest(&self) -> Option<Waiting> {
        let out = self.0.out.lock().ok()?;
        // Ids grow with time, so the first entry is the oldest call.
        let (_, (since, what)) = out.iter().next()?;
        Some(Waiting {
            what: what.to_string(),
            for_: since.elapsed(),
            calls: out.len(),
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Ok(mut out) = self.watch.0.out.lock() {
            out.remove(&self.id);
        }
    }
}

/// The live view's line for a call out at least `after`, e.g. `waiting for
/// 127.0.0.1:8089: create batch from file-1, 25s` (and how many other
/// calls are out, when there are).
pub fn waiting_line(w: Option<&Waiting>, after: Duration) -> Option<String> {
    let w = w.filter(|w| w.for_ >= after)?;
    let others = match w.calls {
        0 | 1 => String::new(),
        2 => " (and 1 more call)".to_string(),
        n => format!(" (and {} more calls)", n - 1),
    };
    Some(format!(
        "waiting for {}, {}s{others}",
        w.what,
        w.for_.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_call_is_reported_until_it_ends() {
        let w = CallWatch::default();
        assert_eq!(w.oldest(), None);
        let a = w.start("h:1: retrieve batch b1".into());
        std::thread::sleep(Duration::from_millis(5));
        let b = w.clone().start("h:1: list batches".into());
        let o = w.oldest().unwrap();
        assert_eq!(o.what, "h:1: retrieve batch b1");
        assert_eq!(o.calls, 2);
        drop(a);
        assert_eq!(w.oldest().unwrap().what, "h:1: list batches");
        drop(b);
        assert_eq!(w.oldest(), None);
    }

    #[test]
    fn waiting_lines() {
        let w = |secs, calls| Waiting {
            what: "127.0.0.1:9: create batch from file-1".into(),
            for_: Duration::from_secs(secs),
            calls,
        };
        let after = Duration::from_secs(5);
        let cases = [
            (None, None),
            (Some(w(4, 1)), None),
            (
                Some(w(25, 1)),
                Some("waiting for 127.0.0.1:9: create batch from file-1, 25s"),
            ),
            (
                Some(w(5, 2)),
                Some("waiting for 127.0.0.1:9: create batch from file-1, 5s (and 1 more call)"),
            ),
            (
                Some(w(61, 4)),
                Some("waiting for 127.0.0.1:9: create batch from file-1, 61s (and 3 more calls)"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                waiting_line(input.as_ref(), after).as_deref(),
                want,
                "{input:?}"
            );
        }
    }
}
