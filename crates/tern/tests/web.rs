//! The web page ternd serves, end to end in a real browser: two real
//! daemons on TCP with tokens, and `web/e2e/web.mjs` (Playwright driving
//! Chromium headless) creating, starting, typing into, migrating and
//! checkpointing a probe-guest VM through the page, and being refused a
//! wrong token. Needs /dev/kvm, the probe guest, `node` and `chromium`
//! (`scripts/setup-test-deps.sh`); the npm packages come from
//! `web/package-lock.json` (`npm ci`, once).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tern_test_support::procs::{Spawned, Tag};
use tern_test_support::{poll, skip, Ternd};

const TEST: &str = "web_page_runs_a_vm_in_a_real_browser";

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web")
}

/// A daemon on TCP with a token file; its URL and token.
fn daemon(dir: &Path) -> (Ternd, String, String) {
    let token_file = dir.join("token");
    let d = Ternd::start_with(
        &dir.join("d"),
        &[
            "--tcp",
            "127.0.0.1:0",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let url = poll(Duration::from_secs(10), "the TCP address", || {
        d.log()
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .map(str::to_string)
    });
    let token = std::fs::read_to_string(&token_file).unwrap();
    (d, url, token.trim().to_string())
}

/// `npm ci` in web/ when Playwright is not installed yet; false (after a
/// SKIP) when that fails (no network and no cache).
fn npm_packages(test: &str) -> bool {
    if web_dir().join("node_modules/playwright-core").is_dir() {
        return true;
    }
    let Some(npm) = tern_test_support::tool(test, "npm") else {
        return false;
    };
    let out = Command::new(npm)
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(web_dir())
        .output()
        .expect("run npm ci");
    if !out.status.success() {
        skip(
            test,
            &format!(
                "npm ci in web/ failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        );
        return false;
    }
    true
}

#[test]
fn web_page_runs_a_vm_in_a_real_browser() {
    if !tern_test_support::kvm_available(TEST) {
        return;
    }
    let (Some(node), Some(chromium)) = (
        tern_test_support::tool(TEST, "node"),
        tern_test_support::tool(TEST, "chromium"),
    ) else {
        return;
    };
    if !npm_packages(TEST) {
        return;
    }
    tern_test_support::probe_guest();
    let tmp = tempfile::tempdir().unwrap();
    let (a, a_url, a_token) = daemon(&tmp.path().join("a"));
    let (b, b_url, b_token) = daemon(&tmp.path().join("b"));

    // The page is served without the token, the API not.
    let page = http_get(&a_url, "/");
    assert!(
        page.starts_with("HTTP/1.1 200") && page.contains("text/html"),
        "{page}"
    );
    let api = http_get(&a_url, "/v1/host");
    assert!(api.starts_with("HTTP/1.1 401"), "{api}");

    // Screenshots land in docs/screenshots when asked (TERN_WEB_SHOTS=1),
    // else in the scratch directory.
    let shots = if std::env::var_os("TERN_WEB_SHOTS").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots")
    } else {
        tmp.path().join("shots")
    };
    let mut cmd = Command::new(node);
    cmd.arg("e2e/web.mjs")
        .current_dir(web_dir())
        .env("TERN_A_URL", &a_url)
        .env("TERN_A_TOKEN", &a_token)
        .env("TERN_B_URL", &b_url)
        .env("TERN_B_TOKEN", &b_token)
        .env("CHROMIUM", chromium)
        .env("TERN_SHOTS", &shots)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Node and its browser under a tag of their own: killed on a panic.
    let start = Instant::now();
    let tag = Tag::new();
    let mut e2e = Spawned::spawn(&mut cmd, &tag).expect("start node");
    let waiter = std::thread::spawn(move || {
        let out = e2e.wait_output().expect("wait for node");
        (e2e, out)
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            tag.kill_all();
            panic!(
                "the browser test ran past 180 s; daemon A:\n{}\ndaemon B:\n{}",
                a.log(),
                b.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_e2e, out) = waiter.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "browser test: {:.1} s\n{stdout}{stderr}",
        start.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "the browser test failed ({}):\n{stderr}\ndaemon A:\n{}\ndaemon B:\n{}",
        out.status,
        a.log(),
        b.log()
    );
    assert!(stdout.contains(r#""step":"done""#), "{stdout}");
    // What the page did is what the daemons did.
    assert_eq!(b.state("web1")["state"], "running");
    a.fails(&["vm", "show", "web1"], 2, "no VM named");
}

/// A plain HTTP/1.1 GET without a token; the reply's head and body.
fn http_get(base: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
