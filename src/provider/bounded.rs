//! Bounds on what a server can make this program hold, print or store.
//!
//! A provider, a proxy in front of it, or a server that only claims to be
//! one may answer with anything: a body of gigabytes, a line with no end,
//! an id of a megabyte, or text with terminal escape sequences that would
//! repaint the user's screen when printed. Everything the client reads is
//! capped here (the sizes below, each with its reason), and every piece of
//! server text passes [`clean_text`] before it reaches an error message, a
//! log, the live view or a state file.

use std::io::{self, BufRead};

/// The largest JSON answer of a control-plane call (a batch, a file object,
/// a page of 100 batches, a delete). A batch object is a few KB, one with
/// its validation errors (OpenAI lists at most a few thousand) a few
/// hundred KB; 8 MiB is far above any real answer and still small to hold.
pub const MAX_CONTROL_BODY: usize = 8 << 20;

/// The largest answer of one direct-mode chat completion. A completion of
/// 100,000 tokens is under 1 MB of JSON; `logprobs` with 20 alternatives
/// per token can reach a few MB. With up to `max_requests_in_flight`
/// answers read at once, this bounds the memory a hostile server can take.
pub const MAX_CHAT_BODY: usize = 16 << 20;

/// The most bytes of direct-mode answers held at once, across every
/// request in flight. `MAX_CHAT_BODY` bounds one answer; without a bound on
/// their sum, a server that sends endless 200 bodies to 45 requests at once
/// took a run to 266 MB. Four answers at the per-answer cap fit, and real
/// answers (a few KB each) leave it far from full at any `max_requests_in_flight`.
/// An answer that would take the total over it is dropped, as a retryable
/// failure that names it, rather than held ([`ByteBudget`]).
pub const MAX_ANSWERS_HELD: usize = 4 * MAX_CHAT_BODY;

/// Error bodies say what they have to say in their first 64 KiB.
pub const MAX_ERROR_BODY: usize = 64 << 10;

/// The longest line of a result file read back from disk. One line holds
/// one request's answer (see `MAX_CHAT_BODY`); a longer one is counted as a
/// bad line and its request as not executed, never held whole.
pub const MAX_RESULT_LINE: usize = 32 << 20;

/// Ids (batch, file, request ids) and result URLs from a server are used as
/// given (in URLs and the state), so they are checked, not cut: real ones
/// are under 300 characters (LiteLLM's base64 ids are the longest).
pub const MAX_ID: usize = 1024;

/// Caps of server text once cleaned, by what it is.
pub const MAX_MESSAGE: usize = 1000;
/// A status label or an error code.
pub const MAX_LABEL: usize = 100;
/// An excerpt of a body that is not what was expected.
pub const MAX_EXCERPT: usize = 200;
/// An event line (the log and the terminal).
pub const MAX_EVENT: usize = 4000;

/// Bytes that every request in flight draws from as its answer arrives,
/// and gives back when its answer is dropped: the sum held stays under the
/// total whatever the server sends. Lock-free, shared by clones.
#[derive(Debug, Clone)]
pub struct ByteBudget(std::sync::Arc<BudgetInner>);

#[derive(Debug)]
struct BudgetInner {
    total: usize,
    used: std::sync::atomic::AtomicUsize,
}

/// What one answer holds of a [`ByteBudget`]; given back on drop.
#[derive(Debug)]
pub struct Held {
    budget: ByteBudget,
    bytes: usize,
}

impl ByteBudget {
    pub fn new(total: usize) -> ByteBudget {
        ByteBudget(std::sync::Arc::new(BudgetInner {
            total,
            used: std::sync::atomic::AtomicUsize::new(0),
        }))
    }

    pub fn total(&self) -> usize {
        self.0.total
    }

    /// Bytes held now, by every answer.
    pub fn used(&self) -> usize {
        self.0.used.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Nothing held yet.
    pub fn hold(&self) -> Held {
        Held {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// Takes `n` bytes if the total allows; never blocks (two answers
    /// waiting on each other's bytes would wait for ever).
    fn take(&self, n: usize) -> bool {
        use std::sync::atomic::Ordering;
        self.0
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|t| *t <= self.0.total)
            })
            .is_ok()
    }
}

impl Held {
    /// Holds `n` more bytes, or nothing more when the budget has no room.
    pub fn grow(&mut self, n: usize) -> bool {
        let ok = self.budget.take(n);
        if ok {
            self.bytes += n;
        }
        ok
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget
            .0
            .used
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Whether `text` is a JSON object, as far as its first character says.
/// Every answer and result line the APIs document is one (a list is an
/// object with `data`); serde's derived structs would also take an array,
/// field by field in order, so `[1,2]` became a file with the id `1`.
pub fn is_json_object(text: &str) -> bool {
    text.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}')
        .starts_with('{')
}

/// Server text made safe to show and store: escape sequences (CSI, OSC,
/// DCS and the other string controls, in their 7-bit and 8-bit forms)
/// removed, other control characters and Unicode bidi overrides turned
/// into spaces, runs of white space collapsed to one, and the result cut
/// to `max` characters (`…` marks a cut).
pub fn clean_text(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max.saturating_mul(4)));
    let mut count = 0usize;
    let mut chars = text.chars().peekable();
    let mut pending_space = false;
    let mut cut = false;
    while let Some(c) = chars.next() {
        let skip = match c {
            '\u{1b}' => match chars.peek().copied() {
                Some('[') => {
                    chars.next();
                    Escape::Csi
                }
                Some(']' | 'P' | 'X' | '^' | '_') => {
                    chars.next();
                    Escape::Str
                }
                // A two-character sequence (ESC c resets the terminal).
                Some(_) => {
                    chars.next();
                    Escape::Done
                }
                None => Escape::Done,
            },
            '\u{9b}' => Escape::Csi,
            '\u{90}' | '\u{98}' | '\u{9d}' | '\u{9e}' | '\u{9f}' => Escape::Str,
            _ => Escape::None,
        };
        match skip {
            Escape::Csi => {
                // Parameters and intermediates, then one final byte.
                for n in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&n) {
                        break;
                    }
                }
                continue;
            }
            Escape::Str => {
                // Up to BEL, ST (8-bit) or ESC \.
                while let Some(n) = chars.next() {
                    if n == '\u{7}' || n == '\u{9c}' {
                        break;
                    }
                    if n == '\u{1b}' {
                        if chars.peek() == Some(&'\\') {
                            chars.next();
                        }
                        break;
                    }
                }
                continue;
            }
            Escape::Done => continue,
            Escape::None => {}
        }
        if c.is_whitespace() || c.is_control() || is_bidi_control(c) {
            pending_space = true;
            continue;
        }
        if count >= max {
            cut = true;
            break;
        }
        if pending_space && count > 0 {
            if count + 1 >= max {
                cut = true;
                break;
            }
            out.push(' ');
            count += 1;
        }
        pending_space = false;
        out.push(c);
        count += 1;
    }
    if cut {
        out.push('…');
    }
    out
}

enum Escape {
    None,
    /// A control sequence: parameters up to a final byte.
    Csi,
    /// A control string (OSC, DCS, SOS, PM, APC): up to its terminator.
    Str,
    /// Already consumed.
    Done,
}

/// Unicode's explicit direction controls, which can make text read
/// differently from its bytes (CVE-2021-42574).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Why an id from a server is not used; `None` when it is a plain id: 1 to
/// [`MAX_ID`] bytes, no white space, control or direction characters.
pub fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("it is empty".into());
    }
    if id.len() > MAX_ID {
        return Some(format!(
            "it is {} bytes long (at most {MAX_ID} are accepted): {}",
            id.len(),
            clean_text(id, 40)
        ));
    }
    if id
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || is_bidi_control(c))
    {
        return Some(format!(
            "it holds white space or control characters: {}",
            clean_text(id, 80)
        ));
    }
    None
}

/// What a body looks like, for a message about an answer that is not what
/// the protocol promises: `an empty body`, `an HTML page titled "502 Bad
/// Gateway"` (a proxy's or a login page), or its cleaned start.
pub fn describe_body(body: &str) -> String {
    let t = body.trim_start_matches('\u{feff}').trim();
    if t.is_empty() {
        return "an empty body".into();
    }
    if t.starts_with('<') {
        let lower = t.to_ascii_lowercase();
        let title = lower.find("<title").and_then(|start| {
            let open_end = start + lower[start..].find('>')? + 1;
            let close = open_end + lower[open_end..].find("</title")?;
            // `to_ascii_lowercase` keeps byte offsets, so they index `t`.
            Some(clean_text(&t[open_end..close], MAX_LABEL))
        });
        return match title.filter(|s| !s.is_empty()) {
            Some(title) => format!("an HTML page titled \"{title}\""),
            None => format!("an HTML or XML page: {}", clean_text(t, MAX_EXCERPT)),
        };
    }
    clean_text(t, MAX_EXCERPT)
}

/// True when [`describe_body`] names what the body is (empty, a page)
/// rather than quoting its start.
pub fn is_page(body: &str) -> bool {
    let t = body.trim_start_matches('\u{feff}').trim();
    t.is_empty() || t.starts_with('<')
}

/// `1 MiB`, `64 KiB`: a cap as the messages name it.
pub fn cap_text(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// One line read with a cap.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The line, without its `\n`.
    Whole,
    /// Longer than the cap: `buf` holds its first `cap` bytes, the rest was
    /// read past and dropped; `len` is its whole length.
    TooLong { len: u64 },
}

/// Reads the next line of `r` into `buf` (cleared first), holding at most
/// `cap` bytes of it. `None` at the end of the input.
pub fn read_line_capped(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    cap: usize,
) -> io::Result<Option<Line>> {
    buf.clear();
    let mut len = 0u64;
    let mut any = false;
    loop {
        let available = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            break;
        }
        any = true;
        let (take, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (available.len(), false),
        };
        let room = cap.saturating_sub(buf.len());
        buf.extend_from_slice(&available[..take.min(room)]);
        len += take as u64;
        r.consume(take + usize::from(done));
        if done {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    Ok(Some(if len > cap as u64 {
        Line::TooLong { len }
    } else {
        Line::Whole
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_budget_never_lends_more_than_its_total() {
        let b = ByteBudget::new(100);
        let mut one = b.hold();
        let mut two = b.hold();
        // (who, bytes asked) → granted, total held after
        let table: &[(u8, usize, bool, usize)] = &[
            (1, 60, true, 60),
            (2, 30, true, 90),
            (2, 11, false, 90),
            (1, 10, true, 100),
            (1, 1, false, 100),
            (2, usize::MAX, false, 100),
        ];
        for (k, &(who, n, granted, used)) in table.iter().enumerate() {
            let h = if who == 1 { &mut one } else { &mut two };
            assert_eq!(h.grow(n), granted, "step {k}");
            assert_eq!(b.used(), used, "step {k}");
        }
        assert_eq!((one.bytes(), two.bytes()), (70, 30));
        // A dropped answer gives its bytes back.
        drop(one);
        assert_eq!(b.used(), 30);
        let mut three = b.hold();
        assert!(three.grow(70));
        drop(two);
        drop(three);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn clean_text_table() {
        let cases: &[(&str, usize, &str)] = &[
            ("plain text", 100, "plain text"),
            (
                "  lead and\ttabs\r\nnewlines  ",
                100,
                "lead and tabs newlines",
            ),
            // Colour, cursor movement and screen clearing (CSI).
            ("\u{1b}[31mred\u{1b}[0m", 100, "red"),
            ("a\u{1b}[2J\u{1b}[Hb", 100, "ab"),
            ("x\u{1b}[?1049hy", 100, "xy"),
            // A window title (OSC ended by BEL, and by ESC \).
            ("\u{1b}]0;pwned\u{7}ok", 100, "ok"),
            (
                "\u{1b}]8;;http://evil\u{1b}\\link\u{1b}]8;;\u{1b}\\",
                100,
                "link",
            ),
            // 8-bit CSI and OSC.
            ("\u{9b}31mred", 100, "red"),
            ("\u{9d}0;t\u{9c}ok", 100, "ok"),
            // DCS up to ST; a reset (ESC c); a lone ESC at the end.
            ("\u{1b}Pq#0\u{1b}\\after", 100, "after"),
            ("\u{1b}cfresh", 100, "fresh"),
            ("end\u{1b}", 100, "end"),
            // Other controls, DEL, NUL and bidi overrides become spaces.
            ("a\u{0}b\u{7f}c\u{8}d", 100, "a b c d"),
            ("abc\u{202e}fed\u{2066}x", 100, "abc fed x"),
            // Cut with a mark; multi-byte characters are counted as one.
            ("abcdefghij", 5, "abcde…"),
            ("ééééé", 3, "ééé…"),
            ("abc", 3, "abc"),
            ("ab cd", 3, "ab…"),
            ("", 10, ""),
            ("\u{1b}[31m\u{1b}[0m", 10, ""),
        ];
        for (input, max, want) in cases {
            assert_eq!(clean_text(input, *max), *want, "{input:?} max {max}");
        }
    }

    #[test]
    fn clean_text_is_bounded_on_huge_input() {
        let huge = "\u{1b}[1m".to_string() + &"x".repeat(1 << 20);
        let s = clean_text(&huge, MAX_MESSAGE);
        assert_eq!(s.chars().count(), MAX_MESSAGE + 1);
        assert!(s.ends_with('…'));
    }

    #[test]
    fn ids_table() {
        let long = "b".repeat(MAX_ID + 1);
        let cases: &[(&str, bool)] = &[
            ("batch_abc123", true),
            ("bGl0ZWxsbTpjdXN0b20=", true),
            (
                "https://api.anthropic.com/v1/messages/batches/msgbatch_1/results",
                true,
            ),
            ("", false),
            ("batch abc", false),
            ("batch_\u{1b}[2J", false),
            ("id\n", false),
            ("ab\u{202e}c", false),
            (&long, false),
        ];
        for (id, ok) in cases {
            assert_eq!(id_problem(id).is_none(), *ok, "{id:?}");
        }
        assert!(id_problem(&long).unwrap().contains("1025 bytes"));
    }

    #[test]
    fn bodies_are_described() {
        let cases: &[(&str, &str)] = &[
            ("", "an empty body"),
            ("  \n", "an empty body"),
            (
                "<html><head><TITLE>502 Bad\nGateway</TITLE></head><body>nginx</body></html>",
                "an HTML page titled \"502 Bad Gateway\"",
            ),
            (
                "<!DOCTYPE html><html><title>\u{1b}[2JSign in</title>",
                "an HTML page titled \"Sign in\"",
            ),
            (
                "<html><body>oops</body>",
                "an HTML or XML page: <html><body>oops</body>",
            ),
            (
                "<title>never closed",
                "an HTML or XML page: <title>never closed",
            ),
            ("{\"id\": tru", "{\"id\": tru"),
            ("not json\u{1b}]0;x\u{7}", "not json"),
        ];
        for (body, want) in cases {
            assert_eq!(describe_body(body), *want, "{body:?}");
            assert_eq!(is_page(body), !want.starts_with(['{', 'n']), "{body:?}");
        }
        let long = describe_body(&"x".repeat(10_000));
        assert_eq!(long.chars().count(), MAX_EXCERPT + 1);
    }

    #[test]
    fn caps_read_as_people_write_them() {
        assert_eq!(cap_text(MAX_CONTROL_BODY), "8 MiB");
        assert_eq!(cap_text(MAX_ERROR_BODY), "64 KiB");
        assert_eq!(cap_text(100), "100 bytes");
    }

    #[test]
    fn lines_are_read_with_a_cap() {
        let text = b"one\nlonger line here\n\nlast";
        let mut r = io::BufReader::with_capacity(4, &text[..]);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(l) = read_line_capped(&mut r, &mut buf, 6).unwrap() {
            got.push((String::from_utf8(buf.clone()).unwrap(), l));
        }
        assert_eq!(
            got,
            vec![
                ("one".to_string(), Line::Whole),
                ("longer".to_string(), Line::TooLong { len: 16 }),
                (String::new(), Line::Whole),
                ("last".to_string(), Line::Whole),
            ]
        );
    }

    #[test]
    fn a_line_without_end_holds_only_the_cap() {
        // 50 MB of one line through a small buffer: memory stays at the cap.
        struct Endless(u64);
        impl io::Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = (buf.len() as u64).min(self.0) as usize;
                buf[..n].fill(b'x');
                self.0 -= n as u64;
                Ok(n)
            }
        }
        let mut r = io::BufReader::new(Endless(50_000_000));
        let mut buf = Vec::new();
        let l = read_line_capped(&mut r, &mut buf, 1000).unwrap();
        assert_eq!(l, Some(Line::TooLong { len: 50_000_000 }));
        assert_eq!(buf.len(), 1000);
        assert!(buf.capacity() < 100_000);
        assert_eq!(read_line_capped(&mut r, &mut buf, 1000).unwrap(), None);
    }
}
