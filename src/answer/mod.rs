//! `output.parse`: turning a model's answer into the value written to the
//! output. Pure; a parse failure is counted apart from API failures.

use std::sync::Arc;

use regex::Regex;
use serde_json::Value;

use crate::spec::{CheckedSpec, ParseMode};

pub mod schema;

pub use schema::{AnswerSchema, Violation, cell, properties};

/// How to parse answers, built once per job.
#[derive(Debug, Clone)]
pub struct Parser {
    mode: ParseMode,
    labels: Vec<String>,
    pattern: Option<Regex>,
    /// `output.schema`: answers are JSON checked against it.
    schema: Option<Arc<AnswerSchema>>,
}

/// A parsed answer: the text for the output column and, for JSON answers,
/// the value itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub text: String,
    pub json: Option<Value>,
}

impl Parser {
    /// `pattern` is checked when the spec is loaded; an invalid one is an error here.
    /// Private: outside this module a parser comes from `for_spec`, because
    /// one made from `output.parse` alone misses the answer schema (direct
    /// mode's halt policy once counted schema-breaking answers as graded).
    fn new(mode: ParseMode, labels: &[String], pattern: Option<&str>) -> Result<Parser, String> {
        let pattern =
            match (mode, pattern) {
                (ParseMode::Regex, Some(p)) => Some(compile_pattern(p).map_err(|e| {
                    format!("output.pattern is not a valid regular expression: {e}")
                })?),
                (ParseMode::Regex, None) => return Err("parse: regex needs output.pattern".into()),
                _ => None,
            };
        Ok(Parser {
            mode,
            labels: labels.to_vec(),
            pattern,
            schema: None,
        })
    }

    /// The parser of a job's `output` block: with `output.schema`, answers
    /// are JSON validated against it.
    pub fn for_spec(spec: &CheckedSpec) -> Result<Parser, String> {
        let o = spec.output();
        match &spec.schema {
            Some(schema) => {
                let mut p = Parser::new(ParseMode::Json, &[], None)?;
                p.schema = Some(Arc::new(AnswerSchema::new(schema)?));
                Ok(p)
            }
            None => Parser::new(
                o.parse,
                o.labels.as_deref().unwrap_or_default(),
                o.pattern.as_deref(),
            ),
        }
    }

    /// Answers are checked against `output.schema`.
    pub fn has_schema(&self) -> bool {
        self.schema.is_some()
    }

    /// The parsed answer, or why it does not parse (with a class to count
    /// failures by).
    pub fn parse_value(&self, answer: &str) -> Result<Parsed, Violation> {
        if let Some(schema) = &self.schema {
            let v = schema.check(answer)?;
            return Ok(Parsed {
                text: v.to_string(),
                json: Some(v),
            });
        }
        if self.mode == ParseMode::Json {
            let body = strip_fences(answer.trim());
            return serde_json::from_str::<Value>(body)
                .map(|v| Parsed {
                    text: v.to_string(),
                    json: Some(v),
                })
                .map_err(|e| Violation {
                    class: "not JSON".into(),
                    message: format!("the answer is not JSON ({e}): {}", quote(answer.trim())),
                });
        }
        self.parse(answer)
            .map(|text| Parsed { text, json: None })
            .map_err(|message| Violation {
                class: match self.mode {
                    ParseMode::Number => "no number",
                    ParseMode::Label => "not a label",
                    ParseMode::Regex => "pattern does not match",
                    ParseMode::Text | ParseMode::Json => "unparsed",
                }
                .into(),
                message,
            })
    }

    pub fn mode(&self) -> ParseMode {
        self.mode
    }

    /// The value for the output column, or why the answer does not parse.
    pub fn parse(&self, answer: &str) -> Result<String, String> {
        if self.schema.is_some() {
            return self
                .parse_value(answer)
                .map(|p| p.text)
                .map_err(|v| v.message);
        }
        let a = answer.trim();
        match self.mode {
            ParseMode::Text => Ok(a.to_string()),
            ParseMode::Number => {
                first_number(a).ok_or_else(|| format!("no number in the answer {}", quote(a)))
            }
            ParseMode::Label => label_of(&self.labels, a),
            ParseMode::Json => {
                let body = strip_fences(a);
                serde_json::from_str::<serde_json::Value>(body)
                    .map(|v| v.to_string())
                    .map_err(|e| format!("the answer is not JSON ({e}): {}", quote(a)))
            }
            ParseMode::Regex => {
                let re = self.pattern.as_ref().expect("checked in new");
                capture(re, a)
                    .map(String::from)
                    .ok_or_else(|| format!("output.pattern does not match the answer {}", quote(a)))
            }
        }
    }
}

/// `output.pattern` as the parser compiles it. Public so that the simulated
/// provider tries its answers with the very same regex (crate and flags).
pub fn compile_pattern(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(pattern)
}

/// What `parse: regex` takes from an answer (already trimmed): the first
/// capture group, or the whole match; `None` when the pattern does not match.
pub fn capture<'a>(re: &Regex, answer: &'a str) -> Option<&'a str> {
    re.captures(answer)
        .map(|c| c.get(1).or_else(|| c.get(0)).map_or("", |m| m.as_str()))
}

/// What `parse: label` makes of an answer: the one label it is (any case,
/// punctuation around it aside) or names as a whole word. Public so that
/// the simulated provider writes only untidy answers this accepts.
pub fn label_of(labels: &[String], answer: &str) -> Result<String, String> {
    let a = answer.trim();
    let cleaned = a.trim_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace());
    if let Some(l) = labels.iter().find(|l| l.eq_ignore_ascii_case(cleaned)) {
        return Ok(l.clone());
    }
    // One label named as a whole word in a longer answer ("Label: spam.").
    let lower = a.to_lowercase();
    let found: Vec<&String> = labels
        .iter()
        .filter(|l| contains_word(&lower, &l.to_lowercase()))
        .collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!(
            "the answer {} is none of the labels {}",
            quote(a),
            labels.join(", ")
        )),
        many => Err(format!(
            "the answer {} names several labels ({})",
            quote(a),
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

pub(crate) fn quote(a: &str) -> String {
    const MAX: usize = 80;
    if a.chars().count() > MAX {
        format!("{:?}…", a.chars().take(MAX).collect::<String>())
    } else {
        format!("{a:?}")
    }
}

/// `word` occurs in `hay` with no letter or digit right before or after it.
fn contains_word(hay: &str, word: &str) -> bool {
    find_word(hay, word).is_some()
}

/// Where `word` first occurs in `hay` as a whole word: no letter or digit
/// right before or after it.
/// Public for the simulated provider's keyword classifier, which must see
/// a label in a text where the parser would.
pub fn find_word(hay: &str, word: &str) -> Option<usize> {
    if word.is_empty() {
        return None;
    }
    hay.match_indices(word).map(|(i, _)| i).find(|&i| {
        let before = hay[..i].chars().next_back();
        let after = hay[i + word.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// The first number in the text (`7`, `-2.5`, `8.0`, `.5`, `1e5`), as
/// written but for its sign and a bare leading point: `−4` (U+2212, the
/// typographic minus) becomes `-4` and `.75` becomes `0.75`. Before these
/// were read, `.5` was taken for `5`, `-.5` for `5`, `1e5` for `1` and
/// `−4` for `4`, each marked graded.
fn first_number(s: &str) -> Option<String> {
    let chars: Vec<char> = s.chars().collect();
    let digit = |i: usize| chars.get(i).is_some_and(char::is_ascii_digit);
    let mut i = 0;
    while i < chars.len() {
        let minus = matches!(chars[i], '-' | '\u{2212}');
        // Where the digits (or a point before them) start.
        let at = i + usize::from(minus);
        let starts = digit(at) || (chars.get(at) == Some(&'.') && digit(at + 1));
        if !starts {
            i += 1;
            continue;
        }
        let mut out = String::new();
        if minus {
            out.push('-');
        }
        let mut j = at;
        if chars[j] == '.' {
            out.push('0');
        }
        while digit(j) {
            out.push(chars[j]);
            j += 1;
        }
        if chars.get(j) == Some(&'.') && digit(j + 1) {
            out.push('.');
            j += 1;
            while digit(j) {
                out.push(chars[j]);
                j += 1;
            }
        }
        // An exponent: `e` or `E`, a sign maybe, and digits.
        if matches!(chars.get(j), Some('e' | 'E')) {
            let sign = matches!(chars.get(j + 1), Some('-' | '+'));
            let k = j + 1 + usize::from(sign);
            if digit(k) {
                out.push('e');
                if sign {
                    out.push(chars[j + 1]);
                }
                j = k;
                while digit(j) {
                    out.push(chars[j]);
                    j += 1;
                }
            }
        }
        return Some(out);
    }
    None
}

/// Models often wrap JSON in a Markdown code fence.
pub(crate) fn strip_fences(a: &str) -> &str {
    let Some(rest) = a.strip_prefix("```") else {
        return a;
    };
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_alphabetic());
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(mode: ParseMode) -> Parser {
        Parser::new(mode, &["spam".into(), "ham".into()], Some(r"Grade: (\d+)")).unwrap()
    }

    #[test]
    fn table() {
        let cases: &[(ParseMode, &str, Result<&str, ()>)] = &[
            (ParseMode::Text, "  hello \n", Ok("hello")),
            (ParseMode::Number, "7", Ok("7")),
            (ParseMode::Number, "Grade: 8.5/10", Ok("8.5")),
            (ParseMode::Number, "-2 points", Ok("-2")),
            (ParseMode::Number, "10.", Ok("10")),
            (ParseMode::Number, ".5", Ok("0.5")),
            (ParseMode::Number, "-.5", Ok("-0.5")),
            (ParseMode::Number, "Score: .75", Ok("0.75")),
            (ParseMode::Number, "1e5", Ok("1e5")),
            (ParseMode::Number, "2.5e-3 exactly", Ok("2.5e-3")),
            (ParseMode::Number, "3E+2", Ok("3e+2")),
            (ParseMode::Number, "\u{2212}4", Ok("-4")),
            (ParseMode::Number, "3 examples", Ok("3")),
            (ParseMode::Number, "7e", Ok("7")),
            (ParseMode::Number, "3-4", Ok("3")),
            (ParseMode::Number, "Grade: 8. Good.", Ok("8")),
            (ParseMode::Number, "-", Err(())),
            (ParseMode::Number, ". and -", Err(())),
            (ParseMode::Number, "no idea", Err(())),
            (ParseMode::Number, "", Err(())),
            (ParseMode::Label, "Spam", Ok("spam")),
            (ParseMode::Label, "\"ham\".", Ok("ham")),
            (ParseMode::Label, "I think this is spam.", Ok("spam")),
            (ParseMode::Label, "spammy", Err(())),
            (ParseMode::Label, "spam or ham", Err(())),
            (ParseMode::Json, "{\"grade\": 7}", Ok("{\"grade\":7}")),
            (
                ParseMode::Json,
                "```json\n{\"grade\": 7}\n```",
                Ok("{\"grade\":7}"),
            ),
            (ParseMode::Json, "grade 7", Err(())),
            (ParseMode::Regex, "Grade: 9 because", Ok("9")),
            (ParseMode::Regex, "nine", Err(())),
        ];
        for (mode, answer, want) in cases {
            let got = p(*mode).parse(answer);
            match want {
                Ok(w) => assert_eq!(got.as_deref(), Ok(*w), "{mode:?} {answer:?}"),
                Err(()) => assert!(got.is_err(), "{mode:?} {answer:?} gave {got:?}"),
            }
        }
    }

    #[test]
    fn bad_pattern_is_an_error() {
        assert!(Parser::new(ParseMode::Regex, &[], Some("(")).is_err());
        assert!(Parser::new(ParseMode::Regex, &[], None).is_err());
    }
}
