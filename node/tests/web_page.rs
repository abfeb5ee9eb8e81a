//! The node's web page in a real headless Chromium against a 3-node job while it runs: the page
//! takes the token from its address, and the DOM it renders shows the node's peers, the job, its
//! rounds with the accuracy and loss plot, and its members, live; a screenshot is kept in the
//! target directory (`tmp/web-page.png`). Skipped, loudly, only when no Chromium is installed and `CI`
//! is not set (`.ci/run` installs Debian's `chromium`).

mod common;

use common::{Job, federation, plain, wait_for};
use fedmesh_admin_api::Endpoint;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The first Chromium found on PATH.
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
        let found = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().ok()?;
        let path = String::from_utf8_lossy(&found.stdout).trim().to_owned();
        (found.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
    })
}

/// Runs headless Chromium on `url` with `args`, giving the page 8 s (virtual time) to load.
fn headless(browser: &PathBuf, url: &str, args: &[&str]) -> Output {
    let profile = tempfile::tempdir().unwrap();
    Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=8000", "--window-size=1200,1800"])
        .args(args)
        .arg(url)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_web_page_shows_peers_jobs_rounds_and_members_in_chromium() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but no chromium is installed (apt-get install -y chromium)"
        );
        eprintln!("\n\n*** SKIPPED: no chromium on PATH; the web page was NOT tested. ***\n\n");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let cluster = federation(root.path(), 3, plain).await;
    // Long enough to still run while the browser looks (a fraction of a second a round).
    let job = Job::new(500, 3).announce(&cluster).await;
    wait_for(&cluster, 0, &job, "three rounds", |run| run.completed_round >= 3).await;
    let endpoint = Endpoint::read(&cluster.nodes[0].data_dir()).unwrap();
    let url = format!("http://{}/#token={}", endpoint.address, endpoint.token);

    let browser_for_dom = browser.clone();
    let dom_url = url.clone();
    let output =
        tokio::task::spawn_blocking(move || headless(&browser_for_dom, &dom_url, &["--dump-dom"]))
            .await
            .unwrap();
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(dom.contains("data-loaded=\"yes\""), "the page did not load its data:\n{dom}");
    assert!(dom.contains(&cluster.nodes[0].peer_id), "{dom}");
    assert!(dom.contains("<span id=\"peer-count\">2</span>"), "{dom}");
    assert!(dom.contains(&format!("data-job=\"{job}\"")), "{dom}");
    assert!(dom.contains(" (running)</h2>"), "{dom}");
    assert!(dom.contains(" of 500, model "), "{dom}");
    // The plot: an accuracy point for each evaluated round (at least the three waited for),
    // and as many rows in the rounds table at least.
    let accuracy_line = dom.split("class=\"accuracy\"").next().and_then(|before| {
        before.rsplit("points=\"").next().and_then(|points| points.split('"').next())
    });
    let points = accuracy_line.map_or(0, |points| points.split_whitespace().count());
    let rows = dom.split("class=\"rounds\"").nth(1).map_or(0, |t| t.matches("<tr>").count() - 1);
    assert!(points >= 3 && rows >= points, "{points} points, {rows} rows:\n{dom}");
    assert_eq!(dom.matches("class=\"state live\">live").count(), 3, "{dom}");
    for member in &cluster.nodes {
        assert!(dom.contains(&member.peer_id), "member {} missing:\n{dom}", member.peer_id);
    }

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let flag = format!("--screenshot={}", screenshot.display());
    let output =
        tokio::task::spawn_blocking(move || headless(&browser, &url, &[&flag])).await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "{} bytes", png.len());
    eprintln!("screenshot of the web page: {}", screenshot.display());
}
