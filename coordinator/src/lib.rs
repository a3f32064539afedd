//! The coordinator's side of capfilt: reading image URL lists and cutting
//! them into shards of work.
//!
//! An input is a JSON array, JSON Lines, CSV, TSV, plain text or Parquet
//! file, optionally gzipped (except Parquet). [`resolve_inputs`] expands the
//! user's files, folders and globs. [`read_rows`] streams one input as
//! [`InputRow`]s without ever holding the whole file. [`shards`] groups the
//! rows into [`Shard`]s whose ids stay the same from run to run, so that an
//! interrupted job can resume.
//!
//! Rows that cannot be used (unparseable, no URL, a scheme that cannot be
//! fetched) are still yielded, marked with a [`RowProblem`], so that row
//! indices and keys never depend on what went wrong elsewhere in a file.
//!
//! Everything here is synchronous and local: this crate has no network
//! code. Remote lists are downloaded by the caller and handed in as an
//! [`InputFile`] whose label keeps the original URL.

mod check;
mod error;
mod format;
mod read;
mod resolve;
mod row;
mod shard;

pub use check::check_url;
pub use error::{InputError, RowProblem};
pub use format::InputFormat;
pub use read::{read_rows, RowReader};
pub use resolve::resolve_inputs;
pub use row::{InputFile, InputRow, ReadOptions};
pub use shard::{input_tag, shards, Shard, Shards};

// Callers read inputs on worker threads, so the reader types must stay
// `Send`; this fails to compile if a change makes them lose it.
const _: fn() = || {
    fn is_send<T: Send>() {}
    is_send::<RowReader>();
    is_send::<Shards>();
};
