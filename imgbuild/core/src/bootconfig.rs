//! Editors for the boot configuration files that usually get patched on a boot partition:
//! [`cmdline_append`] (the kernel command line, `cmdline.txt`) and [`config_txt_set`] (the
//! Raspberry Pi firmware's `config.txt`). Pure text in, text out: where the files live (FAT
//! boot partition, or a copy in the root file system kept across upgrades) is the caller's
//! business.

// ---------------------------------------------------------------------------------------------
// Kernel command line
// ---------------------------------------------------------------------------------------------

/// Parameters that the kernel or systemd accept several times, each adding something: a new
/// value is added beside existing ones instead of replacing them.
const MULTI_VALUED_PARAMS: &[&str] = &["console", "systemd.wants", "systemd.mask"];

/// Appends `tokens` to the kernel command line `cmdline`, idempotently.
///
/// Rules:
/// - The result is one line: all lines of `cmdline` are joined, tokens separated by one space;
///   it ends with a newline if `cmdline` did. Double-quoted parts (`foo="a b"`) stay one token.
/// - Each entry of `tokens` may hold several whitespace-separated tokens.
/// - A token already present is not added again.
/// - A `key=value` token replaces the first existing token with the same key (the part before
///   the first `=`) in place, and later tokens with that key are dropped (the kernel would let
///   the last one win anyway) — except for keys given several times on purpose (`console`,
///   `systemd.wants`, `systemd.mask`), where the token is added beside the others.
/// - Other tokens are appended at the end, but before a `--` (what follows `--` belongs to
///   init and is neither matched nor changed).
pub fn cmdline_append(cmdline: &str, tokens: &[String]) -> String {
    let mut kernel = split_cmdline(cmdline);
    let init = match kernel.iter().position(|t| t == "--") {
        Some(at) => kernel.split_off(at),
        None => Vec::new(),
    };
    for token in tokens.iter().flat_map(|t| split_cmdline(t)) {
        add_cmdline_token(&mut kernel, token);
    }
    kernel.extend(init);
    let mut line = kernel.join(" ");
    if cmdline.ends_with('\n') {
        line.push('\n');
    }
    line
}

/// Adds one token to the kernel part of a command line following [`cmdline_append`]'s rules.
fn add_cmdline_token(kernel: &mut Vec<String>, token: String) {
    if kernel.contains(&token) {
        return;
    }
    let key = cmdline_key(&token);
    if !token.contains('=') || MULTI_VALUED_PARAMS.contains(&key) {
        kernel.push(token);
        return;
    }
    match kernel
        .iter()
        .position(|t| t.contains('=') && cmdline_key(t) == key)
    {
        Some(first) => {
            let mut index = 0;
            kernel.retain(|t| {
                let keep = index <= first || !(t.contains('=') && cmdline_key(t) == key);
                index += 1;
                keep
            });
            kernel[first] = token;
        }
        None => kernel.push(token),
    }
}

/// The parameter name of a command-line token: the part before the first `=`.
fn cmdline_key(token: &str) -> &str {
    token.split_once('=').map_or(token, |(key, _)| key)
}

/// Splits a command line into tokens at whitespace outside double quotes.
fn split_cmdline(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in text.chars() {
        if c == '"' {
            quoted = !quoted;
        }
        if c.is_whitespace() && !quoted {
            if !current.is_empty() {
                tokens.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

// ---------------------------------------------------------------------------------------------
// Raspberry Pi config.txt
// ---------------------------------------------------------------------------------------------

/// Keys that config.txt takes several times, each line adding something (`dtoverlay=a` and
/// `dtoverlay=b` load both): for these a line is only added if the same line is not there yet.
const CONFIG_TXT_ADDITIVE_KEYS: &[&str] = &["dtoverlay", "dtparam", "include", "gpio"];

/// Sets `key=value` lines in a Raspberry Pi `config.txt`, idempotently.
///
/// Rules:
/// - Lines before any section and lines in `[all]` sections are unconditional; lines under any
///   other filter (`[pi4]`, `[cm4]`, `[none]`, …) are conditional and never touched (they may
///   still override the value on the boards they select).
/// - Every uncommented unconditional `key=…` line (spaces around `key` allowed) is rewritten in
///   place as `key=value`.
/// - If there is none, `key=value` is appended at the end of the file; if the file ends inside
///   a conditional section, an `[all]` line is added first.
/// - For keys that add rather than set (`dtoverlay`, `dtparam`, `include`, `gpio`), nothing is
///   replaced: the line is appended unless the same unconditional `key=value` line exists.
/// - Comments, other lines and line endings (LF or CRLF) are kept; the result ends with a line
///   ending if anything was appended. Line breaks inside keys or values become spaces.
pub fn config_txt_set(config: &str, pairs: &[(String, String)]) -> String {
    let eol = if config.contains("\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    let mut lines: Vec<String> = config.lines().map(str::to_string).collect();
    let ends_with_eol = config.ends_with('\n');
    let mut appended = false;
    for (key, value) in pairs {
        let key = one_line(key);
        let key = key.trim();
        let line = format!("{key}={}", one_line(value));
        appended |= set_config_line(&mut lines, key, &line);
    }
    let mut text = lines.join(eol);
    if (ends_with_eol || appended) && !lines.is_empty() {
        text.push_str(eol);
    }
    text
}

/// Applies one `key=value` to the lines of a config.txt; returns whether a line was appended.
fn set_config_line(lines: &mut Vec<String>, key: &str, line: &str) -> bool {
    let unconditional: Vec<usize> = unconditional_lines(lines)
        .into_iter()
        .filter(|&i| config_key(&lines[i]) == Some(key))
        .collect();
    let additive = CONFIG_TXT_ADDITIVE_KEYS.contains(&key);
    if additive && unconditional.iter().any(|&i| lines[i].trim() == line) {
        return false;
    }
    if !additive && !unconditional.is_empty() {
        for i in unconditional {
            line.clone_into(&mut lines[i]);
        }
        return false;
    }
    if ends_in_conditional_section(lines) {
        lines.push("[all]".to_string());
    }
    lines.push(line.to_string());
    true
}

/// Indices of the lines that apply to every board: before any section or inside `[all]`.
fn unconditional_lines(lines: &[String]) -> Vec<usize> {
    let mut in_all = true;
    let mut result = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match section_name(line) {
            Some(name) => in_all = name.eq_ignore_ascii_case("all"),
            None if in_all => result.push(i),
            None => {}
        }
    }
    result
}

/// Whether the last section header of the file is a conditional one.
fn ends_in_conditional_section(lines: &[String]) -> bool {
    lines
        .iter()
        .rev()
        .find_map(|l| section_name(l))
        .is_some_and(|name| !name.eq_ignore_ascii_case("all"))
}

/// The filter name of a `[section]` line.
fn section_name(line: &str) -> Option<&str> {
    let trimmed = line.trim();
    trimmed
        .strip_prefix('[')?
        .split_once(']')
        .map(|(name, _)| name.trim())
}

/// The key of an uncommented `key=value` line.
fn config_key(line: &str) -> Option<&str> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('#') || trimmed.starts_with('[') {
        return None;
    }
    trimmed.split_once('=').map(|(key, _)| key.trim())
}

/// `text` with line breaks replaced by spaces, so one value stays one line.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cmdline_appends_once_and_stays_one_line() {
        let base = "console=serial0,115200 console=tty1 root=PARTUUID=1-02 rootwait\n";
        let once = cmdline_append(base, &strings(&["quiet", "systemd.run=/x.sh"]));
        assert_eq!(once, "console=serial0,115200 console=tty1 root=PARTUUID=1-02 rootwait quiet systemd.run=/x.sh\n");
        assert_eq!(
            cmdline_append(&once, &strings(&["quiet", "systemd.run=/x.sh"])),
            once
        );
        assert_eq!(once.lines().count(), 1);
        let no_newline = cmdline_append("a b", &strings(&["c"]));
        assert_eq!(no_newline, "a b c");
    }

    #[test]
    fn cmdline_replaces_keys_but_keeps_multi_valued_ones() {
        let base = "root=/dev/sda2 quiet root=/dev/sdb1 console=tty1\n";
        let out = cmdline_append(base, &strings(&["root=LABEL=RASPIROOT", "console=ttyAMA0"]));
        assert_eq!(
            out,
            "root=LABEL=RASPIROOT quiet console=tty1 console=ttyAMA0\n"
        );
        assert_eq!(
            cmdline_append(&out, &strings(&["root=LABEL=RASPIROOT console=ttyAMA0"])),
            out
        );
    }

    #[test]
    fn cmdline_joins_lines_keeps_quotes_and_init_arguments() {
        let base = "a=1\nb=\"x  y\" -- single init=1\n";
        let out = cmdline_append(base, &strings(&["init=/sbin/x", "b=2"]));
        assert_eq!(out, "a=1 b=2 init=/sbin/x -- single init=1\n");
        let quoted = cmdline_append("c=\"p q\"", &strings(&["d"]));
        assert_eq!(quoted, "c=\"p q\" d");
        assert_eq!(cmdline_append("", &strings(&["x"])), "x");
    }

    #[test]
    fn config_txt_replaces_in_place_and_is_idempotent() {
        let base = "# comment\narm_64bit=0\n[pi4]\narm_64bit=0\n[all]\nenable_uart=0\n";
        let out = config_txt_set(base, &pairs(&[("arm_64bit", "1"), ("enable_uart", "1")]));
        assert_eq!(
            out,
            "# comment\narm_64bit=1\n[pi4]\narm_64bit=0\n[all]\nenable_uart=1\n"
        );
        assert_eq!(
            config_txt_set(&out, &pairs(&[("arm_64bit", "1"), ("enable_uart", "1")])),
            out
        );
    }

    #[test]
    fn config_txt_appends_under_all_when_file_ends_in_a_filter() {
        let base = "#enable_uart=1\n[pi4]\nenable_uart=0\n";
        let out = config_txt_set(base, &pairs(&[("enable_uart", "1")]));
        assert_eq!(
            out,
            "#enable_uart=1\n[pi4]\nenable_uart=0\n[all]\nenable_uart=1\n"
        );
        assert_eq!(config_txt_set(&out, &pairs(&[("enable_uart", "1")])), out);
        let plain = config_txt_set("a=1", &pairs(&[("b", "2")]));
        assert_eq!(plain, "a=1\nb=2\n");
        assert_eq!(config_txt_set("", &pairs(&[("b", "2")])), "b=2\n");
    }

    #[test]
    fn config_txt_adds_overlays_beside_others_and_keeps_crlf() {
        let base = "dtoverlay=vc4-kms-v3d\r\n[cm4]\r\notg_mode=1\r\n";
        let out = config_txt_set(
            base,
            &pairs(&[("dtoverlay", "dwc2"), ("dtoverlay", "vc4-kms-v3d")]),
        );
        assert_eq!(
            out,
            "dtoverlay=vc4-kms-v3d\r\n[cm4]\r\notg_mode=1\r\n[all]\r\ndtoverlay=dwc2\r\n"
        );
        assert_eq!(config_txt_set(&out, &pairs(&[("dtoverlay", "dwc2")])), out);
        let injected = config_txt_set("", &pairs(&[("a", "1\nb=2")]));
        assert_eq!(injected.lines().count(), 1);
    }
}
