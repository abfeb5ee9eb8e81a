//! How often a job's members speak (heartbeats, repeated joins) and how long a silent member
//! still counts as there, scaled with the job's size so that its gossip stays near a fixed rate:
//! every member receives every heartbeat, so at one a second each a 50-member job's gossip
//! alone kept a 2-core machine's 50 nodes busy.

/// Heartbeats a second a whole job carries once it is larger than this many members.
const JOB_HEARTBEATS_PER_SEC: u64 = 10;
/// The heartbeat interval of a small job.
const MIN_HEARTBEAT_MS: u64 = 1_000;
/// The shortest wait before a member answers newcomers' joins with its own again.
const MIN_JOIN_ECHO_MS: u64 = 500;
/// How many join echoes fit in a heartbeat interval, at most.
const JOIN_ECHOES_PER_HEARTBEAT: u64 = 10;
/// How many heartbeat intervals apart a member repeats its join.
const HEARTBEATS_PER_JOIN: u64 = 5;
/// How long a silent member still counts as live in a small job.
const MIN_LIVENESS_MS: u64 = 10_000;
/// How many heartbeats a member may miss before a coordinator counts it lost (the intervals of
/// silence that pass before: about 4).
const HEARTBEATS_TO_LOSE: u64 = 4;

/// The cadence of one job (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    heartbeat_ms: u64,
}

impl Cadence {
    /// The cadence of a job of `members` members.
    pub fn for_members(members: usize) -> Self {
        let spread = (members as u64 * 1_000).div_ceil(JOB_HEARTBEATS_PER_SEC);
        Self { heartbeat_ms: spread.max(MIN_HEARTBEAT_MS) }
    }

    /// How often a member says it is alive.
    pub fn heartbeat_ms(self) -> u64 {
        self.heartbeat_ms
    }

    /// How often a member repeats its join, so members that started later learn of it.
    pub fn rejoin_ms(self) -> u64 {
        HEARTBEATS_PER_JOIN * self.heartbeat_ms
    }

    /// How long after its last join a member answers a newcomer's join with its own again.
    /// In a join burst every member repeats its join once per such wait, to every member: at
    /// half a second, a thousand members joining within a second sent three or four joins
    /// each. A newcomer opens no round for two heartbeat intervals, so a tenth of one costs
    /// nothing.
    pub fn join_echo_ms(self) -> u64 {
        (self.heartbeat_ms / JOIN_ECHOES_PER_HEARTBEAT).max(MIN_JOIN_ECHO_MS)
    }

    /// How long a member not heard from is still planned with (self-organized rounds).
    pub fn liveness_ms(self) -> u64 {
        (HEARTBEATS_TO_LOSE * self.heartbeat_ms).max(MIN_LIVENESS_MS)
    }

    /// How long a coordinator waits for a member's heartbeat before it counts it lost and
    /// assigns its work to another.
    pub fn lost_ms(self) -> u64 {
        HEARTBEATS_TO_LOSE * self.heartbeat_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_jobs_beat_every_second_and_large_ones_keep_the_job_near_ten_a_second() {
        for members in [1, 4, 10] {
            let cadence = Cadence::for_members(members);
            assert_eq!(cadence.heartbeat_ms(), 1_000);
            assert_eq!(
                (cadence.rejoin_ms(), cadence.liveness_ms(), cadence.lost_ms()),
                (5_000, 10_000, 4_000)
            );
            assert_eq!(cadence.join_echo_ms(), 500);
        }
        let large = Cadence::for_members(50);
        assert_eq!(large.heartbeat_ms(), 5_000, "50 members at 10 heartbeats a second");
        assert_eq!(
            (large.rejoin_ms(), large.liveness_ms(), large.lost_ms()),
            (25_000, 20_000, 20_000)
        );
        assert!(
            large.liveness_ms() >= 3 * large.heartbeat_ms(),
            "two lost heartbeats are not silence"
        );
    }

    #[test]
    fn joins_are_echoed_a_tenth_of_a_heartbeat_interval_apart_in_large_jobs() {
        assert_eq!(Cadence::for_members(50).join_echo_ms(), 500);
        assert_eq!(Cadence::for_members(1_000).join_echo_ms(), 10_000);
        let large = Cadence::for_members(10_000);
        assert!(2 * large.heartbeat_ms() > large.join_echo_ms(), "echoed before a newcomer opens");
    }
}
