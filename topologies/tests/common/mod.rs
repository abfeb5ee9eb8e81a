//! Helpers shared by the topology tests: members with keys derived from an index.
#![allow(dead_code)] // each test crate uses its own subset

use fedmesh_protocol::ids::{ContentHash, JobId, MemberId};
use fedmesh_topologies::MemberInfo;

pub fn job(name: &str) -> JobId {
    JobId(ContentHash::of(name.as_bytes()))
}

pub fn member_id(index: u32) -> MemberId {
    MemberId(*blake3::hash(&index.to_le_bytes()).as_bytes())
}

pub fn member(index: u32, group: &str) -> MemberInfo {
    MemberInfo { id: member_id(index), group: group.to_owned(), roles: Vec::new(), reachable: true }
}
