//! The endpoints, one file per group; each parses its request into the library's types, calls
//! the library on the blocking pool and returns the library's typed result as JSON.

pub mod index;
pub mod ingest;
pub mod items;
pub mod repair;
pub mod search;
pub mod tasks;
