//! pgbackfill: zero-downtime, resumable, throttled batched backfills for live PostgreSQL.

pub mod batch;
pub mod catalog;
pub mod check;
pub mod control;
pub mod db;
pub mod demo;
pub mod error;
pub mod health;
pub mod http;
pub mod ident;
pub mod localpg;
pub mod metrics;
pub mod progress;
pub mod retry;
pub mod schedule;
pub mod sizer;
pub mod spec;
pub mod status;
pub mod steps;
pub mod supervisor;
pub mod throttle;
pub mod verify;
pub mod worker;
