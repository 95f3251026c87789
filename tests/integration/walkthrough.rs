//! The README's offline walkthrough (`cargo run --example walkthrough`),
//! run as a test so that it cannot rot: its stand-in upstream is labelled,
//! every legacy call is answered as old clients expect, the forged one is
//! refused, the upstream sees only calls the proxy signed, and the report
//! names each library family with its calls.

#[path = "../../examples/walkthrough.rs"]
#[allow(dead_code)]
mod example;

#[tokio::test]
async fn the_walkthrough_runs_offline_and_prints_the_report() {
    let mut out = Vec::new();
    let run = example::run(&mut out).await.expect("the walkthrough runs");
    let text = String::from_utf8(out).expect("utf-8");
    assert!(
        text.contains("STAND-IN UPSTREAM") && text.contains("NOT Pusher, NOT Sockudo"),
        "{text}"
    );
    assert_eq!(run.accepted, 12, "11 triggers and 1 stats call:\n{text}");
    assert_eq!(run.forged_status, 401, "{text}");
    assert_eq!(
        run.upstream_calls.len(),
        12,
        "the forged call is not forwarded"
    );
    assert!(
        run.upstream_calls.iter().all(|(_, signed)| *signed),
        "{text}"
    );
    for (family, calls) in [
        ("[pypi-pusher-0.1-0.5]", 5),
        ("[pypi-pusher-0.6-0.8]", 3),
        ("[npm-node-pusher-0.0]", 2),
        ("[npm-pusher-or-node-pusher-0.0]", 1),
        ("[unknown]", 1),
    ] {
        let line = run
            .report
            .lines()
            .find(|l| l.contains(family))
            .unwrap_or_else(|| panic!("{family} not in the report:\n{}", run.report));
        assert!(line.contains(&format!(" {calls} calls,")), "{line}");
    }
    assert!(
        run.report
            .contains("app 4242: legacy_trigger 11, legacy_stats 1, total 12"),
        "{}",
        run.report
    );
    assert!(text.contains(&run.report), "the report is printed");
}
