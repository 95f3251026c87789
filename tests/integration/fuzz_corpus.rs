//! Replays the fuzz corpus (and any crash seeds in `artifacts/`) of
//! `tests/fuzz` through the same library entry points the fuzz targets
//! call, so every input the fuzzer kept is checked by `cargo test`.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let mut replayed = 0;
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            run(&data);
            replayed += 1;
        }
    }
    assert!(replayed >= 3, "{target}: only {replayed} corpus inputs");
}

#[test]
fn query_verify_corpus() {
    replay("query_verify", pusher_cutover::fuzz::query_and_verify);
}

#[test]
fn legacy_route_corpus() {
    replay("legacy_route", pusher_cutover::fuzz::legacy_route);
}

#[test]
fn stats_mapper_corpus() {
    replay("stats_mapper", pusher_cutover::fuzz::stats_mapper);
}
