//! The control room's dashboard in a real headless browser (Debian's chromium driven through
//! chromedriver's WebDriver API, installed by `scripts/browser.sh` when missing): the page
//! loads from the allocator's admin listener, its numbers move while an edge sends shakes,
//! "Go" with its confirmation step opens a round that the edge then hears of, and a screenshot
//! is written to `target/dashboard.png`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use shake_ops::http::{body_of, request_with_body};
use shake_proto::{AllocatorFrame, Batch, BatchEntry, RoundPhase};

/// chromium and chromedriver, installed if missing.
fn browser() -> (String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/browser.sh");
    let output = Command::new("bash").arg(script).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let mut lines = text.lines();
    (lines.next().unwrap().to_owned(), lines.next().unwrap().to_owned())
}

/// A WebDriver session on a chromedriver of its own; both end on drop.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start() -> Self {
        let (chromium, chromedriver) = browser();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut browser = Self { driver, addr, session: String::new() };
        let started = Instant::now();
        while browser.call("GET", "/status", None).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,900"
            ] }
        } } });
        let created = browser.call("POST", "/session", Some(capabilities)).unwrap();
        browser.session = created["sessionId"].as_str().expect("a session").to_owned();
        browser
    }

    /// One WebDriver call: the response's `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers = [("Content-Type", "application/json")];
        let response = request_with_body(self.addr, method, path, &headers, body.as_bytes())
            .map_err(|e| e.to_string())?;
        let value: Value = serde_json::from_str(body_of(&response)).map_err(|e| e.to_string())?;
        let value = value["value"].clone();
        if value.get("error").is_some() {
            return Err(value.to_string());
        }
        Ok(value)
    }

    fn session(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn element(&self, css: &str) -> Result<String, String> {
        let found = self.session(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        )?;
        Ok(found[ELEMENT].as_str().ok_or("no element id")?.to_owned())
    }

    fn text(&self, css: &str) -> String {
        self.element(css)
            .and_then(|id| self.session("GET", &format!("/element/{id}/text"), None))
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    }

    fn click(&self, css: &str) {
        let id = self.element(css).unwrap();
        self.session("POST", &format!("/element/{id}/click"), Some(json!({}))).unwrap();
    }

    /// Waits until `ok` accepts the text of `css`.
    fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let text = self.text(css);
            if ok(&text) {
                return text;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "{css}: {what}, still {text:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn screenshot(&self, path: &Path) {
        let png = self.session("GET", "/screenshot", None).unwrap();
        std::fs::write(path, base64_decode(png.as_str().unwrap())).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.session("DELETE", "", None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> =
        text.bytes().filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, c)| acc | u32::from(value(*c)) << (18 - 6 * i));
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_show_and_go_opens_a_round() {
    let scratch = Scratch::new("dashboard");
    let alloc = Allocator::start(&scratch.admin_config());
    let admin = alloc.admin.unwrap();
    let mut edge = edge_worker(alloc.quic, &scratch, 77).await.unwrap();
    edge.send(&AllocatorFrame::LoadReport { window_ms: 1000, offered: 2500, admitted: 40 }).await;

    let page = tokio::task::spawn_blocking(move || {
        let browser = Browser::start();
        browser
            .session(
                "POST",
                "/url",
                Some(json!({ "url": format!("http://{admin}/#token={TOKEN}") })),
            )
            .unwrap();
        browser.wait_text("#round-1 .phase", "round 1 shown waiting", |t| t == "waiting");
        browser.wait_text("#edge-1 .link", "edge 1 up", |t| t == "up");
        browser.wait_text("#edge-1 .offered", "edge 1's load", |t| t == "2500");
        browser.wait_text("#round-1 .countdown", "a countdown", |t| t.starts_with("opens in "));
        // "Go" asks first; only the confirmation sends the command.
        browser.click("#go-1");
        browser.wait_text("#confirm-text", "the confirmation step", |t| {
            t.contains("Open round 1 now?")
        });
        browser.click("#confirm-yes");
        browser.wait_text("#status", "the command's outcome", |t| t.contains("done: go round 1"));
        browser.wait_text("#round-1 .phase", "round 1 shown open", |t| t == "open");
        browser
    })
    .await
    .unwrap();

    // The edge hears the round open, and its shakes win: the page's numbers move.
    let opened = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let (AllocatorFrame::RoundState { round, .. }, _) = edge.recv().await.unwrap()
                && round.round_id == 1
                && round.phase == RoundPhase::Open
            {
                return round;
            }
        }
    })
    .await
    .expect("the edge heard round 1 open");
    assert!(opened.starts_at_ms <= now_ms());
    let entries: Vec<BatchEntry> =
        (0..8).map(|i| BatchEntry { user_id: 900 + i, offset_us: i as u32 }).collect();
    edge.send(&AllocatorFrame::Batch(Batch::new(1, 1, now_ms(), &entries))).await;
    let (_, winners, _) = edge.next_result().await.unwrap();
    assert!(!winners.is_empty());

    let shot = target_dir().join("dashboard.png");
    let won = winners.len();
    tokio::task::spawn_blocking(move || {
        page.wait_text("#awards-total", "the awards counter moved", |t| t == won.to_string());
        let left = page.wait_text("#round-1 .left", "prizes left", |t| t.ends_with("of 10"));
        assert_eq!(left, format!("{} of 10", 10 - won));
        page.screenshot(&shot);
        let png = std::fs::read(&shot).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG screenshot");
    })
    .await
    .unwrap();
    drop(alloc);
}
