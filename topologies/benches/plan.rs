//! Prints the time to compute one round plan for 10, 100, 1000 and 10000 members, per topology.

use fedmesh_protocol::ids::{ContentHash, JobId, MemberId};
use fedmesh_protocol::tag::{BuiltinTopology, TagSpec};
use fedmesh_topologies::{MemberInfo, RoundPlan, Selection, Tag};
use std::time::Instant;

const GROUPS: [&str; 8] = ["eu", "na", "apac", "latam", "africa", "me", "oce", "cn"];

fn members(n: u32) -> Vec<MemberInfo> {
    (0..n)
        .map(|i| MemberInfo {
            id: MemberId(*blake3::hash(&i.to_le_bytes()).as_bytes()),
            group: GROUPS[i as usize % GROUPS.len()].to_owned(),
            roles: Vec::new(),
            reachable: true,
        })
        .collect()
}

fn main() {
    let job = JobId(ContentHash::of(b"bench"));
    println!("{:<14} {:>8} {:>14}", "topology", "members", "per plan");
    for builtin in [
        BuiltinTopology::Central,
        BuiltinTopology::Hierarchical,
        BuiltinTopology::Ring,
        BuiltinTopology::Hybrid,
    ] {
        let tag = match Tag::from_spec(&TagSpec::Builtin(builtin)) {
            Ok(tag) => tag,
            Err(error) => panic!("built-in {builtin:?}: {error}"),
        };
        for n in [10, 100, 1000, 10_000] {
            let members = members(n);
            let runs = (100_000 / n).clamp(5, 2000) as u64;
            let start = Instant::now();
            for round in 1..=runs {
                let plan = RoundPlan::compute(&tag, &job, round, &members, &Selection::ALL);
                std::hint::black_box(plan.map(|p| p.trainers.len()).unwrap_or(0));
            }
            let per_plan = start.elapsed().as_secs_f64() / runs as f64;
            println!("{:<14} {:>8} {:>11.3} ms", format!("{builtin:?}"), n, per_plan * 1e3);
        }
    }
}
