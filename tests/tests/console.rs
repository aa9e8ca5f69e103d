//! The web console (`/ui`, docs/operations.md § The web console) in a real headless browser:
//! Debian's chromium, driven through chromedriver over WebDriver. On node 2 of three, a user
//! creates a topic in the form, publishes a record from the form, sees it in the partition
//! view and in the live tail, and watches a group's lag fall after a commit.
//!
//! Needs the binary (`cargo build -p psubd` first) and the Debian packages `chromium` and
//! `chromium-driver` (CI installs them; see .ci/run). Without them the test fails, naming
//! the packages.
//!
//! With `PSUBD_SCREENSHOTS=docs/screenshots` (a directory, relative to the repository's
//! root) it also saves the screenshots docs/operations.md shows; a normal run writes none.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use psubd_tests::{eventually, Cluster, NewRecord};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const TOPIC: &str = "console-orders";
const GROUP: &str = "console-readers";
/// Page loads and polls of a loaded machine: the console polls every 2 s.
const WAIT: Duration = Duration::from_secs(30);

/// chromedriver and a chromium session with a fresh profile; both end when dropped.
struct Browser {
    driver: Child,
    client: Client,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session's chromium is a child of chromedriver: ending chromedriver's process
        // group ends both.
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Browser {
    async fn start() -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the console's browser test needs Debian's packages \
                 `chromium` and `chromium-driver` (apt-get install chromium chromium-driver; \
                 .ci/run installs them), here `{package}`"
            );
        }
        let port = free_port();
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("chromedriver starts")
        };
        let profile = tempfile::tempdir().expect("a profile directory");
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    // Without these the browser calls out to the network, which is closed
                    // where tests run, and waits on the refused connections.
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        let url = format!("http://127.0.0.1:{port}");
        let client = eventually(WAIT, "chromedriver opened a chromium session", || {
            let capabilities = capabilities.clone();
            let url = url.clone();
            async move {
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&url)
                    .await
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        Browser {
            driver,
            client,
            _profile: profile,
        }
    }

    /// Ends the session: chromium exits and removes its temporary files (killing it, as a
    /// drop after a failure does, leaves them behind).
    async fn close(self) {
        if let Err(e) = self.client.clone().close().await {
            eprintln!("closing the browser session: {e}");
        }
    }

    /// The text of the first element matching `css`, once there.
    async fn text(&self, css: &str) -> Result<String, String> {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .map_err(|e| format!("{css}: {e}"))?;
        element.text().await.map_err(|e| format!("{css}: {e}"))
    }

    /// Waits until the element matching `css` shows a text that `expected` accepts.
    async fn wait_text(&self, css: &str, what: &str, expected: impl Fn(&str) -> bool) -> String {
        eventually(WAIT, what, || async {
            let text = self.text(css).await?;
            if expected(&text) {
                Ok(text)
            } else {
                Err(format!("{css} shows {text:?}"))
            }
        })
        .await
    }

    /// Types `text` into the field `css`, replacing what it held.
    async fn fill(&self, css: &str, text: &str) {
        let field = self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        field.clear().await.unwrap_or_else(|e| panic!("{css}: {e}"));
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
    }

    async fn click(&self, css: &str) {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
    }

    async fn open(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
    }

    /// Saves a screenshot as `<dir>/<name>.png` when `PSUBD_SCREENSHOTS` names a directory.
    async fn screenshot(&self, name: &str) {
        let Some(dir) = screenshot_dir() else {
            return;
        };
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::create_dir_all(&dir).expect("the screenshot directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("the screenshot written");
    }
}

/// `PSUBD_SCREENSHOTS`, relative to the repository's root.
fn screenshot_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("PSUBD_SCREENSHOTS")?;
    Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_manages_topics_records_and_groups_from_the_console_of_any_node() {
    let browser = Browser::start().await;
    let cluster = Cluster::start(3).await;
    let ui = format!("{}/ui", cluster.http(2));

    // The cluster as node 2 sees it: three nodes alive and a controller leader.
    browser.open(&format!("{ui}#/cluster")).await;
    browser
        .wait_text("#nodes-alive", "three nodes alive", |t| t == "3 / 3")
        .await;
    browser
        .wait_text("#controller-leader", "a controller leader", |t| {
            t.parse::<u64>().is_ok()
        })
        .await;

    // A topic made in the form; the page moves to it and shows its partitions' leaders.
    browser.open(&format!("{ui}#/topics")).await;
    browser.fill("#topic-name", TOPIC).await;
    browser.fill("#topic-partitions", "2").await;
    browser.click("#create-topic").await;
    eventually(WAIT, "both partitions shown with a leader", || async {
        let rows = browser
            .client
            .find_all(Locator::Css("#partitions tbody tr"))
            .await
            .map_err(|e| e.to_string())?;
        let mut led = 0;
        for row in &rows {
            let text = row.text().await.map_err(|e| e.to_string())?;
            if !text.contains("none") {
                led += 1;
            }
        }
        if rows.len() == 2 && led == 2 {
            Ok(())
        } else {
            Err(format!("{} rows, {led} with a leader", rows.len()))
        }
    })
    .await;
    let created = cluster.node(1).partitions(TOPIC).await;
    assert_eq!(
        created.len(),
        2,
        "the form created the topic with 2 partitions"
    );

    // Partition 0: read (empty), start the live tail, publish from the form.
    browser.open(&format!("{ui}#/topics/{TOPIC}/0")).await;
    browser
        .wait_text("#records-area", "the empty partition read", |t| {
            t.contains("No records")
        })
        .await;
    browser.click("#tail-toggle").await;
    browser
        .wait_text("#tail-toggle", "the tail running", |t| {
            t == "Stop live tail"
        })
        .await;
    browser.fill("#publish-key", "alice").await;
    browser.fill("#publish-value", r#"{"order": 1}"#).await;
    browser.click("#publish-submit").await;
    browser
        .wait_text("#publish-result", "the publish acknowledged", |t| {
            t.contains("partition 0 at offset 0")
        })
        .await;
    let stored = cluster.node(3).fetch_all(TOPIC, 0).await;
    assert_eq!(stored.len(), 1, "the form's record is in the partition");
    assert_eq!(stored[0].value, json!({"order": 1}));
    browser
        .wait_text(
            "#tail li[data-offset='0']",
            "the record in the live tail",
            |t| t.contains("alice") && t.contains(r#""order": 1"#),
        )
        .await;
    browser.click("#fetch-records").await;
    browser
        .wait_text(
            "#records tr[data-offset='0']",
            "the record in the partition view",
            |t| t.contains("alice") && t.contains(r#""order": 1"#),
        )
        .await;
    // The same value as base64: the bytes of its JSON text.
    browser
        .client
        .find(Locator::Css("#value-format"))
        .await
        .expect("the format select")
        .select_by_value("base64")
        .await
        .expect("base64 chosen");
    browser
        .wait_text("#records tr[data-offset='0']", "the value as base64", |t| {
            t.contains("eyJvcmRlciI6MX0=")
        })
        .await;
    browser.screenshot("records").await;

    // The topic page with the partition's high watermark moved.
    browser.open(&format!("{ui}#/topics/{TOPIC}")).await;
    browser
        .wait_text(
            "#partitions tr[data-partition='0'] td.hw",
            "high watermark 1",
            |t| t == "1",
        )
        .await;
    browser.screenshot("topic").await;

    // A group that read nothing yet: 5 more records, a commit at 1, lag 5; a commit at the
    // end, lag 0 — on the page.
    let node = cluster.node(1);
    let records: Vec<NewRecord> = (0..5)
        .map(|i| NewRecord {
            partition: Some(0),
            ..NewRecord::keyed("alice", json!({"order": i + 2}))
        })
        .collect();
    node.publish(TOPIC, &records).await;
    let member = node.join_earliest(GROUP, &[TOPIC], 30_000).await;
    node.commit_member(GROUP, &member, TOPIC, 0, 1).await;
    browser.open(&format!("{ui}#/groups/{GROUP}")).await;
    let lag = "#offsets td.lag[data-topic='console-orders'][data-partition='0']";
    browser.wait_text(lag, "lag 5 shown", |t| t == "5").await;
    node.commit_member(GROUP, &member, TOPIC, 0, 6).await;
    browser.wait_text(lag, "lag 0 shown", |t| t == "0").await;
    browser
        .wait_text("#group-lag-total", "total lag 0", |t| t == "0")
        .await;
    browser.screenshot("group").await;

    // Back on the cluster page: the new topic and its partitions' leaders counted.
    browser.open(&format!("{ui}#/cluster")).await;
    browser
        .wait_text("#topic-count", "the topic counted", |t| t == "1")
        .await;
    eventually(WAIT, "the partitions' leaders counted per node", || async {
        let cells = browser
            .client
            .find_all(Locator::Css("#nodes td.led"))
            .await
            .map_err(|e| e.to_string())?;
        let mut led = 0;
        for cell in &cells {
            let text = cell.text().await.map_err(|e| e.to_string())?;
            led += text.parse::<u64>().map_err(|e| format!("{text:?}: {e}"))?;
        }
        // Each partition node 2's API names a leader for is counted on that leader's row.
        let info = cluster
            .node(2)
            .try_get_json("/v1/cluster")
            .await
            .map_err(|e| e.to_string())?;
        let with_leader = info["partitions"]
            .as_array()
            .map_or(0, |p| p.iter().filter(|p| p["leader"].is_u64()).count())
            as u64;
        if led == with_leader && led >= 2 {
            Ok(())
        } else {
            Err(format!(
                "{led} leaders counted, the API names {with_leader}"
            ))
        }
    })
    .await;
    browser.screenshot("cluster").await;
    browser.close().await;
}

/// docs/operations.md § The web console: under `--auth` the page loads without a key, asks
/// for one, keeps it in the tab's session storage and sends it with every call, writes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_auth_the_console_asks_for_a_key_and_sends_it() {
    let browser = Browser::start().await;
    let dir = tempfile::tempdir().expect("a key directory");
    let admin_key = "admin.the-console-test-admin-secret-0123456789";
    let key_file = dir.path().join("admin-key");
    std::fs::write(&key_file, format!("{admin_key}\n")).expect("the admin key file");
    let key_path = key_file.display().to_string();
    let cluster = Cluster::start_with_env(
        1,
        &[("PSUBD_AUTH", "true"), ("PSUBD_ADMIN_KEY_FILE", &key_path)],
    )
    .await;
    let ui = format!("{}/ui", cluster.http(1));

    browser.open(&format!("{ui}#/topics")).await;
    eventually(WAIT, "the key form shown", || async {
        let form = browser
            .client
            .find(Locator::Css("#key-form"))
            .await
            .map_err(|e| e.to_string())?;
        match form.is_displayed().await {
            Ok(true) => Ok(()),
            other => Err(format!("displayed: {other:?}")),
        }
    })
    .await;
    browser.fill("#key-input", admin_key).await;
    browser.click("#key-form button[type='submit']").await;
    browser
        .wait_text("#view", "the topics listed with the key", |t| {
            t.contains("No topics yet.")
        })
        .await;
    let kept = browser
        .client
        .execute("return sessionStorage.getItem('psubd.apiKey');", vec![])
        .await
        .expect("session storage read");
    assert_eq!(kept, json!(admin_key), "the key is kept for the tab");

    browser.fill("#topic-name", "guarded").await;
    browser.click("#create-topic").await;
    browser
        .wait_text("#topic-settings", "the created topic shown", |t| {
            !t.is_empty()
        })
        .await;
    let resp = cluster
        .client()
        .get(format!("{}/v1/topics/guarded", cluster.http(1)))
        .bearer_auth(admin_key)
        .send()
        .await
        .expect("the topic read");
    assert_eq!(resp.status(), 200, "the console's write carried the key");
    browser.close().await;
}
