//! `tern-bench boot`: start-up time of `tern run --guest probe:hello`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tern_worker::exit_code;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `tern-bench boot`; returns the exit code.
pub fn run(runs: usize, memory: u64) -> i32 {
    let exe = match crate::tern_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("tern-bench: error: {e}");
            return exit_code::SOFTWARE;
        }
    };
    let (mut first, mut exit) = (Vec::new(), Vec::new());
    for i in 0..runs.max(1) {
        let start = Instant::now();
        let child = Command::new(&exe)
            .args(["run", "--guest", "probe:hello", "--memory"])
            .arg(memory.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                eprintln!("tern-bench: error: cannot start tern run: {e}");
                return exit_code::SOFTWARE;
            }
        };
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut byte = [0u8; 1];
        let got = stdout.read(&mut byte).unwrap_or(0);
        let t_first = start.elapsed();
        let mut rest = Vec::new();
        let _ = stdout.read_to_end(&mut rest);
        let status = child.wait();
        let t_exit = start.elapsed();
        match status {
            Ok(s) if s.success() && got == 1 => {}
            other => {
                eprintln!("tern-bench: error: run {i} failed: {other:?}");
                return exit_code::SOFTWARE;
            }
        }
        println!(
            "{}",
            json!({"bench": "boot", "run": i, "memory": memory,
                   "first_serial_byte_ms": ms(t_first), "exit_ms": ms(t_exit)})
        );
        first.push(ms(t_first));
        exit.push(ms(t_exit));
    }
    println!(
        "{}",
        json!({"bench": "boot", "summary": true, "runs": first.len(), "memory": memory,
               "median_first_serial_byte_ms": median(&mut first),
               "median_exit_ms": median(&mut exit),
               "firecracker_target_ms": 125.0,
               "fraction_of_firecracker_target": median(&mut first.clone()) / 125.0})
    );
    exit_code::OK
}
