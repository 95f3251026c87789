//! Migration telemetry: metrics, the usage ledger, and reports.

pub mod usage;
pub mod report;
