//! The built binary: option precedence (command line > environment > file > default), start-up
//! errors, and SIGTERM.

mod common;

use common::{RelayProcess, TestPeer, start_error};
use serde_json::{Value, json};
use std::time::Duration;

async fn hello(relay: &RelayProcess) -> Value {
    let mut peer = TestPeer {
        ws: TestPeer::connect_raw(&format!("{}/server", relay.url)).await,
        id: String::new(),
    };
    peer.recv().await["message"].clone()
}

fn file(contents: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), contents).expect("write");
    file
}

#[tokio::test]
async fn command_line_beats_environment_beats_file_beats_default() {
    let config = file("server_info = \"from file\"\ncode_length = 8\n");
    let path = config.path().to_str().expect("utf-8");
    let env = [("INTERCESSOR_SERVER_INFO", "from env")];

    let relay = RelayProcess::start(&["--config", path, "--server-info", "from cli"], &env);
    assert_eq!(hello(&relay).await["serverInfo"], "from cli");

    let relay = RelayProcess::start(&["--config", path], &env);
    let message = hello(&relay).await;
    assert_eq!(message["serverInfo"], "from env");
    assert_eq!(
        message["id"].as_str().map(str::len),
        Some(8),
        "code_length from the file"
    );

    let relay = RelayProcess::start(&[], &[("INTERCESSOR_CONFIG", path)]);
    assert_eq!(hello(&relay).await["serverInfo"], "from file");

    let relay = RelayProcess::start(&[], &[]);
    let message = hello(&relay).await;
    assert!(message.get("serverInfo").is_none(), "{message}");
    assert_eq!(message["id"].as_str().map(str::len), Some(6));
}

#[tokio::test]
async fn passphrase_from_the_environment_and_from_a_file() {
    let relay = RelayProcess::start(&[], &[("INTERCESSOR_PASSPHRASE", "env secret")]);
    let mut peer = TestPeer {
        ws: TestPeer::connect_raw(&format!("{}/server", relay.url)).await,
        id: String::new(),
    };
    peer.expect_error("UNAUTHORIZED").await;
    TestPeer::join(&format!("{}/server?passphrase=env%20secret", relay.url)).await;

    let secret = file("file secret\n");
    let relay = RelayProcess::start(
        &["--passphrase-file", secret.path().to_str().expect("utf-8")],
        &[],
    );
    TestPeer::join(&format!("{}/server?passphrase=file%20secret", relay.url)).await;
}

#[test]
fn invalid_values_fail_at_start_with_one_line_naming_the_option() {
    let bad_file = file("ping_interval = \"soon\"\n");
    let bad_path = bad_file.path().to_str().expect("utf-8");
    let refused = |args: &[&str], env: &[(&str, &str)], option: &str| {
        let error = start_error(args, env);
        assert_eq!(error.trim_end().lines().count(), 1, "one line: {error:?}");
        assert!(error.contains(option), "{error:?} should name {option}");
    };
    refused(&["--code-length", "3"], &[], "--code-length");
    refused(&["--rate-limit", "many"], &[], "--rate-limit");
    refused(
        &[],
        &[("INTERCESSOR_IDLE_TIMEOUT", "forever")],
        "--idle-timeout",
    );
    refused(&["--config", bad_path], &[], "ping_interval");
    refused(&["--config", "/nonexistent/relay.toml"], &[], "--config");
    refused(&["--threads", "0"], &[], "--threads");
}

/// Sends SIGTERM and expects `peer` closed with 1001 and the relay to exit with status 0.
async fn stops_on_sigterm(mut relay: RelayProcess, peer: &mut TestPeer) {
    relay.signal("TERM");
    assert_eq!(peer.expect_close(1001).await, "going away");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = relay.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "exits within --shutdown-timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn sigterm_closes_peers_with_1001_and_exits_zero() {
    let relay = RelayProcess::start(&[], &[]);
    let mut server = TestPeer::join(&format!("{}/server", relay.url)).await;
    stops_on_sigterm(relay, &mut server).await;
}

/// One thread runs tokio's current-thread scheduler, more run the multi-thread one: both relay,
/// and both shut down.
#[tokio::test]
async fn one_thread_or_several_relays_and_shuts_down() {
    let one: (&[&str], &[(&str, &str)]) = (&["--threads", "1"], &[]);
    let two: (&[&str], &[(&str, &str)]) = (&[], &[("INTERCESSOR_THREADS", "2")]);
    for (threads, (args, env)) in [(1, one), (2, two)] {
        let relay = RelayProcess::start(args, env);
        assert_eq!(relay.listening["threads"], threads, "{}", relay.listening);
        let mut server = TestPeer::join(&format!("{}/server", relay.url)).await;
        let url = format!("{}/client/{}", relay.url, server.id);
        let mut client = TestPeer::join(&url).await;
        server
            .expect_relay("PEER_JOINED", json!({"id": client.id}))
            .await;
        let offer = json!({"sdp": "v=0"});
        client.send_to(&server.id, "OFFER", offer.clone()).await;
        let relayed = server.recv().await;
        assert_eq!(
            relayed,
            json!({"from": client.id, "type": "OFFER", "message": offer})
        );
        server.send_to(&client.id, "ANSWER", offer.clone()).await;
        let relayed = client.recv().await;
        assert_eq!(
            relayed,
            json!({"from": server.id, "type": "ANSWER", "message": offer})
        );
        stops_on_sigterm(relay, &mut server).await;
    }
}

#[test]
fn the_readme_documents_every_option_and_variable() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_intercessor"))
        .arg("--help")
        .output()
        .expect("--help runs");
    let help = String::from_utf8(help.stdout).expect("utf-8");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let mut checked = 0;
    for line in help.lines().map(str::trim).filter(|l| l.starts_with("--")) {
        let option = line.split([' ', '=', '[']).next().expect("an option name");
        if option == "--help" || option == "--version" {
            continue;
        }
        assert!(
            readme.contains(&format!("`{option}")),
            "README lacks {option}"
        );
        let variable = format!(
            "INTERCESSOR_{}",
            option
                .trim_start_matches("--")
                .replace('-', "_")
                .to_uppercase()
        );
        assert!(readme.contains(&variable), "README lacks {variable}");
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} options found in --help");
}
