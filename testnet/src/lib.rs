//! Runs many real `fedmesh` processes on one machine, drives them through their CLI and admin API
//! as a user would, and reports on what they did.

pub mod api;
pub mod cluster;
pub mod report;
pub mod scenario;
