//! `hub-bench`: load scenarios against the real hub binary, with the same independent
//! protocol clients the end-to-end tests use. Prints a table and writes CSV under
//! `target/bench/`.
//!
//! ```text
//! cargo run --release -p hub-bench -- json-pairs [--pairs 100] [--messages 200] [--window 32] [--durability flush|interval]
//! cargo run --release -p hub-bench -- retro-pairs [--pairs 100] [--rounds 20] [--messages 100]
//! cargo run --release -p hub-bench -- cchat-keys [--members 8] [--rounds 10]
//! cargo run --release -p hub-bench -- cchat-fanout [--members 50] [--messages 2000] [--window 64]
//! cargo run --release -p hub-bench -- xdr [--clients 50] [--messages 200]
//! cargo run --release -p hub-bench -- p2p [--messages 2000] [--backlog 1000]
//! cargo run --release -p hub-bench -- baselines [--pairs 100] [--messages 200] [--window 32]
//! cargo run --release -p hub-bench -- smoke      # a few seconds, for CI
//! ```

#![forbid(unsafe_code)]

mod cchat;
mod json_pairs;
mod p2p;
mod peer;
mod relay;
mod report;
mod retro_pairs;
mod xdr;

use std::collections::HashMap;

fn usage() -> ! {
    eprintln!(
        "usage: hub-bench <json-pairs|retro-pairs|cchat-keys|cchat-fanout|xdr|p2p|baselines|smoke> [--pairs N] [--members N] [--clients N] [--messages N] [--backlog N] [--window N] [--rounds N] [--durability flush|interval]"
    );
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_else(|| usage());
    let mut flags = HashMap::new();
    while let Some(flag) = args.next() {
        let Some(name) = flag.strip_prefix("--") else {
            usage()
        };
        let value = args.next().unwrap_or_else(|| usage());
        flags.insert(name.to_owned(), value);
    }
    let number = |name: &str, default: usize| -> usize {
        flags
            .get(name)
            .map(|v| v.parse().unwrap_or_else(|_| usage()))
            .unwrap_or(default)
    };
    let rows = match scenario.as_str() {
        "json-pairs" => {
            let modes: Vec<&str> = match flags.get("durability").map(String::as_str) {
                Some("flush") => vec!["flush"],
                Some("interval") => vec!["interval"],
                None => vec!["flush", "interval"],
                Some(_) => usage(),
            };
            modes
                .into_iter()
                .map(|mode| {
                    json_pairs::run(json_pairs::Params {
                        pairs: number("pairs", 100),
                        messages: number("messages", 200),
                        window: number("window", 32),
                        durability: mode,
                    })
                })
                .collect()
        }
        "retro-pairs" => {
            let (rtt, throughput) = retro_pairs::run(retro_pairs::Params {
                pairs: number("pairs", 100),
                rounds: number("rounds", 20),
                messages: number("messages", 100),
            });
            report::print_and_save("retro-rtt", &[rtt]);
            vec![throughput]
        }
        "cchat-keys" => vec![cchat::keys(number("members", 8), number("rounds", 10))],
        "cchat-fanout" => vec![cchat::fanout(
            number("members", 50),
            number("messages", 2000),
            number("window", 64),
        )],
        "xdr" => xdr::run(number("clients", 50), number("messages", 200)),
        "p2p" => p2p::run(number("messages", 2000), number("backlog", 1000)),
        "baselines" => json_pairs::baselines(
            number("pairs", 100),
            number("messages", 200),
            number("window", 32),
        ),
        "smoke" => vec![json_pairs::run(json_pairs::Params {
            pairs: 10,
            messages: 50,
            window: 8,
            durability: "flush",
        })],
        _ => usage(),
    };
    report::print_and_save(&scenario, &rows);
}
