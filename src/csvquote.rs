//! Text after a closing quote in a CSV input: `2,"b<newline>3,c"x`.
//!
//! The csv crate reads RFC 4180 quoting leniently: after the quote that
//! closes a quoted field the field goes on unquoted, so `"b\n3,c"x` is one
//! cell `b\n3,cx` and the line `3,c` silently becomes part of row 2. RFC 4180
//! (section 2, rules 5-7) allows only the delimiter, a line end or the end of
//! the file after a closing quote; anything else means the quoting is not
//! what the writer meant (most often a quote inside a quoted field that was
//! not doubled), and reading on would swallow lines. `QuoteCheck` follows
//! the bytes the parser reads, with the parser's own rules (delimiter `,`,
//! quote `"`, `""` inside quotes, `\r`, `\n` or `\r\n` line ends, a UTF-8
//! byte order mark skipped at the start), and notes the first such quote.
//!
//! A quote in the middle of an unquoted field (`5" screen`, `ab"c`) is
//! left alone, as the csv crate, Python's csv module and spreadsheets do:
//! such a quote is literal text, opens nothing, and cannot swallow a line,
//! so refusing it would turn away common, harmless data.
//!
//! It runs inside the read (the bytes are still in cache) and looks only at
//! quote bytes (`memchr`), so it adds no pass over the file.

/// The UTF-8 byte order mark, which the csv crate skips at the start.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// The first quoted field whose closing quote is followed by something
/// other than a delimiter, a line end or the end of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrayText {
    /// Byte offset of the quote that opened the field.
    pub opened: u64,
    /// Byte offset of the first byte after the closing quote.
    pub at: u64,
    pub byte: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Outside a quoted field (at a field's start or in an unquoted one).
    Outside,
    /// Inside a quoted field opened at this offset.
    Quoted(u64),
    /// Just after a quote inside a quoted field: a second quote makes `""`,
    /// anything else means that quote closed the field.
    AfterQuote(u64),
}

#[derive(Debug, Clone)]
pub struct QuoteCheck {
    state: State,
    /// Bytes fed so far.
    offset: u64,
    /// The last byte fed.
    prev: Option<u8>,
    /// The file's first bytes, to tell a byte order mark.
    head: [u8; 3],
    first: Option<StrayText>,
    /// The field separator (`input.delimiter`, `,` by default).
    delimiter: u8,
}

impl Default for QuoteCheck {
    fn default() -> Self {
        QuoteCheck {
            state: State::Outside,
            offset: 0,
            prev: None,
            head: [0; 3],
            first: None,
            delimiter: b',',
        }
    }
}

impl QuoteCheck {
    /// A check of a file whose fields are separated by `delimiter`.
    pub fn with_delimiter(delimiter: u8) -> Self {
        QuoteCheck {
            delimiter,
            ..QuoteCheck::default()
        }
    }

    /// The next bytes of the file, in order.
    pub fn feed(&mut self, buf: &[u8]) {
        for (i, &b) in buf.iter().enumerate() {
            let at = self.offset + i as u64;
            if at >= 3 {
                break;
            }
            self.head[at as usize] = b;
        }
        let mut i = 0;
        while i < buf.len() {
            match self.state {
                State::Outside => match memchr::memchr(b'"', &buf[i..]) {
                    None => i = buf.len(),
                    Some(k) => {
                        let p = i + k;
                        let at = self.offset + p as u64;
                        let before = if p > 0 { Some(buf[p - 1]) } else { self.prev };
                        let field_start = match before {
                            None | Some(b'\r' | b'\n') => true,
                            Some(d) if d == self.delimiter => true,
                            Some(_) => at == 3 && self.head == BOM,
                        };
                        if field_start {
                            self.state = State::Quoted(at);
                        }
                        i = p + 1;
                    }
                },
                State::Quoted(opened) => match memchr::memchr(b'"', &buf[i..]) {
                    None => i = buf.len(),
                    Some(k) => {
                        self.state = State::AfterQuote(opened);
                        i += k + 1;
                    }
                },
                State::AfterQuote(opened) => {
                    let b = buf[i];
                    self.state = match b {
                        b'"' => State::Quoted(opened),
                        b'\r' | b'\n' => State::Outside,
                        d if d == self.delimiter => State::Outside,
                        _ => {
                            if self.first.is_none() {
                                self.first = Some(StrayText {
                                    opened,
                                    at: self.offset + i as u64,
                                    byte: b,
                                });
                            }
                            // The parser reads on unquoted; so does this.
                            State::Outside
                        }
                    };
                    i += 1;
                }
            }
        }
        if let Some(&last) = buf.last() {
            self.prev = Some(last);
        }
        self.offset += buf.len() as u64;
    }

    /// The first stray text seen so far, if any.
    pub fn first(&self) -> Option<StrayText> {
        self.first
    }
}

/// The message for stray text whose field opened on `open_line` (of row
/// `row`, or the header when `None`) and closed on `close_line`. `after`
/// is the text from the stray byte on (a few characters, for the message).
pub fn message(row: Option<u64>, close_line: u64, open_line: u64, after: &str) -> String {
    let what = match row {
        Some(n) => format!("row {n}"),
        None => "the header".to_string(),
    };
    let closed = if close_line > open_line {
        format!("is closed on line {close_line} and")
    } else {
        "is closed and".to_string()
    };
    let swallowed = if close_line > open_line {
        format!(": lines {open_line} to {close_line} would be read as one cell")
    } else {
        String::new()
    };
    format!(
        "{what}: the quoted field that starts on this line {closed} followed by `{after}` instead of a comma or a line end{swallowed}. Inside a quoted field write a quote twice (\"\"), and keep all of the field's text inside the quotes"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &[u8]) -> Option<(u64, u64)> {
        let mut c = QuoteCheck::default();
        c.feed(text);
        c.first().map(|s| (s.opened, s.at))
    }

    #[test]
    fn the_closing_quote_must_end_the_field() {
        // (text, where the quote opened and the stray byte is)
        type Case = (&'static [u8], Option<(u64, u64)>);
        let cases: &[Case] = &[
            (b"a,b\n", None),
            (b"a,\"b\"\n", None),
            (b"a,\"b\",c\n", None),
            (b"a,\"b\"\r\nc,d\r\n", None),
            (b"a,\"b\"\rc,d", None),
            (b"a,\"b\"", None),
            (b"\"\",\"\"\n", None),
            (b"a,\"say \"\"hi\"\"\"\n", None),
            (b"a,\"b\nc\"\n", None),
            // A quote inside an unquoted field is literal text: allowed.
            (b"a,5\" screen\n", None),
            (b"a,ab\"c\n", None),
            (b"a,ab\"c\"d\n", None),
            (b"a,b\"\"\n", None),
            // A field that starts with a space is unquoted: its quotes are text.
            (b"a, \"b\"x\n", None),
            // Text after the closing quote.
            (b"a,\"b\"x\n", Some((2, 5))),
            (b"2,\"b\n3,c\"x\n4,d\n", Some((2, 9))),
            (b"a,\"b\" \n", Some((2, 5))),
            (b"\"a\"b,c\n", Some((0, 3))),
            (b"a,\"b\"\"c\"d\n", Some((2, 8))),
            (b"a,\"x\"y,\"p\"q\n", Some((2, 5))),
            // A byte order mark, then a quoted header cell.
            (b"\xEF\xBB\xBF\"id\"x,b\n", Some((3, 7))),
            (b"\xEF\xBB\xBF\"id\",b\n", None),
            // An unclosed quote is not this check's (input.rs finds it).
            (b"a,\"b\nc\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(check(text), *want, "{:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn any_split_of_the_bytes_gives_the_same_answer() {
        let text = b"\xEF\xBB\xBF\"h\",x\n1,\"a\"\"\nb\",c\"d\"\n2,\"e\"f\n";
        let whole = check(text);
        assert_eq!(whole, Some((26, 29)));
        for cut in 0..=text.len() {
            for step in [1, 2, 3, 7] {
                let mut c = QuoteCheck::default();
                let (head, tail) = text.split_at(cut);
                c.feed(head);
                for piece in tail.chunks(step) {
                    c.feed(piece);
                }
                assert_eq!(
                    c.first().map(|s| (s.opened, s.at)),
                    whole,
                    "cut {cut} step {step}"
                );
            }
        }
    }
}
