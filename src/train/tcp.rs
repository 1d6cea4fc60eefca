//! [`Collective`] over TCP, for ranks in separate processes (one Slurm task per rank): every
//! rank connects to rank 0, which sums in rank order and sends the results back (a star; the
//! same sums, bit for bit, as the in-process group). Every read and write has a timeout, so a
//! rank that died or hangs fails the others' call with its rank and address instead of leaving
//! them waiting. Ranks find rank 0 from Slurm's environment or torchrun's ([`Rendezvous`]).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::time::{Duration, Instant};

use super::collective::{Collective, CollectiveError};

/// The port rank 0 listens on when the environment names none (torchrun's default).
pub const DEFAULT_PORT: u16 = 29500;

/// Where the ranks of a run meet: this rank, how many, rank 0's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    pub rank: usize,
    pub ranks: usize,
    /// This rank's index on its node (`LOCAL_RANK`, `SLURM_LOCALID`): which GPU it takes.
    pub local: usize,
    /// `host:port` of rank 0.
    pub root: String,
}

impl Rendezvous {
    /// From torchrun's variables (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), else
    /// Slurm's (`SLURM_PROCID`, `SLURM_NTASKS`, the first host of `SLURM_STEP_NODELIST`);
    /// None when neither says there are several ranks.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Rendezvous>, String> {
        let number = |name: &str| -> Result<Option<usize>, String> {
            match var(name) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{name}={v:?} is not a number")),
            }
        };
        let port = match var("MASTER_PORT") {
            Some(p) => p
                .trim()
                .parse::<u16>()
                .map_err(|_| format!("MASTER_PORT={p:?} is not a port number"))?,
            None => DEFAULT_PORT,
        };
        let (rank, ranks, host, local) = match (number("RANK")?, number("WORLD_SIZE")?) {
            (Some(rank), Some(ranks)) => (rank, ranks, var("MASTER_ADDR"), number("LOCAL_RANK")?),
            _ => match (number("SLURM_PROCID")?, number("SLURM_NTASKS")?) {
                (Some(rank), Some(ranks)) => {
                    let host = var("MASTER_ADDR").or_else(|| {
                        var("SLURM_STEP_NODELIST")
                            .or_else(|| var("SLURM_JOB_NODELIST"))
                            .map(|l| first_host(&l))
                    });
                    (rank, ranks, host, number("SLURM_LOCALID")?)
                }
                _ => return Ok(None),
            },
        };
        if ranks < 2 {
            return Ok(None);
        }
        if rank >= ranks {
            return Err(format!("rank {rank} of {ranks} ranks is out of range"));
        }
        let host = host.ok_or_else(|| {
            "several ranks but no address for rank 0: set MASTER_ADDR (Slurm sets \
             SLURM_STEP_NODELIST)"
                .to_string()
        })?;
        Ok(Some(Rendezvous {
            rank,
            ranks,
            local: local.unwrap_or(rank),
            root: format!("{host}:{port}"),
        }))
    }
}

/// The first host of a Slurm node list: `node[03-05,09],gpu1` → `node03`.
pub fn first_host(list: &str) -> String {
    let list = list.trim();
    match list.find(['[', ',']) {
        Some(i) if list.as_bytes()[i] == b'[' => {
            let inner = &list[i + 1..];
            let first = inner.split([',', '-', ']']).next().unwrap_or_default();
            format!("{}{first}", &list[..i])
        }
        Some(i) => list[..i].to_string(),
        None => list.to_string(),
    }
}

/// A rank's endpoint: rank 0 holds a stream to every other rank, the others one to rank 0.
pub struct TcpRank {
    rank: usize,
    ranks: usize,
    /// Rank 0: streams of ranks 1.. (index r - 1). Others: the stream to rank 0.
    peers: Vec<TcpStream>,
    /// Rank 0's address (what a failing call names).
    root: String,
    timeout: Duration,
}

impl TcpRank {
    /// Join the run `rdv` describes: rank 0 listens on its address's port, the others
    /// connect to it (retrying until `timeout`). Each later call waits at most `timeout`.
    pub fn connect(rdv: &Rendezvous, timeout: Duration) -> Result<TcpRank, CollectiveError> {
        if rdv.rank == 0 {
            let port = rdv.root.rsplit(':').next().unwrap_or_default();
            let listener = TcpListener::bind(format!("0.0.0.0:{port}"))
                .map_err(|e| fail(0, format!("cannot listen on port {port}: {e}")))?;
            TcpRank::listen(listener, rdv.ranks, &rdv.root, timeout)
        } else {
            TcpRank::join(&rdv.root, rdv.rank, rdv.ranks, timeout)
        }
    }

    /// Rank 0 on `listener`: wait (at most `timeout`) for ranks 1..`ranks` to connect.
    pub fn listen(
        listener: TcpListener,
        ranks: usize,
        root: &str,
        timeout: Duration,
    ) -> Result<TcpRank, CollectiveError> {
        listener
            .set_nonblocking(true)
            .map_err(|e| fail(0, e.to_string()))?;
        let start = Instant::now();
        let mut slots: Vec<Option<TcpStream>> = (1..ranks).map(|_| None).collect();
        while slots.iter().any(Option::is_none) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream
                        .set_nonblocking(false)
                        .map_err(|e| fail(0, e.to_string()))?;
                    set_timeouts(&stream, timeout).map_err(|e| fail(0, e.to_string()))?;
                    let mut who = [0u8; 8];
                    stream
                        .read_exact(&mut who)
                        .map_err(|e| fail(0, format!("a joining rank sent no rank: {e}")))?;
                    let r = u64::from_le_bytes(who) as usize;
                    if r == 0 || r >= ranks || slots[r - 1].is_some() {
                        return Err(fail(0, format!("a peer said it is rank {r} of {ranks}")));
                    }
                    slots[r - 1] = Some(stream);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() > timeout {
                        let missing: Vec<String> = slots
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| s.is_none())
                            .map(|(i, _)| (i + 1).to_string())
                            .collect();
                        return Err(fail(
                            0,
                            format!(
                                "rank(s) {} did not connect to {root} within {} s",
                                missing.join(", "),
                                timeout.as_secs()
                            ),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(fail(0, format!("accepting on {root}: {e}"))),
            }
        }
        Ok(TcpRank {
            rank: 0,
            ranks,
            peers: slots.into_iter().map(|s| s.expect("all joined")).collect(),
            root: root.to_string(),
            timeout,
        })
    }

    /// Rank `rank` (≥ 1): connect to rank 0 at `root`, retrying until `timeout`.
    pub fn join(
        root: &str,
        rank: usize,
        ranks: usize,
        timeout: Duration,
    ) -> Result<TcpRank, CollectiveError> {
        let start = Instant::now();
        let mut stream = loop {
            let tried = root
                .to_socket_addrs()
                .map_err(|e| e.to_string())
                .and_then(|mut a| a.next().ok_or_else(|| "no address".to_string()))
                .and_then(|a| {
                    TcpStream::connect_timeout(&a, Duration::from_secs(1))
                        .map_err(|e| e.to_string())
                });
            match tried {
                Ok(s) => break s,
                Err(e) if start.elapsed() > timeout => {
                    return Err(fail(
                        rank,
                        format!(
                            "could not reach rank 0 at {root} within {} s: {e}",
                            timeout.as_secs()
                        ),
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let io = |e: std::io::Error| fail(rank, format!("rank 0 at {root}: {e}"));
        set_timeouts(&stream, timeout).map_err(io)?;
        stream.write_all(&(rank as u64).to_le_bytes()).map_err(io)?;
        Ok(TcpRank {
            rank,
            ranks,
            peers: vec![stream],
            root: root.to_string(),
            timeout,
        })
    }

    /// The error for a failed exchange with `peer`.
    fn lost(&self, peer: usize, e: std::io::Error) -> CollectiveError {
        let what = match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("did not answer within {} s", self.timeout.as_secs())
            }
            std::io::ErrorKind::UnexpectedEof => "closed the connection".to_string(),
            _ => e.to_string(),
        };
        let at = if peer == 0 {
            format!(" at {}", self.root)
        } else {
            String::new()
        };
        fail(peer, format!("rank {peer}{at} {what}"))
    }

    fn send<T: Wire>(&mut self, to: usize, values: &[T]) -> Result<(), CollectiveError> {
        let i = if self.rank == 0 { to - 1 } else { 0 };
        let mut bytes = Vec::with_capacity(8 + values.len() * T::SIZE);
        bytes.extend_from_slice(&(values.len() as u64).to_le_bytes());
        for v in values {
            v.put(&mut bytes);
        }
        self.peers[i]
            .write_all(&bytes)
            .map_err(|e| self.lost(to, e))
    }

    fn recv<T: Wire>(&mut self, from: usize, out: &mut [T]) -> Result<(), CollectiveError> {
        let i = if self.rank == 0 { from - 1 } else { 0 };
        let mut len = [0u8; 8];
        self.peers[i]
            .read_exact(&mut len)
            .map_err(|e| self.lost(from, e))?;
        let n = u64::from_le_bytes(len) as usize;
        if n != out.len() {
            return Err(fail(
                from,
                format!("rank {from} sent {n} values where {} were due", out.len()),
            ));
        }
        let mut bytes = vec![0u8; n * T::SIZE];
        self.peers[i]
            .read_exact(&mut bytes)
            .map_err(|e| self.lost(from, e))?;
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(T::SIZE)) {
            *o = T::get(c);
        }
        Ok(())
    }

    /// Sum every rank's `values` on rank 0, in rank order (as the in-process group does).
    fn sum_on_root<T: Wire>(&mut self, values: &[T]) -> Result<Vec<T>, CollectiveError> {
        let mut sum = vec![T::default(); values.len()];
        T::add(&mut sum, values);
        let mut theirs = vec![T::default(); values.len()];
        for r in 1..self.ranks {
            self.recv(r, &mut theirs)?;
            T::add(&mut sum, &theirs);
        }
        Ok(sum)
    }

    fn all_sum<T: Wire>(&mut self, values: &mut [T]) -> Result<(), CollectiveError> {
        if self.rank == 0 {
            let sum = self.sum_on_root(values)?;
            for r in 1..self.ranks {
                self.send(r, &sum)?;
            }
            values.copy_from_slice(&sum);
            Ok(())
        } else {
            self.send(0, values)?;
            self.recv(0, values)
        }
    }
}

impl Collective for TcpRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn ranks(&self) -> usize {
        self.ranks
    }

    fn all_reduce(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        self.all_sum(buf)
    }

    fn reduce_scatter(
        &mut self,
        buf: &[f32],
        parts: &[Range<usize>],
        out: &mut [f32],
    ) -> Result<(), CollectiveError> {
        if self.rank == 0 {
            let sum = self.sum_on_root(buf)?;
            for (r, part) in parts.iter().enumerate().skip(1) {
                self.send(r, &sum[part.clone()])?;
            }
            out.copy_from_slice(&sum[parts[0].clone()]);
            Ok(())
        } else {
            self.send(0, buf)?;
            self.recv(0, out)
        }
    }

    fn all_gather(
        &mut self,
        buf: &mut [f32],
        parts: &[Range<usize>],
    ) -> Result<(), CollectiveError> {
        if self.rank == 0 {
            for (r, part) in parts.iter().enumerate().skip(1) {
                self.recv(r, &mut buf[part.clone()])?;
            }
            for r in 1..self.ranks {
                self.send(r, buf)?;
            }
            Ok(())
        } else {
            self.send(0, &buf[parts[self.rank].clone()])?;
            self.recv(0, buf)
        }
    }

    fn sum(&mut self, values: &mut [f64]) -> Result<(), CollectiveError> {
        self.all_sum(values)
    }

    fn broadcast(&mut self, values: &mut [f64], root: usize) -> Result<(), CollectiveError> {
        // Through rank 0: the root sends there first when it is another rank.
        if root != 0 {
            if self.rank == root {
                self.send(0, values)?;
            } else if self.rank == 0 {
                self.recv(root, values)?;
            }
        }
        if self.rank == 0 {
            for r in 1..self.ranks {
                if r != root {
                    self.send(r, values)?;
                }
            }
            Ok(())
        } else if self.rank != root {
            self.recv(0, values)
        } else {
            Ok(())
        }
    }

    fn abort(&mut self, _message: &str) {
        // Closing the streams fails the peers' next read at once (they see this rank gone).
        for p in &self.peers {
            let _ = p.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn fail(rank: usize, message: String) -> CollectiveError {
    CollectiveError::Aborted { rank, message }
}

fn set_timeouts(stream: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)
}

/// A value sent over the wire, little-endian.
trait Wire: Copy + Default {
    const SIZE: usize;
    fn put(&self, out: &mut Vec<u8>);
    fn get(bytes: &[u8]) -> Self;
    fn add(sum: &mut [Self], more: &[Self]);
}

impl Wire for f32 {
    const SIZE: usize = 4;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> f32 {
        f32::from_le_bytes(bytes.try_into().expect("4 bytes"))
    }
    fn add(sum: &mut [f32], more: &[f32]) {
        for (s, m) in sum.iter_mut().zip(more) {
            *s += *m;
        }
    }
}

impl Wire for f64 {
    const SIZE: usize = 8;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> f64 {
        f64::from_le_bytes(bytes.try_into().expect("8 bytes"))
    }
    fn add(sum: &mut [f64], more: &[f64]) {
        for (s, m) in sum.iter_mut().zip(more) {
            *s += *m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    /// `n` TCP ranks on loopback, each in its own thread, running `f`.
    fn on_ranks<T: Send>(n: usize, f: impl Fn(TcpRank) -> T + Sync) -> Vec<T> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let root = listener.local_addr().unwrap().to_string();
        std::thread::scope(|s| {
            let f = &f;
            let root = &root;
            let mut handles = Vec::new();
            for rank in 1..n {
                handles.push(s.spawn(move || f(TcpRank::join(root, rank, n, WAIT).unwrap())));
            }
            let first = f(TcpRank::listen(listener, n, root, WAIT).unwrap());
            std::iter::once(first)
                .chain(handles.into_iter().map(|h| h.join().unwrap()))
                .collect()
        })
    }

    #[test]
    fn tcp_ranks_reduce_scatter_and_gather_like_the_local_group() {
        let parts = vec![0..1, 1..3, 3..4];
        let out = on_ranks(3, |mut c| {
            let r = c.rank();
            let mut buf: Vec<f32> = (0..4).map(|i| i as f32 + 10.0 * r as f32).collect();
            c.all_reduce(&mut buf).unwrap();
            let mut mine = vec![0.0; parts[r].len()];
            c.reduce_scatter(&[1.0 + r as f32; 4], &parts, &mut mine)
                .unwrap();
            let mut gathered = vec![-1.0; 4];
            gathered[parts[r].clone()].fill(r as f32);
            c.all_gather(&mut gathered, &parts).unwrap();
            let mut flag = [if r == 2 { 7.0 } else { 0.0 }];
            c.broadcast(&mut flag, 2).unwrap();
            let mut s = [r as f64];
            c.sum(&mut s).unwrap();
            (buf, mine, gathered, flag[0], s[0])
        });
        for (r, (buf, mine, gathered, flag, s)) in out.into_iter().enumerate() {
            assert_eq!(buf, vec![30.0, 33.0, 36.0, 39.0]);
            assert_eq!(mine, vec![6.0; parts[r].len()]);
            assert_eq!(gathered, vec![0.0, 1.0, 1.0, 2.0]);
            assert_eq!((flag, s), (7.0, 3.0));
        }
    }

    /// A rank that stops fails rank 0's next call, naming it; a rank with nobody to reach
    /// names the address it tried.
    #[test]
    fn a_dead_or_unreachable_rank_is_named_instead_of_waited_for() {
        let out = on_ranks(2, |mut c| {
            if c.rank() == 1 {
                c.abort("stopped");
                return Ok(());
            }
            c.all_reduce(&mut [1.0; 3])
        });
        let e = out[0].as_ref().unwrap_err().to_string();
        assert!(e.contains("rank 1"), "{e}");

        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let e = TcpRank::join(&addr, 1, 2, Duration::from_millis(300))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(&format!("could not reach rank 0 at {addr}")),
            "{e}"
        );
    }

    #[test]
    fn ranks_are_found_from_slurm_or_torchrun() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.to_string())
        };
        let slurm = env(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_STEP_NODELIST", "gpu[07-08],cpu1"),
            ("SLURM_LOCALID", "1"),
        ]);
        assert_eq!(
            Rendezvous::from_env(slurm).unwrap(),
            Some(Rendezvous {
                rank: 3,
                ranks: 8,
                local: 1,
                root: "gpu07:29500".into()
            })
        );
        let torchrun = env(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "10.0.0.5"),
            ("MASTER_PORT", "1234"),
        ]);
        assert_eq!(
            Rendezvous::from_env(torchrun).unwrap().unwrap().root,
            "10.0.0.5:1234"
        );
        assert_eq!(
            Rendezvous::from_env(env(&[("SLURM_NTASKS", "1"), ("SLURM_PROCID", "0")])),
            Ok(None)
        );
        assert!(Rendezvous::from_env(env(&[("RANK", "1"), ("WORLD_SIZE", "2")])).is_err());
        assert_eq!(first_host("node5"), "node5");
        assert_eq!(first_host("a,b"), "a");
    }
}
