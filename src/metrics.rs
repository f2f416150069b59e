//! Metric names and descriptions: one place, so dashboards and code agree.
//!
//! Labels are job names and standby application names only: never SQL, values or credentials.

pub const ROWS_UPDATED: &str = "pgbackfill_rows_updated_total";
pub const ROWS_SCANNED: &str = "pgbackfill_rows_scanned_total";
pub const BATCHES: &str = "pgbackfill_batches_total";
pub const BATCH_ERRORS: &str = "pgbackfill_batch_errors_total";
pub const BATCH_DURATION: &str = "pgbackfill_batch_duration_seconds";
pub const BATCH_SIZE: &str = "pgbackfill_batch_size";
pub const JOB_THROTTLED: &str = "pgbackfill_job_throttled";
pub const THROTTLED_SECONDS: &str = "pgbackfill_throttled_seconds_total";
pub const THROTTLE_SCALE: &str = "pgbackfill_throttle_scale";
pub const JOB_STATE: &str = "pgbackfill_job_state";
pub const ACTIVE_WORKERS: &str = "pgbackfill_active_workers";
pub const SPEC_ERRORS: &str = "pgbackfill_spec_errors";
pub const REPLICA_LAG_SECONDS: &str = "pgbackfill_replica_lag_seconds";
pub const REPLICA_LAG_BYTES: &str = "pgbackfill_replica_lag_bytes";
pub const REPLICAS_STREAMING: &str = "pgbackfill_replicas_streaming";
pub const SLOT_RETAINED_BYTES: &str = "pgbackfill_slot_retained_bytes";
pub const OLDEST_TRANSACTION_SECONDS: &str = "pgbackfill_oldest_transaction_seconds";
pub const LAG_MEASUREMENT_OK: &str = "pgbackfill_lag_measurement_ok";

/// Register descriptions (shown as `# HELP` lines) with the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(ROWS_UPDATED, "Rows changed by backfill batches");
    describe_counter!(ROWS_SCANNED, "Keys visited by backfill batches (rows examined)");
    describe_counter!(BATCHES, "Committed batches");
    describe_counter!(BATCH_ERRORS, "Failed batch attempts by error kind");
    describe_histogram!(BATCH_DURATION, Unit::Seconds, "Wall time of committed batches");
    describe_gauge!(BATCH_SIZE, "Current batch size (rows) of a job's worker");
    describe_gauge!(JOB_THROTTLED, "1 while the job is held by the throttle");
    describe_counter!(THROTTLED_SECONDS, Unit::Seconds, "Time spent waiting on the throttle");
    describe_gauge!(
        THROTTLE_SCALE,
        "Rate allowed by the throttle: fraction of time spent in batches (1 = full speed, 0 = held)"
    );
    describe_gauge!(JOB_STATE, "1 for the job's current state label");
    describe_gauge!(ACTIVE_WORKERS, "Range workers running in this daemon");
    describe_gauge!(SPEC_ERRORS, "Spec files in the jobs directory that fail validation");
    describe_gauge!(REPLICA_LAG_SECONDS, Unit::Seconds, "Replay lag per standby, as measured on the primary");
    describe_gauge!(REPLICA_LAG_BYTES, Unit::Bytes, "WAL bytes not yet replayed per standby");
    describe_gauge!(REPLICAS_STREAMING, "Standbys in state streaming");
    describe_gauge!(SLOT_RETAINED_BYTES, Unit::Bytes, "WAL retained by each replication slot");
    describe_gauge!(OLDEST_TRANSACTION_SECONDS, Unit::Seconds, "Age of the oldest open transaction");
    describe_gauge!(LAG_MEASUREMENT_OK, "1 when the last lag measurement succeeded (0: throttle fails closed)");
}
