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
//! cargo run --release -p hub-bench -- baselines [--pairs 100] [--messages 3000] [--window 32] [--rounds 3]
//! cargo run --release -p hub-bench -- relay [--pairs 100] [--messages 3000] [--window 32] [--rounds 3]
//! cargo run --release -p hub-bench -- store [--pairs 100] [--messages 200] [--window 32]
//! cargo run --release -p hub-bench -- latency [--pairs 20] [--seconds 10] [--load 10,50,80 | --rate MSGS,..] [--durability flush|interval]
//! cargo run --release -p hub-bench -- room-fanout [--messages 500] [--window 32]
//! cargo run --release -p hub-bench -- idle [--clients 10000,max]
//! cargo run --release -p hub-bench -- storm [--clients 10000] [--seconds 10] [--messages 20000]
//! cargo run --release -p hub-bench -- backlog [--messages 100000]
//! cargo run --release -p hub-bench -- all        # every scenario above, in one run
//! cargo run -p hub-bench -- smoke                # each JSON scenario, small (CI)
//! ```

#![forbid(unsafe_code)]

mod backlog;
mod cchat;
mod common;
mod idle;
mod json_pairs;
mod latency;
mod p2p;
mod peer;
mod plot;
mod relay;
mod report;
mod retro_pairs;
mod room;
mod store;
mod storm;
mod xdr;

use std::collections::HashMap;

fn usage() -> ! {
    eprintln!(
        "usage: hub-bench <json-pairs|retro-pairs|cchat-keys|cchat-fanout|xdr|p2p|baselines|relay|store|latency|room-fanout|idle|storm|backlog|all|smoke> [--pairs N] [--members N] [--clients N[,max]] [--messages N] [--backlog N] [--window N] [--rounds N] [--seconds S] [--load PCT,..] [--rate MSGS,..] [--durability flush|interval]"
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
            number("messages", json_pairs::MESSAGES),
            number("window", 32),
            number("rounds", 3),
        ),
        "relay" => (0..number("rounds", 3))
            .map(|_| {
                json_pairs::run_on(
                    json_pairs::Target::Relay,
                    json_pairs::Params {
                        pairs: number("pairs", 100),
                        messages: number("messages", json_pairs::MESSAGES),
                        window: number("window", 32),
                        durability: "flush",
                    },
                )
            })
            .collect(),
        "store" => ["flush", "interval"]
            .into_iter()
            .map(|durability| {
                store::run(store::Params {
                    pairs: number("pairs", 100),
                    messages: number("messages", 200),
                    window: number("window", 32),
                    durability,
                })
            })
            .collect(),
        "latency" => {
            let fractions: Vec<f64> = flags
                .get("load")
                .map_or("10,50,80", String::as_str)
                .split(',')
                .map(|pct| pct.parse::<f64>().unwrap_or_else(|_| usage()) / 100.0)
                .collect();
            let durability = match flags.get("durability").map(String::as_str) {
                None | Some("flush") => "flush",
                Some("interval") => "interval",
                Some(_) => usage(),
            };
            let (pairs, seconds) = (number("pairs", latency::PAIRS), seconds(&flags, 10.0));
            let rounds = number("rounds", 1);
            match flags.get("rate") {
                Some(rates) => {
                    let rates: Vec<f64> = rates
                        .split(',')
                        .map(|r| r.parse().unwrap_or_else(|_| usage()))
                        .collect();
                    latency::run_rates(pairs, seconds, &rates, durability, rounds)
                }
                None => latency::run(pairs, seconds, &fractions, durability, rounds),
            }
        }
        "room-fanout" => [50, 500]
            .into_iter()
            .map(|members| room::run(members, number("messages", 500), number("window", 32)))
            .collect(),
        "idle" => {
            let counts = flags.get("clients").map_or("10000,max", String::as_str);
            counts
                .split(',')
                .map(|c| match c {
                    "max" => idle::max_clients(),
                    n => n.parse().unwrap_or_else(|_| usage()),
                })
                .map(idle::run)
                .collect()
        }
        "storm" => vec![storm::run(storm::Params {
            clients: number("clients", 10_000),
            window_secs: seconds(&flags, 10.0),
            messages: number("messages", 20_000),
        })],
        "backlog" => vec![backlog::run(number("messages", 100_000))],
        "all" => {
            all();
            return;
        }
        "smoke" => {
            smoke();
            return;
        }
        _ => usage(),
    };
    report::print_and_save(&scenario, &rows);
}

fn seconds(flags: &HashMap<String, String>, default: f64) -> f64 {
    flags
        .get("seconds")
        .map(|v| v.parse().unwrap_or_else(|_| usage()))
        .unwrap_or(default)
}

/// Every issue-8 scenario at full size, each saved under its own name.
fn all() {
    let mut throughput = json_pairs::baselines(100, json_pairs::MESSAGES, 32, 3);
    throughput.extend(["flush", "interval"].into_iter().map(|durability| {
        let params = store::Params {
            pairs: 100,
            messages: json_pairs::MESSAGES,
            window: 32,
            durability,
        };
        json_pairs::median_run((0..3).map(|_| store::run(params)).collect())
    }));
    report::print_and_save("throughput", &throughput);
    let mut rows = latency::run(latency::PAIRS, 10.0, &[0.1, 0.5, 0.8], "flush", 3);
    rows.extend(latency::run(
        latency::PAIRS,
        10.0,
        &[0.1, 0.5],
        "interval",
        3,
    ));
    report::print_and_save("latency", &rows);
    let rooms: Vec<_> = [50, 500]
        .into_iter()
        .map(|m| room::run(m, 500, 32))
        .collect();
    report::print_and_save("room-fanout", &rooms);
    let idle: Vec<_> = [10_000, idle::max_clients()]
        .into_iter()
        .map(idle::run)
        .collect();
    report::print_and_save("idle", &idle);
    let storm = storm::run(storm::Params {
        clients: 10_000,
        window_secs: 10.0,
        messages: 20_000,
    });
    report::print_and_save("storm", &[storm]);
    report::print_and_save("backlog", &[backlog::run(100_000)]);
}

/// Each JSON scenario and the baselines but the peer, small enough for CI (well under
/// a minute); the numbers are printed, not judged.
fn smoke() {
    let mut rows = vec![
        json_pairs::run(json_pairs::Params {
            pairs: 10,
            messages: 50,
            window: 8,
            durability: "flush",
        }),
        json_pairs::run_on(
            json_pairs::Target::Relay,
            json_pairs::Params {
                pairs: 10,
                messages: 50,
                window: 8,
                durability: "flush",
            },
        ),
        store::run(store::Params {
            pairs: 10,
            messages: 50,
            window: 8,
            durability: "flush",
        }),
    ];
    report::print_and_save("smoke-throughput", &rows);
    rows = latency::run(10, 1.0, &[0.5], "flush", 1);
    report::print_and_save("smoke-latency", &rows);
    report::print_and_save("smoke-room", &[room::run(10, 50, 8)]);
    report::print_and_save("smoke-idle", &[idle::run(200)]);
    let storm = storm::run(storm::Params {
        clients: 200,
        window_secs: 1.0,
        messages: 400,
    });
    report::print_and_save("smoke-storm", &[storm]);
    report::print_and_save("smoke-backlog", &[backlog::run(2_000)]);
}
