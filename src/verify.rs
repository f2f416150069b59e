//! The completion check, in chunks: once every range of a job is done, count the rows of its
//! walked key range (up to the job's upper bound) that still match `where`, one bounded chunk at
//! a time.
//!
//! One `count(*)` over the whole range would hold a snapshot for as long as the table takes to
//! read — hours on a big table: bloat, and other jobs' `max_transaction_age` tripped. A chunk is a
//! batch without the UPDATE: it waits for the same throttle gate, runs in a transaction with the
//! job's lock and statement timeouts (a timeout halves the chunk), and advances the verification
//! cursor and counts in the job's row in its own transaction (`progress::lock_verify`), so a
//! restart resumes where it stopped and chunks of several daemons never count a row twice.
//!
//! ## Two walks, one loop
//! A chunk of a plain table (PostgreSQL 14 or later) is a range of heap **blocks**, read with a TID
//! Range Scan (`ctid >= '(p,0)' AND ctid < '(q,0)'`) and counting the rows with a key up to the
//! upper bound. Why not the key order the batches walk: right after a backfill every row has the
//! dead version the backfill left beside it, and the key index points at both, so a walk in key
//! order visits every dead version through the index, page by page out of order; a TID range
//! scan reads each page once, in physical order. Measured on a 1M-row, ~225 MB table just after a
//! backfill: 1.1 s for the key walk over the whole table, 0.13 s for the TID range scans; the whole
//! check of a daemon, from the last batch to the job completed (1M rows of ~200 bytes, 391 MB with
//! the dead versions, PostgreSQL 15, 2 cores), median of 7 runs each: 1.39 s in keys, 0.51 s in blocks.
//!
//! The chunk that reaches the table's end (its size read in the chunk's own transaction) has no
//! upper block, so it also counts the rows appended while verification ran; a chunk that starts
//! at or beyond the end finishes verification.
//!
//! A partitioned table has one ctid space per partition, and servers before 14 have no TID Range
//! Scan (a ctid range there is a filter over a full scan): those are walked in slices of keys, as a
//! batch takes them. The loop below is the same for both; only the chunk's statement, its cursor
//! ([`VerifyCursor`]) and the unit of its size (rows or blocks) differ.
//!
//! What a block walk counts is what each chunk's snapshot sees in its blocks. A row that the
//! application moves while verification runs (an UPDATE that is not HOT writes the new version
//! wherever there is room) can be seen by two chunks or by none; the key walk sees each key once.
//! The count is a report (`N rows still match where`), and such a row was written after the
//! backfill passed it, which the key walk does not count reliably either (an UPDATE behind its
//! cursor); nothing is updated from this count.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::batch::{self, KeyValue};
use crate::progress::{State, VerifyCursor};
use crate::retry::{self, Backoff, Disposition};
use crate::sizer::Sizer;
use crate::worker::{Context, GateKeeper, Job, duty_cycle_rest, sleep_or_cancel};

/// How verification ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// Rows still matching `where` (`None`: the job has no `where`, nothing to count).
    Done(Option<i64>),
    /// Shutdown, or the job is no longer running (paused, cancelled, reset): the cursor is kept.
    Stopped,
}

/// How verification reads the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Slices of keys in key order (partitioned tables, servers before 14). Sized in rows.
    Keys,
    /// Ranges of heap blocks, each one TID Range Scan. Sized in blocks.
    Blocks,
}

impl Walk {
    fn as_str(self) -> &'static str {
        match self {
            Walk::Keys => "keys",
            Walk::Blocks => "blocks",
        }
    }
}

enum Chunk {
    /// `size`: what the chunk covered, in the walk's unit (rows or blocks), for the sizer.
    Advanced {
        scanned: i64,
        size: i64,
    },
    Done(i64),
    NotRunning,
    /// The verification under way was started by another walk: continue it with that one.
    Rewalk(Walk),
}

/// How long a verification chunk may hold its snapshot (no row locks).
const VERIFY_CHUNK_TIME: Duration = Duration::from_millis(500);
/// The largest verification chunk of a key walk, in rows.
const VERIFY_MAX_CHUNK: i64 = 1_000_000;
/// The largest first chunk of a block walk, in blocks (8 MB of heap).
const VERIFY_START_BLOCKS: i64 = 1_000;
/// The largest chunk of a block walk, in blocks (8 GB of heap: time bounds it long before).
const VERIFY_MAX_BLOCKS: i64 = 1_000_000;
/// `server_version_num` of the first release with TID Range Scan.
const TID_RANGE_SCAN_SINCE: i32 = 140_000;

/// Verify a job whose ranges are all done.
pub async fn run(ctx: &Context, job: &Job, cancel: &CancellationToken) -> Result<Verified, String> {
    if job.spec.where_.is_none() {
        return Ok(Verified::Done(None));
    }
    let ranges = ctx.progress.ranges(job.name()).await.map_err(|e| e.to_string())?;
    let Some(upper) = ranges.last().map(|r| r.upper_bound.clone()) else { return Ok(Verified::Done(Some(0))) };
    let t = &job.spec.timeouts;
    // The walk is chosen once per verification. A table that is gone gets the key walk, whose
    // first chunk fails with the database's own error, as a batch would.
    let facts =
        async { crate::catalog::verify_facts(&mut *ctx.pool.acquire().await?, &job.resolved.target.table).await }
            .await
            .map_err(|e| crate::error::sql(&e))?;
    let mut walk = facts.as_ref().map_or(Walk::Keys, |f| walk_for(f.server_version_num, &f.relkind));
    let start = facts.as_ref().map_or(1, |f| start_blocks(job.spec.batch.start_size(), f.pages, f.tuples));
    let mut sizer = sizer(walk, job, start);
    tracing::debug!(job = job.name(), walk = walk.as_str(), "verification starts");
    let mut gate = GateKeeper::new(ctx, job);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    loop {
        if cancel.is_cancelled() {
            return Ok(Verified::Stopped);
        }
        let Some(scale) = gate.wait(ctx, job, cancel).await else { return Ok(Verified::Stopped) };
        let limit = sizer.size();
        let started = Instant::now();
        let bound = t.lock + t.statement + batch::IDLE_IN_BATCH_TIMEOUT;
        let attempt = match tokio::time::timeout(bound, chunk(ctx, job, walk, &upper, limit)).await {
            Ok(result) => result,
            Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from the database within {}s", bound.as_secs()),
            ))),
        };
        match attempt {
            Ok(Chunk::Done(matching)) => {
                gate.finish(ctx, job).await;
                return Ok(Verified::Done(Some(matching)));
            }
            Ok(Chunk::NotRunning) => {
                gate.finish(ctx, job).await;
                return Ok(Verified::Stopped);
            }
            Ok(Chunk::Rewalk(other)) => {
                tracing::debug!(job = job.name(), walk = other.as_str(), "verification resumes the walk it began with");
                walk = other;
                sizer = self::sizer(walk, job, start);
            }
            Ok(Chunk::Advanced { scanned, size }) => {
                let elapsed = started.elapsed();
                backoff.reset();
                sizer.observe(size, elapsed, 0);
                tracing::debug!(
                    job = job.name(),
                    walk = walk.as_str(),
                    scanned,
                    size,
                    ms = elapsed.as_millis() as u64,
                    "verification chunk"
                );
                let rest = duty_cycle_rest(elapsed, scale);
                if !rest.is_zero() && sleep_or_cancel(rest, cancel).await {
                    return Ok(Verified::Stopped);
                }
            }
            Err(err) => {
                match retry::classify(&err) {
                    Disposition::Permanent => {
                        gate.finish(ctx, job).await;
                        return Err(crate::error::sql(&err));
                    }
                    Disposition::Shrink => sizer.halve(),
                    Disposition::Retry => {}
                }
                let delay = backoff.next_delay();
                tracing::warn!(job = job.name(), error = %err, retry_in_ms = delay.as_millis() as u64,
                    next_size = sizer.size(), "verification chunk failed, will retry");
                if sleep_or_cancel(delay, cancel).await {
                    return Ok(Verified::Stopped);
                }
            }
        }
    }
}

/// The walk for a table of this relkind on a server of this version.
fn walk_for(server_version_num: i32, relkind: &str) -> Walk {
    if relkind == "r" && server_version_num >= TID_RANGE_SCAN_SINCE { Walk::Blocks } else { Walk::Keys }
}

/// The chunk sizer of a walk. Both are sized by time (500 ms): counting a row costs a fraction of
/// updating it and holds no row lock, so batch-sized chunks spent most of their time in the
/// per-chunk transaction (measured: verification was ~20% of a 10k-row-batch job end to end).
/// Both start at about a batch's worth of rows, as short as a batch, and grow from there (at most
/// 2x a chunk); a block walk starts at `start_blocks`.
fn sizer(walk: Walk, job: &Job, start_blocks: i64) -> Sizer {
    let b = &job.spec.batch;
    match walk {
        Walk::Keys => Sizer::new(b.start_size(), b.min_size, b.max_size.max(VERIFY_MAX_CHUNK), Some(VERIFY_CHUNK_TIME)),
        Walk::Blocks => Sizer::new(start_blocks, 1, VERIFY_MAX_BLOCKS, Some(VERIFY_CHUNK_TIME)),
    }
}

/// The blocks that hold about `batch_size` rows in a table of `pages` blocks and `tuples` rows as
/// last measured (`pg_class`: a backfill since then left a dead version beside each row, so this
/// is about half a batch; either way the sizer takes over after the first chunk). At most
/// [`VERIFY_START_BLOCKS`]. Never measured: one block, at most 291 rows (`MaxHeapTuplesPerPage`).
fn start_blocks(batch_size: i64, pages: i64, tuples: f64) -> i64 {
    if pages <= 0 || tuples < 1.0 {
        return 1;
    }
    let blocks = (batch_size as f64 * pages as f64 / tuples).ceil();
    (blocks as i64).clamp(1, VERIFY_START_BLOCKS)
}

/// Where a chunk starts.
enum Start {
    /// After this key (`None`: from the first key).
    Key(Option<KeyValue>),
    /// At this heap block.
    Block(i64),
}

/// What a chunk counted and where the next one starts.
struct Step {
    scanned: i64,
    matching: i64,
    /// `None`: unchanged.
    cursor: Option<VerifyCursor>,
    size: i64,
    done: bool,
}

/// One verification chunk transaction.
async fn chunk(ctx: &Context, job: &Job, walk: Walk, upper: &KeyValue, limit: i64) -> Result<Chunk, sqlx::Error> {
    let t = &job.spec.timeouts;
    let mut tx = batch::begin(&ctx.pool, t.lock, t.statement).await?;
    let progress_error = |e: crate::progress::ProgressError| match e {
        crate::progress::ProgressError::Db(e) => e,
        other => sqlx::Error::Protocol(other.to_string()),
    };
    let Some(locked) = ctx.progress.lock_verify(&mut tx, job.name()).await.map_err(progress_error)? else {
        return Ok(Chunk::NotRunning);
    };
    if locked.job_state != State::Running {
        return Ok(Chunk::NotRunning);
    }
    if locked.done {
        return Ok(Chunk::Done(locked.matching));
    }
    let mut matching = locked.matching;
    let from = match (walk, locked.cursor) {
        (Walk::Keys, None) => Start::Key(None),
        (Walk::Keys, Some(VerifyCursor::Key(key))) => Start::Key(Some(key)),
        (Walk::Blocks, None) => Start::Block(0),
        (Walk::Blocks, Some(VerifyCursor::Block(block))) => Start::Block(block),
        // Begun as a key walk (by a daemon from before block walks): finish it as one, or the
        // rows it counted would be counted again.
        (Walk::Blocks, Some(VerifyCursor::Key(_))) => return Ok(Chunk::Rewalk(Walk::Keys)),
        // A block cursor the table can no longer be walked by (it is partitioned now, under the
        // same name): its blocks mean nothing here; count again from the first key.
        (Walk::Keys, Some(VerifyCursor::Block(_))) => {
            ctx.progress.restart_verify(&mut tx, job.name()).await.map_err(progress_error)?;
            matching = 0;
            Start::Key(None)
        }
    };
    let step = match from {
        Start::Key(key) => {
            let c = batch::verify_chunk(&mut tx, &job.statements, key.as_ref(), upper, limit).await?;
            let done = c.scanned < limit || c.cursor.as_ref() == Some(upper);
            Step {
                scanned: c.scanned,
                matching: c.matching,
                cursor: c.cursor.map(VerifyCursor::Key),
                size: c.scanned,
                done,
            }
        }
        Start::Block(from) => {
            // Read in this transaction, just before the scan: a chunk that would reach the end
            // has no upper block instead (`to` None), so rows appended meanwhile are counted too.
            // Unknown (the table is gone): the scan reports it.
            let end = batch::relation_blocks(&mut tx, &job.statements).await?;
            match end {
                Some(end) if from >= end => Step { scanned: 0, matching: 0, cursor: None, size: 0, done: true },
                _ => {
                    let to = end.filter(|&end| from + limit < end).map(|_| from + limit);
                    let c = batch::verify_blocks(&mut tx, &job.statements, from, to, upper).await?;
                    Step {
                        scanned: c.scanned,
                        matching: c.matching,
                        cursor: Some(VerifyCursor::Block(to.or(end).unwrap_or(from))),
                        size: limit,
                        done: to.is_none(),
                    }
                }
            }
        }
    };
    ctx.progress
        .advance_verify(&mut tx, job.name(), step.cursor.as_ref(), step.scanned, step.matching, step.done)
        .await
        .map_err(progress_error)?;
    tx.commit().await?;
    Ok(if step.done {
        Chunk::Done(matching + step.matching)
    } else {
        Chunk::Advanced { scanned: step.scanned, size: step.size }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_tables_on_14_and_later_walk_blocks() {
        assert_eq!(walk_for(140_000, "r"), Walk::Blocks);
        assert_eq!(walk_for(150_018, "r"), Walk::Blocks);
        assert_eq!(walk_for(130_020, "r"), Walk::Keys, "no TID Range Scan before 14");
        assert_eq!(walk_for(150_018, "p"), Walk::Keys, "a ctid range is per partition");
    }

    #[test]
    fn a_block_walk_starts_at_about_a_batch_of_rows() {
        // 1M rows in 27,500 blocks (36 a block): 10,000 rows are 275 blocks.
        assert_eq!(start_blocks(10_000, 27_500, 1_000_000.0), 275);
        assert_eq!(start_blocks(100, 33, 3_000.0), 2);
        assert_eq!(start_blocks(1, 27_500, 1_000_000.0), 1);
        assert_eq!(start_blocks(1_000_000, 27_500, 1_000_000.0), VERIFY_START_BLOCKS);
        assert_eq!(start_blocks(1_000, 0, -1.0), 1, "never vacuumed or analyzed");
        assert_eq!(start_blocks(1_000, 10, 0.0), 1, "empty when last measured");
    }
}
