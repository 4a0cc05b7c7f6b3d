//! Empty: this crate exists only to run librocksdb-sys's build script (see Cargo.toml).
