//! pgbackfill: zero-downtime, resumable, throttled batched backfills for live PostgreSQL.

pub mod ident;
pub mod spec;
