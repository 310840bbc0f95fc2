//! A small WebDriver client for Debian's headless chromium through chromedriver (both found,
//! or installed with apt-get, by `scripts/browser.sh`): open a page, read and click elements,
//! take a screenshot. The dashboard's browser test and `shake-bench screenshot` use it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http::{body_of, request_with_body};

/// The W3C name of an element reference in a WebDriver answer.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// What went wrong with the browser.
#[derive(Debug, thiserror::Error)]
pub enum WebDriverError {
    /// `scripts/browser.sh` found or installed no browser.
    #[error("no browser: {0}")]
    NoBrowser(String),
    /// chromedriver did not start or answer.
    #[error("chromedriver: {0}")]
    Driver(String),
    /// A WebDriver call failed (its answer, or why there was none).
    #[error("webdriver call {call}: {why}")]
    Call {
        /// The call.
        call: String,
        /// Its error.
        why: String,
    },
    /// An element's text never became what was waited for.
    #[error("{css}: still {text:?} after {waited_s} s")]
    Timeout {
        /// The element.
        css: String,
        /// Its last text.
        text: String,
        /// Seconds waited.
        waited_s: u64,
    },
    /// Writing the screenshot.
    #[error("screenshot: {0}")]
    Io(#[from] std::io::Error),
}

/// A headless chromium session on a chromedriver of its own; both end on drop.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
}

impl Browser {
    /// Finds (or installs) the browser with `browser_script` and starts a session with a
    /// 1400x900 window.
    pub fn start(browser_script: &Path) -> Result<Self, WebDriverError> {
        let output = Command::new("bash")
            .arg(browser_script)
            .output()
            .map_err(|e| WebDriverError::NoBrowser(e.to_string()))?;
        if !output.status.success() {
            return Err(WebDriverError::NoBrowser(
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ));
        }
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let mut lines = text.lines();
        let (Some(chromium), Some(chromedriver)) = (lines.next(), lines.next()) else {
            return Err(WebDriverError::NoBrowser(format!("browser.sh printed {text:?}")));
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| WebDriverError::Driver(e.to_string()))?
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| WebDriverError::Driver(e.to_string()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut browser = Self { driver, addr, session: String::new() };
        let started = Instant::now();
        while browser.call("GET", "/status", None).is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                return Err(WebDriverError::Driver("did not answer within 20 s".into()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,900"
            ] }
        } } });
        let created = browser.call("POST", "/session", Some(capabilities))?;
        browser.session = created["sessionId"]
            .as_str()
            .ok_or_else(|| WebDriverError::Driver("no session id".into()))?
            .to_owned();
        Ok(browser)
    }

    /// One WebDriver call: the answer's `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WebDriverError> {
        let failed = |why: String| WebDriverError::Call { call: format!("{method} {path}"), why };
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers = [("Content-Type", "application/json")];
        let response = request_with_body(self.addr, method, path, &headers, body.as_bytes())
            .map_err(|e| failed(e.to_string()))?;
        let answer: Value =
            serde_json::from_str(body_of(&response)).map_err(|e| failed(e.to_string()))?;
        let value = answer["value"].clone();
        if value.get("error").is_some() {
            return Err(failed(value.to_string()));
        }
        Ok(value)
    }

    fn session(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Opens `url`.
    pub fn open(&self, url: &str) -> Result<(), WebDriverError> {
        self.session("POST", "/url", Some(json!({ "url": url }))).map(drop)
    }

    /// The address the page is at now.
    pub fn url(&self) -> Result<String, WebDriverError> {
        self.session("GET", "/url", None).map(|v| v.as_str().unwrap_or_default().to_owned())
    }

    fn element(&self, css: &str) -> Result<String, WebDriverError> {
        let found = self.session(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        )?;
        found[ELEMENT].as_str().map(str::to_owned).ok_or_else(|| WebDriverError::Call {
            call: format!("find {css}"),
            why: "no element id".into(),
        })
    }

    /// The text of the first element `css` selects ("" when there is none).
    pub fn text(&self, css: &str) -> String {
        self.element(css)
            .and_then(|id| self.session("GET", &format!("/element/{id}/text"), None))
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    }

    /// Clicks the first element `css` selects.
    pub fn click(&self, css: &str) -> Result<(), WebDriverError> {
        let id = self.element(css)?;
        self.session("POST", &format!("/element/{id}/click"), Some(json!({}))).map(drop)
    }

    /// Waits up to `within` until `ok` accepts the text of `css`; the text.
    pub fn wait_text(
        &self,
        css: &str,
        within: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> Result<String, WebDriverError> {
        let started = Instant::now();
        loop {
            let text = self.text(css);
            if ok(&text) {
                return Ok(text);
            }
            if started.elapsed() > within {
                let waited_s = within.as_secs();
                return Err(WebDriverError::Timeout { css: css.into(), text, waited_s });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Writes a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) -> Result<(), WebDriverError> {
        let png = self.session("GET", "/screenshot", None)?;
        let encoded = png.as_str().ok_or_else(|| WebDriverError::Call {
            call: "screenshot".into(),
            why: "no image".into(),
        })?;
        std::fs::write(path, base64_decode(encoded))?;
        Ok(())
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

/// Standard base64 (padding and line breaks ignored).
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

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(super::base64_decode("aGVsbG8="), b"hello");
        assert_eq!(super::base64_decode("aGVsbG8h"), b"hello!");
        assert_eq!(super::base64_decode("aGk=\n"), b"hi");
    }
}
