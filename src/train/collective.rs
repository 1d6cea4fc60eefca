//! Collective communication between the ranks of one data-parallel run: all-reduce,
//! reduce-scatter, all-gather and broadcast of flat `f32` buffers (and small `f64` sums).
//!
//! [`Collective`] is the seam; [`local_group`] is its in-process implementation (one thread per
//! rank, shared slots and a barrier). Every rank sums the ranks' contributions in rank order,
//! so all ranks hold bit-identical results and their model replicas never drift apart. A rank
//! that fails or panics aborts the group: the others get [`CollectiveError::Aborted`] from their
//! next call instead of waiting forever.

use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, RwLock};

/// Why a collective call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CollectiveError {
    #[error("rank {rank} stopped: {message}")]
    Aborted { rank: usize, message: String },
}

/// The operations data-parallel training needs, called by every rank in the same order.
pub trait Collective: Send {
    /// This rank (0 = root: logs, evaluates, writes checkpoints).
    fn rank(&self) -> usize;
    /// Ranks in the run.
    fn ranks(&self) -> usize;
    /// Sum `buf` over the ranks; every rank gets the sum.
    fn all_reduce(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError>;
    /// Sum `buf` over the ranks into `out`, this rank's part only (`parts[rank]` of the sum).
    fn reduce_scatter(
        &mut self,
        buf: &[f32],
        parts: &[Range<usize>],
        out: &mut [f32],
    ) -> Result<(), CollectiveError>;
    /// Every rank's `parts[rank]` of `buf` copied into every rank's `buf`.
    fn all_gather(
        &mut self,
        buf: &mut [f32],
        parts: &[Range<usize>],
    ) -> Result<(), CollectiveError>;
    /// Sum small `f64` vectors (losses, counts, norms) over the ranks.
    fn sum(&mut self, values: &mut [f64]) -> Result<(), CollectiveError>;
    /// Rank `root`'s `values` to every rank.
    fn broadcast(&mut self, values: &mut [f64], root: usize) -> Result<(), CollectiveError>;
    /// Tell the other ranks this one stopped with `message`; their next call fails with it.
    fn abort(&mut self, message: &str);
}

/// One rank alone: every operation leaves the buffers as they are.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn ranks(&self) -> usize {
        1
    }
    fn all_reduce(&mut self, _: &mut [f32]) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn reduce_scatter(
        &mut self,
        buf: &[f32],
        parts: &[Range<usize>],
        out: &mut [f32],
    ) -> Result<(), CollectiveError> {
        out.copy_from_slice(&buf[parts[0].clone()]);
        Ok(())
    }
    fn all_gather(&mut self, _: &mut [f32], _: &[Range<usize>]) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn sum(&mut self, _: &mut [f64]) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn broadcast(&mut self, _: &mut [f64], _: usize) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn abort(&mut self, _: &str) {}
}

/// `ranks` endpoints of one in-process group, one per rank thread (index = rank).
pub fn local_group(ranks: usize) -> Vec<LocalRank> {
    let group = Arc::new(Group {
        ranks,
        barrier: Mutex::new(BarrierState::default()),
        turned: Condvar::new(),
        inputs: (0..ranks).map(|_| RwLock::new(Vec::new())).collect(),
        outputs: (0..ranks).map(|_| RwLock::new(Vec::new())).collect(),
        scalars: (0..ranks).map(|_| RwLock::new(Vec::new())).collect(),
    });
    (0..ranks)
        .map(|rank| LocalRank {
            rank,
            group: group.clone(),
        })
        .collect()
}

/// A rank's endpoint of an in-process group.
pub struct LocalRank {
    rank: usize,
    group: Arc<Group>,
}

struct Group {
    ranks: usize,
    barrier: Mutex<BarrierState>,
    turned: Condvar,
    /// Each rank's contribution to the current operation.
    inputs: Vec<RwLock<Vec<f32>>>,
    /// Each rank's reduced part (all-reduce) or gathered part (all-gather).
    outputs: Vec<RwLock<Vec<f32>>>,
    scalars: Vec<RwLock<Vec<f64>>>,
}

#[derive(Default)]
struct BarrierState {
    arrived: usize,
    generation: u64,
    failed: Option<CollectiveError>,
}

/// Equal contiguous parts of `n` elements, one per rank.
pub fn even_parts(n: usize, ranks: usize) -> Vec<Range<usize>> {
    (0..ranks)
        .map(|r| n * r / ranks..n * (r + 1) / ranks)
        .collect()
}

impl LocalRank {
    /// Wait until every rank arrived, or fail as soon as one aborted.
    fn barrier(&self) -> Result<(), CollectiveError> {
        let g = &self.group;
        let mut state = g.barrier.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = &state.failed {
            return Err(e.clone());
        }
        state.arrived += 1;
        if state.arrived == g.ranks {
            state.arrived = 0;
            state.generation += 1;
            g.turned.notify_all();
            return Ok(());
        }
        let generation = state.generation;
        while state.generation == generation && state.failed.is_none() {
            state = g.turned.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        // Everyone arrived, even if one of them has stopped since.
        if state.generation != generation {
            return Ok(());
        }
        Err(state.failed.clone().expect("woken by an abort"))
    }

    /// Sum of every rank's `inputs[range]`, in rank order, into `out`.
    fn sum_inputs(&self, range: Range<usize>, out: &mut [f32]) {
        out.fill(0.0);
        for slot in &self.group.inputs {
            let input = slot.read().unwrap_or_else(|e| e.into_inner());
            for (o, x) in out.iter_mut().zip(&input[range.clone()]) {
                *o += *x;
            }
        }
    }

    fn put(slot: &RwLock<Vec<f32>>, values: &[f32]) {
        let mut s = slot.write().unwrap_or_else(|e| e.into_inner());
        s.clear();
        s.extend_from_slice(values);
    }
}

impl Collective for LocalRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn ranks(&self) -> usize {
        self.group.ranks
    }

    fn all_reduce(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        // Reduce-scatter into equal parts, then all-gather them: each rank sums 1/N of the
        // buffer instead of all of it.
        let parts = even_parts(buf.len(), self.group.ranks);
        let mut mine = vec![0.0; parts[self.rank].len()];
        self.reduce_scatter(buf, &parts, &mut mine)?;
        buf[parts[self.rank].clone()].copy_from_slice(&mine);
        self.all_gather(buf, &parts)
    }

    fn reduce_scatter(
        &mut self,
        buf: &[f32],
        parts: &[Range<usize>],
        out: &mut [f32],
    ) -> Result<(), CollectiveError> {
        Self::put(&self.group.inputs[self.rank], buf);
        self.barrier()?;
        self.sum_inputs(parts[self.rank].clone(), out);
        // Nobody overwrites an input before every rank has read them all.
        self.barrier()
    }

    fn all_gather(
        &mut self,
        buf: &mut [f32],
        parts: &[Range<usize>],
    ) -> Result<(), CollectiveError> {
        Self::put(
            &self.group.outputs[self.rank],
            &buf[parts[self.rank].clone()],
        );
        self.barrier()?;
        for (r, part) in parts.iter().enumerate() {
            if r != self.rank {
                let out = self.group.outputs[r]
                    .read()
                    .unwrap_or_else(|e| e.into_inner());
                buf[part.clone()].copy_from_slice(&out);
            }
        }
        self.barrier()
    }

    fn sum(&mut self, values: &mut [f64]) -> Result<(), CollectiveError> {
        {
            let mut s = self.group.scalars[self.rank]
                .write()
                .unwrap_or_else(|e| e.into_inner());
            s.clear();
            s.extend_from_slice(values);
        }
        self.barrier()?;
        values.fill(0.0);
        for slot in &self.group.scalars {
            let s = slot.read().unwrap_or_else(|e| e.into_inner());
            for (v, x) in values.iter_mut().zip(s.iter()) {
                *v += *x;
            }
        }
        self.barrier()
    }

    fn broadcast(&mut self, values: &mut [f64], root: usize) -> Result<(), CollectiveError> {
        if self.rank == root {
            let mut s = self.group.scalars[root]
                .write()
                .unwrap_or_else(|e| e.into_inner());
            s.clear();
            s.extend_from_slice(values);
        }
        self.barrier()?;
        if self.rank != root {
            let s = self.group.scalars[root]
                .read()
                .unwrap_or_else(|e| e.into_inner());
            values.copy_from_slice(&s);
        }
        self.barrier()
    }

    fn abort(&mut self, message: &str) {
        let g = &self.group;
        let mut state = g.barrier.lock().unwrap_or_else(|e| e.into_inner());
        if state.failed.is_none() {
            state.failed = Some(CollectiveError::Aborted {
                rank: self.rank,
                message: message.to_string(),
            });
        }
        g.turned.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `f` on every rank of a group of `n`, each in its own thread; results by rank.
    fn on_ranks<T: Send>(n: usize, f: impl Fn(LocalRank) -> T + Sync) -> Vec<T> {
        std::thread::scope(|s| {
            let handles: Vec<_> = local_group(n)
                .into_iter()
                .map(|r| s.spawn(|| f(r)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn every_rank_gets_the_same_sum() {
        let out = on_ranks(3, |mut c| {
            let r = c.rank() as f32;
            let mut buf: Vec<f32> = (0..7).map(|i| i as f32 + 10.0 * r).collect();
            c.all_reduce(&mut buf).unwrap();
            let mut s = [r as f64, 1.0];
            c.sum(&mut s).unwrap();
            (buf, s)
        });
        let want: Vec<f32> = (0..7).map(|i| 3.0 * i as f32 + 30.0).collect();
        for (buf, s) in out {
            assert_eq!(buf, want);
            assert_eq!(s, [3.0, 3.0]);
        }
    }

    #[test]
    fn reduce_scatter_and_all_gather_move_parts() {
        let parts = vec![0..1, 1..4];
        let out = on_ranks(2, |mut c| {
            let r = c.rank();
            let buf = vec![1.0 + r as f32; 4];
            let mut mine = vec![0.0; parts[r].len()];
            c.reduce_scatter(&buf, &parts, &mut mine).unwrap();
            let mut gathered = vec![-1.0; 4];
            gathered[parts[r].clone()].fill(r as f32 + 5.0);
            c.all_gather(&mut gathered, &parts).unwrap();
            let mut flag = [if r == 1 { 7.0 } else { 0.0 }];
            c.broadcast(&mut flag, 1).unwrap();
            (mine, gathered, flag[0])
        });
        assert_eq!(out[0].0, vec![3.0]);
        assert_eq!(out[1].0, vec![3.0; 3]);
        for (_, gathered, flag) in &out {
            assert_eq!(gathered, &vec![5.0, 6.0, 6.0, 6.0]);
            assert_eq!(*flag, 7.0);
        }
    }

    /// A rank that stops fails the others' next call with its message; nobody waits forever.
    #[test]
    fn a_stopped_rank_fails_the_others_instead_of_hanging() {
        let out = on_ranks(3, |mut c| {
            if c.rank() == 2 {
                c.abort("out of memory");
                return Ok(());
            }
            let mut buf = vec![1.0; 4];
            c.all_reduce(&mut buf)
        });
        for r in &out[..2] {
            let e = r.as_ref().unwrap_err().to_string();
            assert_eq!(e, "rank 2 stopped: out of memory");
        }
    }
}
