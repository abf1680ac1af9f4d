//! Splitting absolute paths inside the file system into directory-entry names.

/// Longest directory-entry name ext2/3/4 can store.
const NAME_MAX: usize = 255;

/// The names of an absolute path: empty components and `.` are dropped, `..` is kept (it is
/// resolved through the on-disk `..` entries). `/` gives no names.
pub(crate) fn components(path: &str) -> Result<Vec<&[u8]>, String> {
    if !path.starts_with('/') {
        return Err("the path must be absolute (start with '/')".to_owned());
    }
    if path.contains('\0') {
        return Err("the path contains a NUL byte".to_owned());
    }
    let names: Vec<&[u8]> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::as_bytes)
        .collect();
    if let Some(long) = names.iter().find(|n| n.len() > NAME_MAX) {
        return Err(format!(
            "the name '{}' is longer than {NAME_MAX} bytes",
            String::from_utf8_lossy(long)
        ));
    }
    Ok(names)
}

/// Splits an absolute path into its parent's names and its last name. The last name must be a
/// real entry name (not `/`, `.` or `..`).
pub(crate) fn split_last(path: &str) -> Result<(Vec<&[u8]>, &[u8]), String> {
    let mut names = components(path)?;
    match names.pop() {
        Some(last) if last != b".." => Ok((names, last)),
        _ => Err("the path must name an entry (not '/', '.' or '..')".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_skip_empty_and_dot() {
        let names = components("//usr/./lib//x/").unwrap();
        assert_eq!(names, vec![&b"usr"[..], b"lib", b"x"]);
        assert!(components("/").unwrap().is_empty());
    }

    #[test]
    fn rejects_relative_nul_and_long_names() {
        assert!(components("usr/lib").is_err());
        assert!(components("/a\0b").is_err());
        assert!(components(&format!("/{}", "x".repeat(256))).is_err());
        assert!(components(&format!("/{}", "x".repeat(255))).is_ok());
    }

    #[test]
    fn split_last_needs_a_name() {
        let (parent, last) = split_last("/etc/hosts").unwrap();
        assert_eq!(parent, vec![&b"etc"[..]]);
        assert_eq!(last, b"hosts");
        assert!(split_last("/").is_err());
        assert!(split_last("/etc/..").is_err());
    }
}
