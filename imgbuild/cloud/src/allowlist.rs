//! The device allowlist: which serial numbers may stay in the fleet.
//!
//! Format: one serial number a line; `#` starts a comment (a whole line or after a serial);
//! blank lines are ignored; surrounding whitespace is trimmed. A serial is 1-128 characters of
//! `A-Z a-z 0-9 - _ :` (the characters AWS IoT allows in thing names) and is compared exactly
//! (case-sensitive). Duplicates and bad characters are errors that name every offending line.

use std::path::Path;

use crate::error::{bail, Context, Result};

/// Longest serial accepted (the AWS IoT thing-name limit).
pub const MAX_SERIAL_LEN: usize = 128;

/// A validated allowlist: serial numbers in file order, each once.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Allowlist {
    serials: Vec<String>,
}

impl Allowlist {
    /// Parses allowlist text; `origin` (usually the file name) prefixes the error.
    ///
    /// All problems are reported at once, one line: `ORIGIN: line 3: ...; line 7: ...`.
    pub fn parse(text: &str, origin: &str) -> Result<Allowlist> {
        let mut serials: Vec<(String, usize)> = Vec::new();
        let mut problems = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            if let Some(problem) = serial_problem(content) {
                problems.push(format!("line {line_no}: {problem}"));
            } else if let Some((_, first)) = serials.iter().find(|(s, _)| s == content) {
                problems.push(format!(
                    "line {line_no}: duplicate serial {content:?} (first on line {first})"
                ));
            } else {
                serials.push((content.to_owned(), line_no));
            }
        }
        if !problems.is_empty() {
            bail!("{origin}: invalid allowlist: {}", problems.join("; "));
        }
        Ok(Allowlist {
            serials: serials.into_iter().map(|(s, _)| s).collect(),
        })
    }

    /// Reads and parses an allowlist file.
    pub fn read(path: &Path) -> Result<Allowlist> {
        let text = std::fs::read_to_string(path)
            .context(|| format!("{}: cannot read the allowlist", path.display()))?;
        Allowlist::parse(&text, &path.display().to_string())
    }

    /// The serial numbers, in file order.
    pub fn serials(&self) -> &[String] {
        &self.serials
    }

    /// Whether `serial` is listed.
    pub fn contains(&self, serial: &str) -> bool {
        self.serials.iter().any(|s| s == serial)
    }
}

/// What is wrong with a serial, if anything.
fn serial_problem(serial: &str) -> Option<String> {
    if let Some(bad) = serial
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':')))
    {
        return Some(format!(
            "bad character {bad:?} in {serial:?} (allowed: A-Z a-z 0-9 - _ :; one serial per line)"
        ));
    }
    if serial.len() > MAX_SERIAL_LEN {
        return Some(format!(
            "serial of {} characters is longer than {MAX_SERIAL_LEN}",
            serial.len()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_blanks_and_whitespace_are_ignored() {
        let text = "# fleet A\n\n  10000000abcdef01  \nSN-2 # spare unit\r\n\t\n";
        let list = Allowlist::parse(text, "a.txt").unwrap();
        assert_eq!(list.serials(), ["10000000abcdef01", "SN-2"]);
        assert!(list.contains("SN-2"));
        assert!(!list.contains("sn-2"));
    }

    #[test]
    fn every_problem_is_reported_with_its_line_number_on_one_line() {
        let text = "abc\nab c\nabc\nx/y\nok\n\u{e9}t\u{e9}\n";
        let err = Allowlist::parse(text, "allow.txt").unwrap_err().to_string();
        assert!(!err.contains('\n'));
        assert!(err.starts_with("allow.txt: invalid allowlist: "), "{err}");
        assert!(
            err.contains("line 2: bad character ' ' in \"ab c\""),
            "{err}"
        );
        assert!(
            err.contains("line 3: duplicate serial \"abc\" (first on line 1)"),
            "{err}"
        );
        assert!(err.contains("line 4: bad character '/'"), "{err}");
        assert!(err.contains("line 6: bad character '\u{e9}'"), "{err}");
        assert!(!err.contains("line 5"), "{err}");
    }

    #[test]
    fn overlong_serials_are_rejected() {
        let long = "a".repeat(MAX_SERIAL_LEN + 1);
        let err = Allowlist::parse(&long, "x").unwrap_err().to_string();
        assert!(err.contains("line 1: serial of 129 characters"), "{err}");
        assert!(Allowlist::parse(&"a".repeat(MAX_SERIAL_LEN), "x").is_ok());
    }

    #[test]
    fn garbage_input_never_panics() {
        for text in ["\0\0\0", "#", "####\n#", "\u{feff}abc", "a\u{0}b", "\r\r\r"] {
            let _ = Allowlist::parse(text, "g");
        }
        assert!(Allowlist::parse("", "e").unwrap().serials().is_empty());
    }
}
