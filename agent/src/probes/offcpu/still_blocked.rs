//! Stacks of threads still blocked when a capture ends. They never came
//! back, so the BPF program never walked their stacks; but nothing of a
//! blocked thread moves while it waits, so they are read now from outside:
//! the kernel stack from `/proc/<pid>/task/<tid>/stack`, the user stack by
//! walking frame pointers through the process's memory from the registers
//! saved at switch-out, as the kernel's own walker would have.

use super::kallsyms::Kallsyms;

/// Frames the kernel's user-stack walker would keep (`PERF_MAX_STACK_DEPTH`).
const MAX_FRAMES: usize = 127;
/// `PF_KTHREAD` in `/proc/<pid>/stat` field 9: no user stack to walk.
const PF_KTHREAD: u64 = 0x0020_0000;

/// A blocked thread's stacks and name, innermost frames first.
pub struct BlockedThread {
    pub comm: String,
    pub user: Vec<u64>,
    pub kernel: Vec<u64>,
}

/// Reads what a blocked thread shows now; empty parts where the thread
/// has gone or a file is unreadable.
#[must_use]
pub fn read(kallsyms: &Kallsyms, pid: u32, tid: u32, (ip, bp): (u64, u64)) -> BlockedThread {
    let task = format!("/proc/{pid}/task/{tid}");
    let comm = std::fs::read_to_string(format!("{task}/comm"))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string(format!("{task}/stack"))
        .map(|text| kallsyms.resolve_proc_stack(&text))
        .unwrap_or_default();
    let is_kthread = std::fs::read_to_string(format!("{task}/stat"))
        .ok()
        .and_then(|s| stat_flags(&s))
        .is_none_or(|f| f & PF_KTHREAD != 0);
    let user = if is_kthread {
        Vec::new()
    } else {
        walk_user(|addr| read_pair(pid, addr), ip, bp)
    };
    BlockedThread { comm, user, kernel }
}

/// Field 9 (`flags`) of a `stat` line; the name in parentheses may hold
/// spaces and parentheses itself, so fields are counted after the last ')'.
fn stat_flags(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(6)?.parse().ok()
}

/// `ip`, then the return address of each frame on the frame-pointer chain
/// from `bp`; stops at a zero return address, a chain that does not move
/// up the stack (corrupt or frameless), or an unreadable frame.
fn walk_user(read: impl Fn(u64) -> Option<(u64, u64)>, ip: u64, mut bp: u64) -> Vec<u64> {
    let mut frames = Vec::new();
    if ip == 0 {
        return frames;
    }
    frames.push(ip);
    while frames.len() < MAX_FRAMES && bp != 0 && bp.is_multiple_of(8) {
        let Some((next_bp, ret)) = read(bp) else {
            break;
        };
        if ret == 0 {
            break;
        }
        frames.push(ret);
        if next_bp <= bp {
            break;
        }
        bp = next_bp;
    }
    frames
}

/// The saved frame pointer and return address at `addr` in `pid`.
fn read_pair(pid: u32, addr: u64) -> Option<(u64, u64)> {
    let mut buf = [0u64; 2];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: 16,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: 16,
    };
    // SAFETY: one local iovec over `buf`, which we own and which outlives
    // the call; the remote address is only read by the kernel, which checks
    // it against the target's address space.
    let n = unsafe {
        libc::process_vm_readv(
            pid as libc::pid_t,
            &raw const local,
            1,
            &raw const remote,
            1,
            0,
        )
    };
    (n == 16).then_some((buf[0], buf[1]))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn walks_the_chain_until_it_stops_moving_up() {
        let memory: HashMap<u64, (u64, u64)> = HashMap::from([
            (0x1000, (0x1040, 0xaa)),
            (0x1040, (0x1080, 0xbb)),
            (0x1080, (0x1000, 0xcc)),
        ]);
        let frames = walk_user(|a| memory.get(&a).copied(), 0x99, 0x1000);
        assert_eq!(
            frames,
            vec![0x99, 0xaa, 0xbb, 0xcc],
            "a loop back down the stack ends the walk"
        );
        assert_eq!(
            walk_user(|a| memory.get(&a).copied(), 0x99, 0x2000),
            vec![0x99],
            "unreadable frame"
        );
        assert_eq!(
            walk_user(|a| memory.get(&a).copied(), 0x99, 0x1001),
            vec![0x99],
            "misaligned frame pointer"
        );
        assert!(walk_user(|a| memory.get(&a).copied(), 0, 0x1000).is_empty());
        let zero_ret = HashMap::from([(0x1000, (0x1040, 0))]);
        assert_eq!(
            walk_user(|a| zero_ret.get(&a).copied(), 0x99, 0x1000),
            vec![0x99]
        );
    }

    #[test]
    fn stat_flags_survive_odd_names() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0";
        assert_eq!(stat_flags(line), Some(4_194_560));
        assert_eq!(stat_flags("garbage"), None);
    }

    /// This process's own memory, walked through `process_vm_readv`: a
    /// word pair we put on the heap reads back.
    #[test]
    fn reads_pairs_from_a_live_process() {
        let pair: Box<[u64; 2]> = Box::new([0x1234, 0x5678]);
        let addr = pair.as_ptr() as u64;
        assert_eq!(read_pair(std::process::id(), addr), Some((0x1234, 0x5678)));
        assert_eq!(read_pair(std::process::id(), 0), None);
    }
}
