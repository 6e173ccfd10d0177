//! A headless browser for the report tests: the page is laid out and its
//! own check run by a real engine, not read as text.

use std::path::Path;
use std::process::Command;

/// The browser to render reports with: Debian's `chromium` (CI installs it).
pub fn chromium() -> &'static str {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return name;
        }
    }
    panic!("no headless browser found: install Debian's `chromium` (apt-get install -y chromium)");
}

/// The browser, headless, with its own profile folder and a window of
/// `width` × `height` (what a screenshot holds).
pub fn headless(profile: &Path, (width, height): (u32, u32)) -> Command {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ])
    .arg(format!("--window-size={width},{height}"))
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// The page's DOM after load (and after its scripts ran).
pub fn dump_dom(profile: &Path, page: &Path) -> String {
    let out = headless(profile, (1100, 2400))
        .arg("--dump-dom")
        .arg(url(page))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A PNG of the page at `size`, written to `shot`; its bytes.
pub fn screenshot(profile: &Path, page: &Path, shot: &Path, size: (u32, u32)) -> Vec<u8> {
    let out = headless(profile, size)
        .arg(format!("--screenshot={}", shot.display()))
        .arg(url(page))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(shot).unwrap()
}

fn url(page: &Path) -> String {
    format!("file://{}", page.display())
}

/// An attribute of the first element that has it, in dumped HTML.
pub fn attr<'a>(dom: &'a str, name: &str) -> &'a str {
    let start = dom
        .find(&format!("{name}=\""))
        .unwrap_or_else(|| panic!("no {name}"))
        + name.len()
        + 2;
    &dom[start..start + dom[start..].find('"').unwrap()]
}

/// A PNG's width and height, from its header.
pub fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}
