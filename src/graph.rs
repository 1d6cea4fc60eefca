//! The step DAG: built with petgraph from the steps' dependencies; cycles, selection, order.

use petgraph::Direction;
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed};

use crate::diag::Diagnostic;
use crate::workflow::Workflow;

/// Dependency graph of a workflow; node `i` is step `i`, edges point from upstream to downstream.
pub struct Dag {
    pub graph: DiGraph<usize, ()>,
}

impl Dag {
    /// Build the graph, or report every cycle with the steps on it.
    pub fn new(wf: &Workflow) -> Result<Dag, Vec<Diagnostic>> {
        let mut graph = DiGraph::with_capacity(wf.steps.len(), wf.steps.len());
        for i in 0..wf.steps.len() {
            graph.add_node(i);
        }
        for (i, step) in wf.steps.iter().enumerate() {
            for &d in &step.deps {
                graph.add_edge(NodeIndex::new(d), NodeIndex::new(i), ());
            }
        }
        let mut errors = Vec::new();
        for scc in tarjan_scc(&graph) {
            if scc.len() > 1 {
                // Walk the cycle in dependency order so the message reads as a loop.
                let mut members: Vec<usize> = scc.iter().map(|n| n.index()).collect();
                members.sort_unstable();
                let cycle = cycle_path(wf, &members);
                let first = &wf.steps[cycle[0]];
                let names: Vec<&str> = cycle.iter().map(|&i| wf.steps[i].name.as_str()).collect();
                errors.push(
                    Diagnostic::at(
                        &wf.source,
                        first.span,
                        format!("steps form a cycle: {} → {}", names.join(" → "), names[0]),
                    )
                    .with_help("a step may only use outputs of steps that do not use its own"),
                );
            }
        }
        if errors.is_empty() {
            Ok(Dag { graph })
        } else {
            Err(errors)
        }
    }

    /// The targets and everything they depend on (all steps when `targets` is empty).
    pub fn ancestors(&self, targets: &[usize]) -> Vec<bool> {
        let n = self.graph.node_count();
        if targets.is_empty() {
            return vec![true; n];
        }
        let mut keep = vec![false; n];
        let reversed = Reversed(&self.graph);
        for &t in targets {
            let mut dfs = Dfs::new(reversed, NodeIndex::new(t));
            while let Some(node) = dfs.next(reversed) {
                keep[node.index()] = true;
            }
        }
        keep
    }

    /// Steps in an order where every step comes after its dependencies (file order among peers).
    pub fn topo_order(&self) -> Vec<usize> {
        let n = self.graph.node_count();
        let mut indegree: Vec<usize> = (0..n)
            .map(|i| {
                self.graph
                    .neighbors_directed(NodeIndex::new(i), Direction::Incoming)
                    .count()
            })
            .collect();
        let mut ready: std::collections::BTreeSet<usize> =
            (0..n).filter(|&i| indegree[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for next in self
                .graph
                .neighbors_directed(NodeIndex::new(i), Direction::Outgoing)
            {
                indegree[next.index()] -= 1;
                if indegree[next.index()] == 0 {
                    ready.insert(next.index());
                }
            }
        }
        order
    }
}

/// A path around a strongly connected component, starting at its first member.
fn cycle_path(wf: &Workflow, members: &[usize]) -> Vec<usize> {
    let start = members[0];
    let mut path = vec![start];
    let mut current = start;
    loop {
        // Follow a dependency edge that stays inside the component.
        let next = wf.steps[current]
            .deps
            .iter()
            .copied()
            .find(|d| members.contains(d) && (!path.contains(d) || *d == start));
        match next {
            Some(n) if n == start => break,
            Some(n) => {
                path.push(n);
                current = n;
            }
            None => break,
        }
    }
    // Deps point upstream; reverse so the arrows read "feeds into".
    path[1..].reverse();
    path
}
