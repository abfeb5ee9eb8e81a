//! The `fedmesh` command line.
fn main() {}
