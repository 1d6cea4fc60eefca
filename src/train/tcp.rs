//! [`Collective`] over TCP, for ranks in separate processes (one Slurm task per rank). The
//! ranks meet at rank 0, which hands every rank the others' addresses; then each pair of ranks
//! holds its own connection (a full mesh, as gloo's). A reduce-scatter sends each part straight
//! to its owner, which sums the ranks' contributions in rank order (the same sums, bit for bit,
//! as the in-process group); an all-gather sends each rank's part straight to the others. A
//! rank sends and receives at once, so every byte crosses the wire once and both directions of
//! each connection carry data together. Every read and write has a timeout, so a rank that died
//! or hangs fails the others' call with its rank and address instead of leaving them waiting.
//! Ranks find rank 0 from Slurm's environment or torchrun's ([`Rendezvous`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::time::{Duration, Instant};

use super::collective::{Collective, CollectiveError, even_parts};

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

/// A rank's endpoint: a stream to every other rank.
pub struct TcpRank {
    rank: usize,
    ranks: usize,
    /// The stream to each rank (None at this rank's own index).
    peers: Vec<Option<TcpStream>>,
    /// `host:port` each rank listens on (rank 0's is the rendezvous address): what a failing
    /// call names.
    addrs: Vec<String>,
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

    /// Rank 0 on `listener`: wait (at most `timeout`) for ranks 1..`ranks` to connect, then
    /// send each of them the address table (every rank's listening `host:port`).
    pub fn listen(
        listener: TcpListener,
        ranks: usize,
        root: &str,
        timeout: Duration,
    ) -> Result<TcpRank, CollectiveError> {
        let joined = accept_ranks(&listener, 0, 1..ranks, root, timeout)?;
        let mut peers: Vec<Option<TcpStream>> = (0..ranks).map(|_| None).collect();
        let mut addrs = vec![root.to_string(); ranks];
        for (r, mut stream) in joined {
            // The joining rank said the port it listens on; its host is the one it came from.
            let mut port = [0u8; 8];
            stream
                .read_exact(&mut port)
                .map_err(|e| fail(r, format!("rank {r} sent no port: {e}")))?;
            let ip = stream
                .peer_addr()
                .map_err(|e| fail(r, format!("rank {r}: {e}")))?
                .ip();
            addrs[r] = SocketAddr::new(ip, u64::from_le_bytes(port) as u16).to_string();
            peers[r] = Some(stream);
        }
        let table = addrs.join("\n");
        for (r, stream) in peers.iter_mut().enumerate().skip(1) {
            let stream = stream.as_mut().expect("every rank joined");
            let io = |e: std::io::Error| fail(r, format!("rank {r} at {}: {e}", addrs[r]));
            stream
                .write_all(&(table.len() as u64).to_le_bytes())
                .map_err(io)?;
            stream.write_all(table.as_bytes()).map_err(io)?;
        }
        Ok(TcpRank {
            rank: 0,
            ranks,
            peers,
            addrs,
            timeout,
        })
    }

    /// Rank `rank` (≥ 1): listen on a port of its own, connect to rank 0 at `root` (retrying
    /// until `timeout`), learn the others' addresses, connect to the ranks below it and
    /// accept the ranks above it.
    pub fn join(
        root: &str,
        rank: usize,
        ranks: usize,
        timeout: Duration,
    ) -> Result<TcpRank, CollectiveError> {
        let start = Instant::now();
        let own = TcpListener::bind("0.0.0.0:0")
            .map_err(|e| fail(rank, format!("cannot listen on a port of its own: {e}")))?;
        let port = own
            .local_addr()
            .map_err(|e| fail(rank, e.to_string()))?
            .port();
        let mut stream = connect_to(root, rank, 0, timeout)?;
        let io = |e: std::io::Error| fail(rank, format!("rank 0 at {root}: {e}"));
        stream.write_all(&(port as u64).to_le_bytes()).map_err(io)?;
        let mut len = [0u8; 8];
        stream.read_exact(&mut len).map_err(io)?;
        let len = u64::from_le_bytes(len) as usize;
        // `ranks` addresses, each a host name (at most 253 bytes) and a port: anything longer
        // is not a dnaflow rank 0 answering.
        if len > ranks * 300 {
            return Err(fail(
                rank,
                format!("{root} answered with {len} bytes, not an address table: is it rank 0?"),
            ));
        }
        let mut table = vec![0u8; len];
        stream.read_exact(&mut table).map_err(io)?;
        let addrs: Vec<String> = String::from_utf8_lossy(&table)
            .split('\n')
            .map(str::to_string)
            .collect();
        if addrs.len() != ranks {
            return Err(fail(
                rank,
                format!("rank 0 at {root} listed {} ranks, not {ranks}", addrs.len()),
            ));
        }
        let mut peers: Vec<Option<TcpStream>> = (0..ranks).map(|_| None).collect();
        peers[0] = Some(stream);
        for (r, addr) in addrs.iter().enumerate().take(rank).skip(1) {
            let left = timeout.saturating_sub(start.elapsed());
            peers[r] = Some(connect_to(addr, rank, r, left)?);
        }
        for (r, stream) in accept_ranks(&own, rank, rank + 1..ranks, &addrs[rank], timeout)? {
            peers[r] = Some(stream);
        }
        Ok(TcpRank {
            rank,
            ranks,
            peers,
            addrs,
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
        fail(peer, format!("rank {peer} at {} {what}", self.addrs[peer]))
    }

    fn stream(&self, peer: usize) -> &TcpStream {
        self.peers[peer]
            .as_ref()
            .expect("a stream to every other rank")
    }

    /// Send each `(rank, values)` of `sends` and fill each `(rank, out)` of `recvs`, at once:
    /// a thread writes while this one reads, so two ranks sending each other more than a
    /// socket buffer holds never both wait. Writes go to rank + 1, rank + 2, … and reads come
    /// from rank − 1, rank − 2, … (mod ranks): whoever a rank waits on is at an earlier turn,
    /// so no ranks wait on each other in a circle.
    fn exchange<T: Wire>(
        &self,
        mut sends: Vec<(usize, &[T])>,
        mut recvs: Vec<(usize, &mut [T])>,
    ) -> Result<(), CollectiveError> {
        let n = self.ranks;
        sends.sort_by_key(|(to, _)| (to + n - self.rank) % n);
        recvs.sort_by_key(|(from, _)| (self.rank + n - from) % n);
        let write = |sends: Vec<(usize, &[T])>| -> Result<(), CollectiveError> {
            for (to, values) in sends {
                let mut s = self.stream(to);
                s.write_all(&(values.len() as u64).to_le_bytes())
                    .and_then(|_| s.write_all(bytemuck::cast_slice(values)))
                    .map_err(|e| self.lost(to, e))?;
            }
            Ok(())
        };
        let read = |recvs: Vec<(usize, &mut [T])>| -> Result<(), CollectiveError> {
            for (from, out) in recvs {
                let mut s = self.stream(from);
                let mut len = [0u8; 8];
                s.read_exact(&mut len).map_err(|e| self.lost(from, e))?;
                let got = u64::from_le_bytes(len) as usize;
                if got != out.len() {
                    return Err(fail(
                        from,
                        format!("rank {from} sent {got} values where {} were due", out.len()),
                    ));
                }
                s.read_exact(bytemuck::cast_slice_mut(out))
                    .map_err(|e| self.lost(from, e))?;
            }
            Ok(())
        };
        if sends.is_empty() || recvs.is_empty() {
            write(sends)?;
            return read(recvs);
        }
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| write(sends));
            let read = read(recvs);
            if read.is_err() {
                // The run fails here: close the streams so a writer stuck on a full buffer
                // stops now instead of at its timeout.
                self.shut();
            }
            let written = writer.join().unwrap_or_else(|_| {
                Err(fail(self.rank, "the sending thread panicked".to_string()))
            });
            read.and(written)
        })
    }

    /// Sum `buf` over the ranks (rank order), every rank getting the sum.
    fn all_sum<T: Wire>(&mut self, buf: &mut [T]) -> Result<(), CollectiveError> {
        let parts = even_parts(buf.len(), self.ranks);
        let mut mine = vec![T::default(); parts[self.rank].len()];
        self.reduce_parts(buf, &parts, &mut mine)?;
        buf[parts[self.rank].clone()].copy_from_slice(&mine);
        self.gather_parts(buf, &parts)
    }

    /// Each part to its owner, which sums every rank's copy of it in rank order into `out`.
    fn reduce_parts<T: Wire>(
        &mut self,
        buf: &[T],
        parts: &[Range<usize>],
        out: &mut [T],
    ) -> Result<(), CollectiveError> {
        let me = self.rank;
        let mut theirs: Vec<Vec<T>> = (0..self.ranks)
            .map(|r| {
                if r == me {
                    Vec::new()
                } else {
                    vec![T::default(); parts[me].len()]
                }
            })
            .collect();
        let sends = (0..self.ranks)
            .filter(|&r| r != me)
            .map(|r| (r, &buf[parts[r].clone()]))
            .collect();
        let recvs = theirs
            .iter_mut()
            .enumerate()
            .filter(|(r, _)| *r != me)
            .map(|(r, v)| (r, v.as_mut_slice()))
            .collect();
        self.exchange(sends, recvs)?;
        out.fill(T::default());
        for (r, values) in theirs.iter().enumerate() {
            let values = if r == me {
                &buf[parts[me].clone()]
            } else {
                values
            };
            T::add(out, values);
        }
        Ok(())
    }

    /// This rank's part of `buf` to every other rank; theirs into `buf`.
    fn gather_parts<T: Wire>(
        &mut self,
        buf: &mut [T],
        parts: &[Range<usize>],
    ) -> Result<(), CollectiveError> {
        let (mine, others) = split_parts(buf, parts, self.rank)?;
        let sends = (0..self.ranks)
            .filter(|&r| r != self.rank)
            .map(|r| (r, &*mine))
            .collect();
        self.exchange(sends, others)
    }

    /// Close every stream: the peers' next read fails at once.
    fn shut(&self) {
        for p in self.peers.iter().flatten() {
            let _ = p.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// `buf` cut into this rank's part (read) and every other rank's (written), by rank.
#[allow(clippy::type_complexity)]
fn split_parts<'a, T>(
    buf: &'a mut [T],
    parts: &[Range<usize>],
    me: usize,
) -> Result<(&'a [T], Vec<(usize, &'a mut [T])>), CollectiveError> {
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by_key(|&r| parts[r].start);
    let mut rest = buf;
    let mut at = 0;
    let mut mine: &[T] = &[];
    let mut others = Vec::with_capacity(parts.len());
    for r in order {
        let part = &parts[r];
        if part.start < at || part.end > at + rest.len() {
            return Err(fail(
                me,
                format!("rank parts overlap or run past the buffer: {parts:?}"),
            ));
        }
        let tail = std::mem::take(&mut rest);
        let (_, tail) = tail.split_at_mut(part.start - at);
        let (this, tail) = tail.split_at_mut(part.len());
        rest = tail;
        at = part.end;
        if r == me {
            mine = this;
        } else {
            others.push((r, this));
        }
    }
    Ok((mine, others))
}

/// Accept one connection from each rank of `expect`, each of which first sends its rank.
fn accept_ranks(
    listener: &TcpListener,
    rank: usize,
    expect: Range<usize>,
    here: &str,
    timeout: Duration,
) -> Result<Vec<(usize, TcpStream)>, CollectiveError> {
    listener
        .set_nonblocking(true)
        .map_err(|e| fail(rank, e.to_string()))?;
    let start = Instant::now();
    let mut slots: Vec<Option<TcpStream>> = expect.clone().map(|_| None).collect();
    while slots.iter().any(Option::is_none) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .map_err(|e| fail(rank, e.to_string()))?;
                set_timeouts(&stream, timeout).map_err(|e| fail(rank, e.to_string()))?;
                let mut who = [0u8; 8];
                stream
                    .read_exact(&mut who)
                    .map_err(|e| fail(rank, format!("a joining rank sent no rank: {e}")))?;
                let r = u64::from_le_bytes(who) as usize;
                if !expect.contains(&r) || slots[r - expect.start].is_some() {
                    return Err(fail(
                        rank,
                        format!("a peer said it is rank {r} of {}", expect.end),
                    ));
                }
                slots[r - expect.start] = Some(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() > timeout {
                    let missing: Vec<String> = slots
                        .iter()
                        .zip(expect.clone())
                        .filter(|(s, _)| s.is_none())
                        .map(|(_, r)| r.to_string())
                        .collect();
                    return Err(fail(
                        rank,
                        format!(
                            "rank(s) {} did not connect to rank {rank} at {here} within {} s",
                            missing.join(", "),
                            timeout.as_secs()
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(fail(rank, format!("accepting on {here}: {e}"))),
        }
    }
    Ok(expect
        .zip(slots.into_iter().map(|s| s.expect("all joined")))
        .collect())
}

/// Rank `rank`'s stream to rank `peer` at `addr`, retrying until `timeout`; the first bytes
/// say who is calling.
fn connect_to(
    addr: &str,
    rank: usize,
    peer: usize,
    timeout: Duration,
) -> Result<TcpStream, CollectiveError> {
    let start = Instant::now();
    let mut stream = loop {
        let tried = addr
            .to_socket_addrs()
            .map_err(|e| e.to_string())
            .and_then(|mut a| a.next().ok_or_else(|| "no address".to_string()))
            .and_then(|a| {
                TcpStream::connect_timeout(&a, Duration::from_secs(1)).map_err(|e| e.to_string())
            });
        match tried {
            Ok(s) => break s,
            Err(e) if start.elapsed() > timeout => {
                return Err(fail(
                    rank,
                    format!(
                        "could not reach rank {peer} at {addr} within {} s: {e}",
                        timeout.as_secs()
                    ),
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let io = |e: std::io::Error| fail(rank, format!("rank {peer} at {addr}: {e}"));
    set_timeouts(&stream, timeout).map_err(io)?;
    stream.write_all(&(rank as u64).to_le_bytes()).map_err(io)?;
    Ok(stream)
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
        self.reduce_parts(buf, parts, out)
    }

    fn all_gather(
        &mut self,
        buf: &mut [f32],
        parts: &[Range<usize>],
    ) -> Result<(), CollectiveError> {
        self.gather_parts(buf, parts)
    }

    fn sum(&mut self, values: &mut [f64]) -> Result<(), CollectiveError> {
        self.all_sum(values)
    }

    fn broadcast(&mut self, values: &mut [f64], root: usize) -> Result<(), CollectiveError> {
        if self.rank == root {
            let sends = (0..self.ranks)
                .filter(|&r| r != root)
                .map(|r| (r, &*values))
                .collect();
            self.exchange(sends, Vec::new())
        } else {
            self.exchange(Vec::new(), vec![(root, values)])
        }
    }

    fn abort(&mut self, _message: &str) {
        // Closing the streams fails the peers' next read at once (they see this rank gone).
        self.shut();
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

/// A value sent over the wire as its bytes in memory (the ranks of a run share one
/// architecture; every target dnaflow builds for is little-endian).
trait Wire: bytemuck::Pod + Default + Send + Sync {
    fn add(sum: &mut [Self], more: &[Self]);
}

impl Wire for f32 {
    fn add(sum: &mut [f32], more: &[f32]) {
        for (s, m) in sum.iter_mut().zip(more) {
            *s += *m;
        }
    }
}

impl Wire for f64 {
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

    /// Buffers far larger than a socket holds, uneven parts, 4 ranks: every rank gets what the
    /// in-process group gives, bit for bit (the same sums in the same order).
    #[test]
    fn large_exchanges_match_the_local_group_bit_for_bit() {
        use crate::train::collective::local_group;
        const N: usize = 1 << 20;
        let parts = vec![0..100_000, 100_000..100_000, 100_000..700_001, 700_001..N];
        let input = |r: usize| -> Vec<f32> {
            (0..N)
                .map(|i| ((i * 7919 + r * 104_729) % 1_000_003) as f32 * 1e-3 - 0.37 * r as f32)
                .collect()
        };
        let run = |mut c: Box<dyn Collective>| {
            let r = c.rank();
            let mut all = input(r);
            c.all_reduce(&mut all).unwrap();
            let mut mine = vec![0.0; parts[r].len()];
            c.reduce_scatter(&input(r + 1), &parts, &mut mine).unwrap();
            let mut gathered = vec![0.0; N];
            gathered[parts[r].clone()].copy_from_slice(&input(r)[parts[r].clone()]);
            c.all_gather(&mut gathered, &parts).unwrap();
            (all, mine, gathered)
        };
        let tcp = on_ranks(4, |c| run(Box::new(c)));
        let local: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = local_group(4)
                .into_iter()
                .map(|c| s.spawn(|| run(Box::new(c))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (r, (t, l)) in tcp.iter().zip(&local).enumerate() {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&t.0) == bits(&l.0), "all_reduce differs on rank {r}");
            assert!(
                bits(&t.1) == bits(&l.1),
                "reduce_scatter differs on rank {r}"
            );
            assert!(bits(&t.2) == bits(&l.2), "all_gather differs on rank {r}");
        }
        assert!(tcp[0].2[..100_000] == input(0)[..100_000]);
        assert!(tcp[3].2[700_001..] == input(3)[700_001..]);
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
