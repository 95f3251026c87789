//! What signing one upstream request costs natively (SHA-NI where the CPU
//! has it, unlike under callgrind), with the secret keyed for every
//! signature against a [`SigningKey`] keyed once, as the proxy keeps one
//! per secret and configuration. Prints nanoseconds per signature for each
//! round and the difference, the two timed in alternation; compare the
//! columns of one run, never figures from different runs.
//!
//! ```sh
//! cargo run --release --example signing_cost -- 2000000 3
//! ```
//! (signatures per measurement, rounds; the defaults shown)

use std::hint::black_box;
use std::time::Instant;

use pusher_cutover::pusher::signature::{Signer, SigningKey, Unsigned};
use secrecy::SecretString;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut next = |default: u32| {
        args.next()
            .map_or(Ok(default), |a| a.parse::<u32>())
            .unwrap_or_else(|e| {
                eprintln!("usage: signing_cost [SIGNATURES [ROUNDS]]: {e}");
                std::process::exit(2)
            })
    };
    let n = next(2_000_000).max(1);
    let rounds = next(3);
    let secret = SecretString::from("7ad3773142a6692b25b8");
    // A translated legacy stats call's upstream request (bench/bench.py's).
    let req = Unsigned {
        method: "GET",
        path: "/apps/4242/channels/bench-17",
        timestamp: 1_764_800_000,
        body: None,
        params: &[("info", "subscription_count")],
    };
    // The two are timed in alternation, 20 slices each per round, so that
    // the machine's drift falls on both alike.
    const SLICES: u32 = 20;
    let slice = (n / SLICES).max(1);
    let time = |f: &dyn Fn() -> String| {
        let started = Instant::now();
        for _ in 0..slice {
            black_box(f());
        }
        started.elapsed().as_secs_f64()
    };
    let kept = SigningKey::new(&secret);
    println!("ns per signed target ({} per measurement)", slice * SLICES);
    println!("round  keyed per signature  key kept  difference");
    for round in 1..=rounds {
        let fresh = || {
            let key = SigningKey::new(black_box(&secret));
            Signer::new("278d425bdf160c739803", &key).target(black_box(&req))
        };
        let reused =
            || Signer::new("278d425bdf160c739803", black_box(&kept)).target(black_box(&req));
        let (mut fresh_secs, mut reused_secs) = (0.0, 0.0);
        for _ in 0..SLICES {
            fresh_secs += time(&fresh);
            reused_secs += time(&reused);
        }
        let per = |secs: f64| secs * 1e9 / f64::from(slice * SLICES);
        let (fresh, reused) = (per(fresh_secs), per(reused_secs));
        println!(
            "{round:>5}  {fresh:>19.0}  {reused:>8.0}  {:>10.0}",
            fresh - reused
        );
    }
}
