//! The control room's dashboard in a real headless browser (Debian's chromium driven through
//! chromedriver's WebDriver API, installed by `scripts/browser.sh` when missing): the page
//! loads from the allocator's admin listener, its numbers move while an edge sends shakes,
//! "Go" with its confirmation step opens a round that the edge then hears of, and a screenshot
//! is written to `target/dashboard.png`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shake_ops::webdriver::Browser;
use shake_proto::{AllocatorFrame, Batch, BatchEntry, RoundPhase, VerdictCounts};
use shake_testkit::edge_link::edge_worker;
use shake_testkit::now_ms;
use shake_testkit::scratch::{ADMIN_TOKEN, Scratch};
use shake_testkit::servers::Allocator;

/// A headless browser session (chromium and chromedriver installed if missing).
fn browser() -> Browser {
    Browser::start(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/browser.sh")).unwrap()
}

/// Waits until `ok` accepts the text of `css`, naming `what` if it never does.
fn wait(page: &Browser, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    page.wait_text(css, Duration::from_secs(20), ok).unwrap_or_else(|e| panic!("{what}: {e}"))
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
    let verdicts = VerdictCounts { no_luck: 2000, slow_down: 60, round_closed: 0, forwarded: 440 };
    edge.send(&AllocatorFrame::WorkerStats { phones: 1234, verdicts }).await;

    let page = tokio::task::spawn_blocking(move || {
        let browser = browser();
        browser.open(&format!("http://{admin}/#token={ADMIN_TOKEN}")).unwrap();
        wait(&browser, "#round-1 .phase", "round 1 shown waiting", |t| t == "waiting");
        // The token given in the address leaves the address bar (and the history).
        let url = browser.url().unwrap();
        assert!(!url.contains(ADMIN_TOKEN) && url.starts_with("http://"), "{url}");
        wait(&browser, "#edge-1 .link", "edge 1 up", |t| t == "up");
        wait(&browser, "#edge-1 .offered", "edge 1's load", |t| t == "2500");
        wait(&browser, "#edge-1 .phones", "edge 1's phones", |t| t == "1234");
        wait(&browser, "#phones-total", "the phones tile", |t| t == "1234");
        wait(&browser, "#edge-1 .forwarded", "edge 1's verdict mix", |t| t == "440");
        wait(&browser, "#edge-1 .slow-down", "edge 1's verdict mix", |t| t == "60");
        wait(&browser, "#round-1 .countdown", "a countdown", |t| t.starts_with("opens in "));
        // "Go" asks first; only the confirmation sends the command.
        browser.click("#go-1").unwrap();
        wait(&browser, "#confirm-text", "the confirmation step", |t| {
            t.contains("Open round 1 now?")
        });
        browser.click("#confirm-yes").unwrap();
        wait(&browser, "#status", "the command's outcome", |t| t.contains("done: go round 1"));
        wait(&browser, "#round-1 .phase", "round 1 shown open", |t| t == "open");
        browser
    })
    .await
    .unwrap();

    // The edge hears the round open, and its shakes win: the page's numbers move.
    let opened = edge.recv_until(Duration::from_secs(10), |frame, _| match frame {
        AllocatorFrame::RoundState { round, .. }
            if round.round_id == 1 && round.phase == RoundPhase::Open =>
        {
            Some(round)
        }
        _ => None,
    });
    let opened = opened.await.expect("the edge heard round 1 open");
    assert!(opened.starts_at_ms <= now_ms());
    let entries: Vec<BatchEntry> =
        (0..8).map(|i| BatchEntry { user_id: 900 + i, offset_us: i as u32 }).collect();
    edge.send(&AllocatorFrame::Batch(Batch::new(1, 1, now_ms(), &entries))).await;
    let (_, winners, _) = edge.next_result().await.unwrap();
    assert!(!winners.is_empty());

    let shot = target_dir().join("dashboard.png");
    let won = winners.len();
    tokio::task::spawn_blocking(move || {
        wait(&page, "#awards-total", "the awards counter moved", |t| t == won.to_string());
        wait(&page, "#award-latency", "the award latency", |t| t.ends_with(" ms"));
        let left = wait(&page, "#round-1 .left", "prizes left", |t| t.ends_with("of 10"));
        assert_eq!(left, format!("{} of 10", 10 - won));
        page.screenshot(&shot).unwrap();
        let png = std::fs::read(&shot).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG screenshot");
        // Pause and resume from the page, each with its confirmation.
        page.click("#pause-1").unwrap();
        wait(&page, "#confirm-text", "the pause's confirmation", |t| t.contains("Pause round 1"));
        page.click("#confirm-yes").unwrap();
        wait(&page, "#round-1 .phase", "round 1 shown paused", |t| t == "paused");
        wait(&page, "#round-1 .countdown", "the time left", |t| t.starts_with("paused, left "));
        page.click("#resume-1").unwrap();
        wait(&page, "#confirm-text", "the resume's confirmation", |t| t.contains("Resume round 1"));
        page.click("#confirm-yes").unwrap();
        wait(&page, "#round-1 .phase", "round 1 shown open again", |t| t == "open");
    })
    .await
    .unwrap();
    drop(alloc);
}
