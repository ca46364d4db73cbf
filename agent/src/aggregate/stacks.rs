//! Stack counts as read from the kernel, before symbolization.

use std::collections::HashMap;

/// One distinct (process, thread, user stack, kernel stack) and how often it
/// was sampled. Frames are instruction pointers, leaf first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawStack {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub user: Vec<u64>,
    pub kernel: Vec<u64>,
    pub count: u64,
}

/// Identity of a stack for merging: everything but the count.
type StackId = (u32, u32, String, Vec<u64>, Vec<u64>);

/// Stacks merged by identity. Two kernel keys can resolve to the same frames
/// (e.g. one stack id reused after a collision); merging keeps one sample.
#[derive(Debug, Default)]
pub struct StackCounts {
    index: HashMap<StackId, usize>,
    stacks: Vec<RawStack>,
}

impl StackCounts {
    pub fn add(&mut self, stack: RawStack) {
        let id = (
            stack.pid,
            stack.tid,
            stack.comm.clone(),
            stack.user.clone(),
            stack.kernel.clone(),
        );
        if let Some(&i) = self.index.get(&id) {
            self.stacks[i].count += stack.count;
        } else {
            self.index.insert(id, self.stacks.len());
            self.stacks.push(stack);
        }
    }

    #[must_use]
    pub fn stacks(&self) -> &[RawStack] {
        &self.stacks
    }

    /// Sum of all counts.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.stacks.iter().map(|s| s.count).sum()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(pid: u32, user: &[u64], count: u64) -> RawStack {
        RawStack {
            pid,
            tid: pid,
            comm: "w".into(),
            user: user.to_vec(),
            kernel: vec![],
            count,
        }
    }

    /// Identical stacks merge and their counts add; different ones do not.
    #[test]
    fn merges_identical_stacks() {
        let mut counts = StackCounts::default();
        counts.add(stack(1, &[1, 2], 3));
        counts.add(stack(1, &[1, 2], 4));
        counts.add(stack(2, &[1, 2], 5));
        assert_eq!(counts.len(), 2);
        assert_eq!(counts.stacks()[0].count, 7);
        assert_eq!(counts.total(), 12);
    }
}
