//! Reports built from the usage ledger (being written).
