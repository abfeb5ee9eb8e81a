//! Ring all-reduce schedules: how a vector is cut into chunks, and which chunk each ring member
//! sends and receives at every step of reduce-scatter and all-gather.

use fedmesh_protocol::ids::MemberId;
use std::ops::Range;

/// The phase of a ring all-reduce step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The received chunk is added to the local one.
    ReduceScatter,
    /// The received chunk, fully reduced, replaces the local one.
    AllGather,
}

/// One step of one member: send `send_chunk` to `to`, receive `recv_chunk` from `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingStep {
    pub phase: Phase,
    pub step: usize,
    pub send_chunk: usize,
    pub to: MemberId,
    pub recv_chunk: usize,
    pub from: MemberId,
}

/// The `chunk`-th of `chunks` nearly equal ranges over `len` elements (the first `len % chunks`
/// ranges are one longer).
pub fn chunk_range(len: usize, chunks: usize, chunk: usize) -> Range<usize> {
    let chunks = chunks.max(1);
    let (base, extra) = (len / chunks, len % chunks);
    let start = chunk * base + chunk.min(extra);
    start..start + base + usize::from(chunk < extra)
}

/// The 2(n - 1) steps of the member at `position` in `order`: after them every member holds the
/// sum of all members' vectors.
pub fn schedule(order: &[MemberId], position: usize) -> Vec<RingStep> {
    let n = order.len();
    if n < 2 || position >= n {
        return Vec::new();
    }
    let to = order[(position + 1) % n];
    let from = order[(position + n - 1) % n];
    let chunk = |offset: usize, back: usize| (position + offset + n * 2 - back) % n;
    let reduce = (0..n - 1).map(|step| RingStep {
        phase: Phase::ReduceScatter,
        step,
        send_chunk: chunk(0, step),
        to,
        recv_chunk: chunk(0, step + 1),
        from,
    });
    let gather = (0..n - 1).map(|step| RingStep {
        phase: Phase::AllGather,
        step,
        send_chunk: chunk(1, step),
        to,
        recv_chunk: chunk(0, step),
        from,
    });
    reduce.chain(gather).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the schedule of every member in lock step on real vectors.
    #[allow(clippy::needless_range_loop)] // steps index every member's schedule at once
    fn all_reduce(vectors: &mut [Vec<f64>], order: &[MemberId]) {
        let n = order.len();
        let len = vectors[0].len();
        let schedules: Vec<Vec<RingStep>> = (0..n).map(|p| schedule(order, p)).collect();
        for step in 0..2 * (n - 1) {
            let sent: Vec<(usize, usize, Vec<f64>)> = (0..n)
                .map(|p| {
                    let s = schedules[p][step];
                    let to = order.iter().position(|m| *m == s.to).unwrap();
                    (to, s.send_chunk, vectors[p][chunk_range(len, n, s.send_chunk)].to_vec())
                })
                .collect();
            for (to, chunk, values) in sent {
                let s = schedules[to][step];
                assert_eq!(s.recv_chunk, chunk, "member {to} expects chunk {}", s.recv_chunk);
                let target = &mut vectors[to][chunk_range(len, n, chunk)];
                for (t, v) in target.iter_mut().zip(values) {
                    *t = if s.phase == Phase::ReduceScatter { *t + v } else { v };
                }
            }
        }
    }

    #[test]
    fn every_member_ends_with_the_sum() {
        for n in 2..9 {
            let order: Vec<MemberId> = (0..n as u8).map(|i| MemberId([i; 32])).collect();
            let mut vectors: Vec<Vec<f64>> =
                (0..n).map(|p| (0..23).map(|i| (p * 100 + i) as f64).collect()).collect();
            let sum: Vec<f64> =
                (0..23).map(|i| (0..n).map(|p| (p * 100 + i) as f64).sum()).collect();
            all_reduce(&mut vectors, &order);
            assert!(vectors.iter().all(|v| *v == sum), "ring of {n}");
        }
    }

    #[test]
    fn chunks_tile_the_vector() {
        for (len, chunks) in [(10, 3), (3, 5), (100, 7), (0, 2)] {
            let ranges: Vec<Range<usize>> =
                (0..chunks).map(|c| chunk_range(len, chunks, c)).collect();
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[chunks - 1].end, len);
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        }
    }
}
