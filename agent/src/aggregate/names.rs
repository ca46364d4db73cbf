//! Names for syscall numbers and errnos (`x86_64`).

#[path = "names_table.rs"]
mod table;

use table::{ERRNOS, SYSCALLS};

fn lookup(table: &[(u32, &'static str)], key: u32) -> Option<&'static str> {
    table
        .binary_search_by_key(&key, |&(k, _)| k)
        .ok()
        .map(|i| table[i].1)
}

/// Name of syscall `nr`, or `syscall_<nr>` for numbers this table does not
/// know (a newer kernel), so that nothing is hidden.
#[must_use]
pub fn syscall_name(nr: u32) -> String {
    lookup(SYSCALLS, nr).map_or_else(|| format!("syscall_{nr}"), str::to_owned)
}

/// Number of the syscall called `name` (also accepts `syscall_<nr>`).
#[must_use]
pub fn syscall_number(name: &str) -> Option<u32> {
    if let Some(nr) = name.strip_prefix("syscall_").and_then(|n| n.parse().ok()) {
        return Some(nr);
    }
    SYSCALLS.iter().find(|(_, n)| *n == name).map(|&(nr, _)| nr)
}

/// Closest known syscall names to a misspelled one (shared prefix), for
/// "did you mean" hints.
#[must_use]
pub fn similar_syscalls(name: &str) -> Vec<&'static str> {
    let prefix: String = name.chars().take(3).collect();
    SYSCALLS
        .iter()
        .map(|&(_, n)| n)
        .filter(|n| !prefix.is_empty() && n.starts_with(&prefix))
        .take(5)
        .collect()
}

/// Name of errno `errno` (`EAGAIN`, ...), or `E<number>` when unknown.
#[must_use]
pub fn errno_name(errno: u32) -> String {
    lookup(ERRNOS, errno).map_or_else(|| format!("E{errno}"), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both tables are sorted (binary search depends on it) and unique.
    #[test]
    fn tables_are_sorted() {
        assert!(SYSCALLS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(ERRNOS.windows(2).all(|w| w[0].0 < w[1].0));
    }

    /// Well-known and new syscalls resolve both ways; unknown ones do not hide.
    #[test]
    fn syscall_names() {
        assert_eq!(syscall_name(0), "read");
        assert_eq!(syscall_name(110), "getppid");
        assert_eq!(syscall_name(257), "openat");
        assert_eq!(syscall_name(335), "uretprobe");
        assert_eq!(syscall_name(462), "mseal");
        assert_eq!(syscall_name(999), "syscall_999");
        assert_eq!(syscall_number("getppid"), Some(110));
        assert_eq!(syscall_number("syscall_999"), Some(999));
        assert_eq!(syscall_number("getpid_typo"), None);
        assert!(similar_syscalls("getpidd").contains(&"getpid"));
    }

    /// Errno names, including unknown numbers.
    #[test]
    fn errno_names() {
        assert_eq!(errno_name(2), "ENOENT");
        assert_eq!(errno_name(11), "EAGAIN");
        assert_eq!(errno_name(4000), "E4000");
    }
}
