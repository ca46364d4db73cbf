//! Stack counts as read from the kernel, before symbolization.

use std::collections::HashMap;

/// One distinct (process, thread, user stack, kernel stack, labels) and its
/// values (e.g. CPU: samples and nanoseconds; off-CPU: blocks and blocked
/// nanoseconds). Frames are instruction pointers, leaf first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawStack {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub user: Vec<u64>,
    pub kernel: Vec<u64>,
    /// One value per sample type of the profile being built.
    pub values: Vec<i64>,
    /// Extra string labels (beyond pid and comm), e.g. the thread state.
    pub labels: Vec<(String, String)>,
}

/// Identity of a stack for merging: everything but the count.
type StackId = (u32, u32, String, Vec<u64>, Vec<u64>, Vec<(String, String)>);

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
            stack.labels.clone(),
        );
        if let Some(&i) = self.index.get(&id) {
            let merged = &mut self.stacks[i].values;
            for (m, v) in merged.iter_mut().zip(&stack.values) {
                *m += v;
            }
        } else {
            self.index.insert(id, self.stacks.len());
            self.stacks.push(stack);
        }
    }

    #[must_use]
    pub fn stacks(&self) -> &[RawStack] {
        &self.stacks
    }

    /// Sum of value `index` over all stacks.
    #[must_use]
    pub fn total(&self, index: usize) -> i64 {
        self.stacks.iter().filter_map(|s| s.values.get(index)).sum()
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

    fn stack(pid: u32, user: &[u64], count: i64) -> RawStack {
        RawStack {
            pid,
            tid: pid,
            comm: "w".into(),
            user: user.to_vec(),
            kernel: vec![],
            values: vec![count, count * 10],
            labels: vec![],
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
        assert_eq!(counts.stacks()[0].values, [7, 70]);
        assert_eq!(counts.total(0), 12);
        assert_eq!(counts.total(1), 120);
    }
}
