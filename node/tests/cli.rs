//! The `psubd` command line as a user meets it: configuration errors name the rule and
//! exit non-zero, `psubd dev` refuses a taken port, and a node started alone serves,
//! becomes ready and stops cleanly on SIGTERM.
//!
//! These tests also make `cargo test --workspace` build the `psubd` binary that the
//! end-to-end (`tests/`) and chaos (`jepsen/`) suites start.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PSUBD: &str = env!("CARGO_BIN_EXE_psubd");

/// Sends SIGTERM and waits up to `within` for the exit; SIGKILLs and returns `None` when
/// the process outlives it.
fn terminate(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `psubd` with `args` and a fresh data dir, expects it to fail, and returns its stderr.
fn refused(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(PSUBD)
        .args(args)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "psubd {args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// [`refused`] for `psubd node --id 1 --peers 1=127.0.0.1:9` and `extra`.
fn refused_node(extra: &[&str]) -> String {
    let args = [
        &["node", "--id", "1", "--peers", "1=127.0.0.1:9"][..],
        extra,
    ]
    .concat();
    refused(&args)
}

/// Starts a one-node cluster on free ports with its data in `data_dir` and `extra` flags;
/// returns the process and its HTTP port.
fn single_node(
    data_dir: &std::path::Path,
    extra: &[&std::ffi::OsStr],
) -> (std::process::Child, u16) {
    let (http, raft) = (free_port(), free_port());
    let child = Command::new(PSUBD)
        .args(["node", "--id", "1"])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args(["--raft", &format!("127.0.0.1:{raft}")])
        .args(["--peers", &format!("1=127.0.0.1:{raft}")])
        .args(extra)
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, http)
}

#[test]
fn a_node_missing_from_its_peers_is_refused_with_the_rule() {
    let stderr = refused(&["node", "--id", "4", "--peers", "1=127.0.0.1:9"]);
    assert!(stderr.contains("--id 4 must appear in --peers"), "{stderr}");
}

#[test]
fn peers_off_loopback_without_a_cluster_secret_are_refused_with_the_fix() {
    let stderr = refused(&[
        "node",
        "--id",
        "1",
        "--peers",
        "1=127.0.0.1:9,2=10.1.2.3:9081",
    ]);
    assert!(
        stderr.contains("--cluster-secret-file")
            && stderr.contains("--peer-tls-cert")
            && stderr.contains("--insecure"),
        "{stderr}"
    );
}

/// Peer TLS takes its three files together, and a file that holds no certificate is named.
#[test]
fn peer_tls_needs_its_three_files_and_names_a_bad_one() {
    let stderr = refused_node(&["--peer-tls-cert", "cert.pem"]);
    assert!(
        stderr.contains("--peer-tls-key") && stderr.contains("--peer-tls-ca"),
        "{stderr}"
    );
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.to_str().unwrap();
    let stderr = refused_node(&[
        "--peer-tls-cert",
        empty,
        "--peer-tls-key",
        empty,
        "--peer-tls-ca",
        empty,
    ]);
    assert!(
        stderr.contains("--peer-tls-*: certificate") && stderr.contains("holds no certificate"),
        "{stderr}"
    );
}

#[test]
fn an_open_api_off_loopback_is_refused_without_insecure() {
    let stderr = refused_node(&["--http", "0.0.0.0:8081"]);
    assert!(
        stderr.contains("--auth") && stderr.contains("--insecure"),
        "{stderr}"
    );
}

#[test]
fn auth_without_an_admin_key_file_is_refused_with_the_fix() {
    let stderr = refused(&["node", "--id", "1", "--peers", "1=127.0.0.1:9", "--auth"]);
    assert!(stderr.contains("--admin-key-file"), "{stderr}");
}

#[test]
fn a_weak_admin_key_is_refused_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("admin.key");
    std::fs::write(&key, "admin.tooshort-s3cr3t\n").unwrap();
    let key = key.display().to_string();
    let stderr = refused_node(&["--auth", "--admin-key-file", &key]);
    assert!(stderr.contains("at least 32"), "{stderr}");
    assert!(!stderr.contains("tooshort-s3cr3t"), "{stderr}");
}

#[test]
fn a_short_cluster_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "too short\n").unwrap();
    let stderr = refused_node(&["--cluster-secret-file", secret.to_str().unwrap()]);
    assert!(stderr.contains("at least 16 bytes"), "{stderr}");
}

#[test]
fn a_snapshot_stagger_past_its_bound_is_refused_with_the_rule() {
    let stderr = refused_node(&["--snapshot-stagger-percent", "1001"]);
    assert!(
        stderr.contains("--snapshot-stagger-percent must be at most 1000"),
        "{stderr}"
    );
}

#[test]
fn a_malformed_peer_list_names_the_entry() {
    let stderr = refused(&["node", "--id", "1", "--peers", "1=localhost"]);
    assert!(stderr.contains("'1=localhost'"), "{stderr}");
}

#[test]
fn dev_refuses_a_taken_port() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let stderr = refused(&["dev", "--nodes", "1", "--base-port", &port.to_string()]);
    assert!(
        stderr.contains(&format!("port {port} on 127.0.0.1 is in use")),
        "{stderr}"
    );
}

#[test]
fn a_single_node_serves_becomes_ready_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, http) = single_node(dir.path(), &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ready = runtime.block_on(async {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(r) = client
                .get(format!("http://127.0.0.1:{http}/readyz"))
                .send()
                .await
            {
                if r.status() == 200 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    let status = terminate(&mut child, Duration::from_secs(15));
    assert!(ready, "a one-node cluster became ready");
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "SIGTERM stops the node cleanly within 15 s"
    );
}

/// A base port for `psubd dev --nodes nodes` whose HTTP and peer ports were free a moment
/// ago; `dev` itself refuses taken ports, so a race shows as a clear failure, never as a
/// foreign cluster.
fn free_dev_base_port(nodes: u16) -> u16 {
    loop {
        let candidate = free_port();
        if candidate < 60_000
            && (0..nodes).all(|n| {
                TcpListener::bind(("127.0.0.1", candidate + n)).is_ok()
                    && TcpListener::bind(("127.0.0.1", candidate + 1000 + n)).is_ok()
            })
        {
            return candidate;
        }
    }
}

/// The README's promise that `psubd dev --auth` tries API keys locally: the nodes refuse a
/// request without a key, and take one with the admin key `dev` made and named.
#[test]
fn dev_with_auth_makes_an_admin_key_its_nodes_require() {
    use std::io::{BufRead, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let base = free_dev_base_port(1);
    let mut child = Command::new(PSUBD)
        .args([
            "dev",
            "--nodes",
            "1",
            "--auth",
            "--base-port",
            &base.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut key_path = None;
    let mut ready = false;
    for line in stdout.lines().map_while(Result::ok) {
        if let Some((_, path)) = line.split_once("the admin key is in ") {
            key_path = Some(path.trim().to_string());
        }
        if line.contains("cluster ready") {
            ready = true;
            break;
        }
    }
    let topics = format!("http://127.0.0.1:{base}/v1/topics");
    let without = curl(&["-o", "/dev/null", "-w", "%{http_code}", &topics]);
    let key = key_path
        .as_deref()
        .map(|path| std::fs::read_to_string(path).unwrap_or_default());
    let with = key.as_deref().map(|key| {
        let header = format!("Authorization: Bearer {}", key.trim());
        curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &header,
            &topics,
        ])
    });
    let status = terminate(&mut child, Duration::from_secs(20));
    assert!(ready, "psubd dev --auth printed 'cluster ready'");
    assert_eq!(
        key_path.as_deref(),
        Some(dir.path().join("admin-key").to_str().unwrap()),
        "dev names the admin key file"
    );
    assert_eq!(without.1, "401", "a request without a key is refused");
    assert_eq!(
        with.map(|(_, code)| code).as_deref(),
        Some("200"),
        "the admin key is taken"
    );
    assert_eq!(status.map(|s| s.code()), Some(Some(0)));
}

/// The README's first command: `psubd dev` starts three nodes, says when they are all
/// ready, and SIGTERM stops them all with exit status 0.
#[test]
fn dev_starts_three_ready_nodes_and_stops_them_on_sigterm() {
    use std::io::{BufRead, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let base = free_dev_base_port(3);
    let mut child = Command::new(PSUBD)
        .args(["dev", "--nodes", "3", "--base-port", &base.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut urls = Vec::new();
    let mut ready = false;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(url) = line
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:"))
        {
            urls.push(url.to_string());
        }
        if line.contains("cluster ready") {
            ready = true;
            break;
        }
    }
    assert!(ready, "psubd dev printed 'cluster ready'");
    assert_eq!(
        urls,
        (0..3)
            .map(|n| format!("http://127.0.0.1:{}", base + n))
            .collect::<Vec<_>>(),
        "each node's HTTP address printed"
    );
    let status = terminate(&mut child, Duration::from_secs(20));
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "SIGTERM stops the dev cluster cleanly"
    );
    for n in 1..=3 {
        let log =
            std::fs::read_to_string(dir.path().join(format!("node-{n}.log"))).unwrap_or_default();
        assert!(
            log.contains("node stopped"),
            "node {n} shut down gracefully:\n{log}"
        );
    }
}

/// Runs `curl` with `args`; returns its exit status and what it printed.
fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl is installed (.ci/run installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// docs/operations.md § Security: with --tls-cert and --tls-key the API port speaks HTTPS
/// (checked with a self-signed certificate made by openssl), and plain HTTP there gets no
/// answer.
#[test]
fn the_api_speaks_https_with_a_certificate_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=psubd-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let (mut child, http) = single_node(
        &dir.path().join("data"),
        &[
            "--tls-cert".as_ref(),
            cert.as_os_str(),
            "--tls-key".as_ref(),
            key.as_os_str(),
        ],
    );
    let cacert = cert.to_str().unwrap();
    let https = format!("https://127.0.0.1:{http}/readyz");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut ready = false;
    while !ready && Instant::now() < deadline {
        let (ok, code) = curl(&[
            "--cacert",
            cacert,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &https,
        ]);
        ready = ok && code == "200";
        if !ready {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let (plain_ok, plain_body) = curl(&[&format!("http://127.0.0.1:{http}/healthz")]);
    let (unverified_ok, _) = curl(&[&format!("https://127.0.0.1:{http}/healthz")]);
    let status = terminate(&mut child, Duration::from_secs(15));
    assert!(
        ready,
        "HTTPS with the node's certificate answers /readyz 200"
    );
    assert!(
        !plain_ok && plain_body.is_empty(),
        "plain HTTP got an answer: {plain_body}"
    );
    assert!(
        !unverified_ok,
        "a client that does not trust the certificate must fail"
    );
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "SIGTERM stops it cleanly"
    );
}

/// Runs openssl with `args`, asserting success.
fn openssl(args: &[&std::ffi::OsStr]) {
    let made = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// A CA certificate and its key made by openssl: `(cert, key)` in `dir`.
fn certificate_authority(
    dir: &std::path::Path,
    stem: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(format!("{stem}-ca.pem")),
        dir.join(format!("{stem}-ca-key.pem")),
    );
    let subject = format!("/CN={stem} test CA");
    openssl(&[
        "req".as_ref(),
        "-x509".as_ref(),
        "-newkey".as_ref(),
        "ec".as_ref(),
        "-pkeyopt".as_ref(),
        "ec_paramgen_curve:P-256".as_ref(),
        "-nodes".as_ref(),
        "-days".as_ref(),
        "1".as_ref(),
        "-subj".as_ref(),
        subject.as_ref(),
        "-keyout".as_ref(),
        key.as_os_str(),
        "-out".as_ref(),
        cert.as_os_str(),
    ]);
    (cert, key)
}

/// A node certificate for 127.0.0.1 signed by the CA `(ca_cert, ca_key)`.
fn node_certificate(
    dir: &std::path::Path,
    (ca_cert, ca_key): &(std::path::PathBuf, std::path::PathBuf),
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("node-cert.pem"), dir.join("node-key.pem"));
    openssl(&[
        "req".as_ref(),
        "-x509".as_ref(),
        "-newkey".as_ref(),
        "ec".as_ref(),
        "-pkeyopt".as_ref(),
        "ec_paramgen_curve:P-256".as_ref(),
        "-nodes".as_ref(),
        "-days".as_ref(),
        "1".as_ref(),
        "-subj".as_ref(),
        "/CN=psubd-node".as_ref(),
        "-addext".as_ref(),
        "subjectAltName=IP:127.0.0.1".as_ref(),
        "-addext".as_ref(),
        "basicConstraints=critical,CA:FALSE".as_ref(),
        "-CA".as_ref(),
        ca_cert.as_os_str(),
        "-CAkey".as_ref(),
        ca_key.as_os_str(),
        "-keyout".as_ref(),
        key.as_os_str(),
        "-out".as_ref(),
        cert.as_os_str(),
    ]);
    (cert, key)
}

/// Runs a client command of `psubd`; returns its exit code, stdout and stderr.
fn client_command(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(PSUBD)
        .args(args)
        .env_remove("PSUBD_URL")
        .env_remove("PSUBD_CA_FILE")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// docs/clients.md § Connecting: the client commands speak HTTPS to a node serving it when
/// given the CA that signed its certificate, and refuse with a clear message without it
/// or with another CA.
#[test]
fn the_client_commands_speak_https_with_the_clusters_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = certificate_authority(dir.path(), "cluster");
    let (cert, key) = node_certificate(dir.path(), &ca);
    let (other_ca, _) = certificate_authority(dir.path(), "other");
    let (mut child, http) = single_node(
        &dir.path().join("data"),
        &[
            "--tls-cert".as_ref(),
            cert.as_os_str(),
            "--tls-key".as_ref(),
            key.as_os_str(),
        ],
    );
    let cacert = ca.0.to_str().unwrap();
    let url = format!("--url=https://127.0.0.1:{http}");
    // The node is ready once /readyz answers 200 over HTTPS (the test above checks it).
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let (ok, code) = curl(&[
            "--cacert",
            cacert,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://127.0.0.1:{http}/readyz"),
        ]);
        if ok && code == "200" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let created = client_command(&["topic", "create", "secure", &url, "--ca-file", cacert]);
    let listed = client_command(&[
        "topic",
        "list",
        "--output",
        "json",
        &url,
        "--ca-file",
        cacert,
    ]);
    let without_ca = client_command(&["topic", "list", &url]);
    let other = client_command(&[
        "topic",
        "list",
        &url,
        "--ca-file",
        other_ca.to_str().unwrap(),
    ]);
    let status = terminate(&mut child, Duration::from_secs(15));
    assert_eq!(created.0, Some(0), "create over HTTPS: {}", created.2);
    assert!(listed.1.contains("\"secure\""), "{listed:?}");
    assert_eq!(without_ca.0, Some(1), "{without_ca:?}");
    assert!(
        without_ca.2.contains("HTTPS needs the CA certificate"),
        "{}",
        without_ca.2
    );
    assert_eq!(other.0, Some(1), "{other:?}");
    assert!(
        other.2.contains("cannot reach any node") && other.2.contains("certificate"),
        "{}",
        other.2
    );
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "SIGTERM stops it cleanly"
    );
}
