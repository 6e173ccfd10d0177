//! Ctrl-C during local work (planning): a SIGINT handler that only sets a
//! flag, which the long loops check between batches of rows. The plan is
//! built in a scratch folder and installed by a rename at the end, so
//! stopping early leaves the previous plan as it was.
//!
//! `apply`'s runner has its own Ctrl-C handling on the async runtime; the
//! guard returned by [`catch`] puts the previous handler back when planning
//! ends, so the two never overlap.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    // Only an atomic store: async-signal-safe (signal-safety(7)).
    REQUESTED.store(true, Ordering::SeqCst);
}

/// While alive, Ctrl-C sets the flag instead of ending the process.
pub struct Guard {
    #[cfg(unix)]
    previous: libc::sigaction,
}

/// Catch Ctrl-C until the guard is dropped.
pub fn catch() -> Guard {
    REQUESTED.store(false, Ordering::SeqCst);
    // SAFETY: sigaction with a zeroed struct, our handler (which only
    // stores to an atomic) and an empty mask; the old action is saved.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigint as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGINT, &action, &mut previous);
        Guard { previous }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: restores the action saved by `catch`.
        unsafe {
            libc::sigaction(libc::SIGINT, &self.previous, std::ptr::null_mut());
        }
    }
}

/// Whether Ctrl-C was pressed since [`catch`].
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Where the process may be killed on purpose, for the crash-safety tests
/// (planning and apply alike). `BATCHGRADER_TEST_KILL_AT=<point>` sends
/// SIGKILL to this process right after that step; nothing else reads it.
pub(crate) fn kill_point(name: &str) {
    if std::env::var("BATCHGRADER_TEST_KILL_AT").is_ok_and(|v| v == name) {
        kill_now();
    }
}

pub(crate) fn kill_now() {
    // SAFETY: kill(2) on our own pid with SIGKILL has no memory effects.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}
