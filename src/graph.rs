//! The step graph: petgraph construction from resolved dependencies, cycle detection,
//! execution waves, ancestor sets, and Mermaid/DOT output.

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

/// A DAG (or, before checking, a graph) of steps. Node `i` is step `i` of the file; an
/// edge `a -> b` means `b` needs `a`.
#[derive(Debug, Clone)]
pub struct StepGraph {
    graph: DiGraph<(), ()>,
    deps: Vec<Vec<usize>>,
}

impl StepGraph {
    /// `deps[i]` are the indices of the steps step `i` needs.
    pub fn new(deps: Vec<Vec<usize>>) -> Self {
        let n = deps.len();
        let mut graph = DiGraph::with_capacity(n, deps.iter().map(Vec::len).sum());
        for _ in 0..n {
            graph.add_node(());
        }
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                graph.add_edge(NodeIndex::new(d), NodeIndex::new(i), ());
            }
        }
        StepGraph { graph, deps }
    }

    pub fn len(&self) -> usize {
        self.deps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deps.is_empty()
    }

    pub fn deps(&self, step: usize) -> &[usize] {
        &self.deps[step]
    }

    /// Steps that need `step`.
    pub fn dependents(&self, step: usize) -> impl Iterator<Item = usize> + '_ {
        self.graph
            .neighbors_directed(NodeIndex::new(step), petgraph::Direction::Outgoing)
            .map(|n| n.index())
    }

    /// Every cycle (one per strongly connected component of two or more steps), each
    /// as the steps in "needs" order starting from its first step in the file:
    /// `[a, b, c]` reads "a needs b, b needs c, c needs a". Self-loops are not included.
    pub fn cycles(&self) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        for scc in tarjan_scc(&self.graph) {
            if scc.len() < 2 {
                continue;
            }
            let members: std::collections::HashSet<usize> = scc.iter().map(|n| n.index()).collect();
            let start = *members.iter().min().unwrap_or(&0);
            out.push(self.cycle_through(start, &members));
        }
        out.sort();
        out
    }

    /// A simple cycle through `start` within one component, found by DFS along needs.
    fn cycle_through(
        &self,
        start: usize,
        members: &std::collections::HashSet<usize>,
    ) -> Vec<usize> {
        let mut path = vec![start];
        let mut visited = std::collections::HashSet::from([start]);
        let mut stack: Vec<std::vec::IntoIter<usize>> = vec![self.sorted_deps_in(start, members)];
        while let Some(iter) = stack.last_mut() {
            match iter.next() {
                Some(next) if next == start => return path,
                Some(next) if visited.insert(next) => {
                    path.push(next);
                    stack.push(self.sorted_deps_in(next, members));
                }
                Some(_) => {}
                None => {
                    stack.pop();
                    path.pop();
                }
            }
        }
        // Unreachable for a real component; fall back to its members in file order.
        let mut all: Vec<usize> = members.iter().copied().collect();
        all.sort();
        all
    }

    fn sorted_deps_in(
        &self,
        step: usize,
        members: &std::collections::HashSet<usize>,
    ) -> std::vec::IntoIter<usize> {
        let mut ds: Vec<usize> = self.deps[step]
            .iter()
            .copied()
            .filter(|d| members.contains(d))
            .collect();
        ds.sort();
        ds.dedup();
        ds.into_iter()
    }

    /// Steps in a topological order (file order among independent steps), or `None` if
    /// the graph has a cycle.
    pub fn topo_order(&self) -> Option<Vec<usize>> {
        let n = self.len();
        let mut indegree: Vec<usize> = self.deps.iter().map(|d| d.len()).collect();
        let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = indegree
            .iter()
            .enumerate()
            .filter(|(_, d)| **d == 0)
            .map(|(i, _)| std::cmp::Reverse(i))
            .collect();
        let mut order = Vec::with_capacity(n);
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            order.push(i);
            for j in self.dependents(i) {
                indegree[j] -= 1;
                if indegree[j] == 0 {
                    ready.push(std::cmp::Reverse(j));
                }
            }
        }
        (order.len() == n).then_some(order)
    }

    /// Wave of each step: 0 for steps with no dependencies, else one more than the
    /// latest wave among its dependencies. `None` if the graph has a cycle.
    pub fn waves(&self) -> Option<Vec<usize>> {
        let order = self.topo_order()?;
        let mut wave = vec![0usize; self.len()];
        for i in order {
            wave[i] = self.deps[i].iter().map(|&d| wave[d] + 1).max().unwrap_or(0);
        }
        Some(wave)
    }

    /// For each step, the set of its transitive dependencies. `None` on a cycle.
    pub fn ancestors(&self) -> Option<Vec<BitSet>> {
        let order = self.topo_order()?;
        let n = self.len();
        let mut sets = vec![BitSet::new(n); n];
        for i in order {
            let mut set = BitSet::new(n);
            for &d in &self.deps[i] {
                set.insert(d);
                set.union_with(&sets[d]);
            }
            sets[i] = set;
        }
        Some(sets)
    }

    /// Mermaid flowchart; `labels[i]` is shown in step `i`'s box.
    pub fn mermaid(&self, ids: &[String], labels: &[String]) -> String {
        let mut out = String::from("flowchart TD\n");
        for (i, id) in ids.iter().enumerate() {
            out.push_str(&format!(
                "    {}[\"{}\"]\n",
                mermaid_id(id),
                mermaid_escape(&labels[i])
            ));
        }
        for (i, ds) in self.deps.iter().enumerate() {
            for &d in ds {
                out.push_str(&format!(
                    "    {} --> {}\n",
                    mermaid_id(&ids[d]),
                    mermaid_id(&ids[i])
                ));
            }
        }
        out
    }

    /// Graphviz DOT digraph named `name`.
    pub fn dot(&self, name: &str, ids: &[String], labels: &[String]) -> String {
        let mut out = format!(
            "digraph {} {{\n    rankdir=TB;\n    node [shape=box];\n",
            dot_quote(name)
        );
        for (i, id) in ids.iter().enumerate() {
            out.push_str(&format!(
                "    {} [label={}];\n",
                dot_quote(id),
                dot_quote(&labels[i])
            ));
        }
        for (i, ds) in self.deps.iter().enumerate() {
            for &d in ds {
                out.push_str(&format!(
                    "    {} -> {};\n",
                    dot_quote(&ids[d]),
                    dot_quote(&ids[i])
                ));
            }
        }
        out.push_str("}\n");
        out
    }
}

fn mermaid_id(id: &str) -> String {
    // Mermaid node ids may not contain `-`; ids are `[a-z0-9_-]+`, so this is injective
    // together with the `s_` prefix that keeps ids like `end` from being keywords.
    format!("s_{}", id.replace('-', "__"))
}

fn mermaid_escape(s: &str) -> String {
    s.replace('"', "#quot;").replace('\n', "<br/>")
}

fn dot_quote(s: &str) -> String {
    format!(
        "\"{}\"",
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
}

/// A fixed-size set of step indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitSet {
    words: Vec<u64>,
}

impl BitSet {
    pub fn new(n: usize) -> Self {
        BitSet {
            words: vec![0; n.div_ceil(64)],
        }
    }
    pub fn insert(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }
    pub fn contains(&self, i: usize) -> bool {
        self.words
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    pub fn union_with(&mut self, other: &BitSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_follow_longest_path() {
        // a; b needs a; c needs a; d needs b and c; e needs nothing.
        let g = StepGraph::new(vec![vec![], vec![0], vec![0], vec![1, 2], vec![]]);
        assert_eq!(g.waves().unwrap(), vec![0, 1, 1, 2, 0]);
        let anc = g.ancestors().unwrap();
        assert!(anc[3].contains(0) && anc[3].contains(1) && !anc[3].contains(4));
    }

    #[test]
    fn cycles_are_named_in_needs_order() {
        // a needs c, b needs a, c needs b: a -> c -> b -> a
        let g = StepGraph::new(vec![vec![2], vec![0], vec![1], vec![]]);
        assert_eq!(g.cycles(), vec![vec![0, 2, 1]]);
        assert!(g.waves().is_none());
    }
}
