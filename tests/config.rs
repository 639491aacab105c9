//! The built binary: option precedence (command line > environment > file > default), start-up
//! errors, and SIGTERM.

mod common;

use common::{PATIENCE, RelayProcess, TestPeer, relay_command, start_error};
use intercessor::Config;
use intercessor::config::IntoConfig as _;
use intercessor::options::{self, Parsed};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
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
fn the_relays_own_checks_fail_at_start_with_one_line_naming_the_option() {
    let bad_file = file("code_length = 8\nping_interval = \"soon\"\n");
    let bad_path = bad_file.path().to_str().expect("utf-8");
    let unknown_key = file("code_lenght = 8\n");
    let unknown_path = unknown_key.path().to_str().expect("utf-8");
    let refused = |args: &[&str], env: &[(&str, &str)], says: &[&str]| {
        let error = start_error(args, env);
        assert_eq!(error.trim_end().lines().count(), 1, "one line: {error:?}");
        for text in says {
            assert!(error.contains(text), "{error:?} should say {text:?}");
        }
    };
    refused(
        &["--code-length", "3"],
        &[],
        &["--code-length", "between 4 and 16"],
    );
    refused(
        &["--tls-cert", "x.pem"],
        &[],
        &["--tls-cert needs --tls-key"],
    );
    refused(
        &["--config", bad_path],
        &[],
        &[
            "line 2",
            "ping_interval = \"soon\"",
            "--ping-interval",
            "expected seconds",
        ],
    );
    refused(
        &["--config", unknown_path],
        &[],
        &["line 1", "unknown option `code_lenght`"],
    );
    refused(&["--config", "/nonexistent/relay.toml"], &[], &["--config"]);
}

#[test]
fn command_line_mistakes_get_claps_whole_message() {
    let refused = |args: &[&str], env: &[(&str, &str)], says: &[&str]| {
        let error = start_error(args, env);
        for text in says {
            assert!(error.contains(text), "{error:?} should say {text:?}");
        }
    };
    refused(
        &["--rate-limit", "many"],
        &[],
        &["'many'", "--rate-limit", "invalid digit"],
    );
    refused(
        &[],
        &[("INTERCESSOR_IDLE_TIMEOUT", "forever")],
        &["'forever'", "--idle-timeout", "expected seconds"],
    );
    refused(&["--threads", "0"], &[], &["--threads"]);
    refused(
        &["--log-format", "yaml"],
        &[],
        &["possible values: text, json"],
    );
    refused(
        &["--lisen", "127.0.0.1:0"],
        &[],
        &["--lisen", "a similar argument exists: '--listen'"],
    );
    refused(
        &["--passphrase", "a", "--passphrase-file", "b"],
        &[],
        &["cannot be used with"],
    );
}

#[test]
fn gen_certs_takes_only_its_own_options() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_intercessor"))
        .args(["gen-certs", "--help"])
        .output()
        .expect("runs");
    let help = String::from_utf8(output.stdout).expect("utf-8");
    assert!(help.contains("--san"), "{help}");
    assert!(
        !help.contains("--config"),
        "gen-certs has no --config: {help}"
    );
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

/// Each option of `--help` with the default it states, if any: `(long name, default)`.
fn help_defaults() -> Vec<(String, Option<String>)> {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_intercessor"))
        .arg("--help")
        .output()
        .expect("--help runs");
    let help = String::from_utf8(help.stdout).expect("utf-8");
    let mut options: Vec<(String, Option<String>)> = Vec::new();
    for line in help.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("--") {
            let name = rest.split([' ', '[']).next().expect("a name").to_owned();
            options.push((name, None));
        } else if let (Some(at), Some(last)) = (line.find("[default: "), options.last_mut()) {
            let default = &line[at + "[default: ".len()..];
            let default = default.split([']', ',']).next().expect("a value").trim();
            last.1 = Some(default.to_owned());
        }
    }
    options.retain(|(name, _)| !["help", "version", "config"].contains(&name.as_str()));
    options
}

#[test]
fn every_default_the_help_states_is_the_configs_default() {
    let defaults = format!("{:?}", Config::default());
    let command = options::command();
    let mut checked = 0;
    for (name, default) in help_defaults() {
        let Some(default) = default else { continue };
        // Defaults written as prose ("[default: off]") are not clap's: nothing to parse.
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()));
        if arg.is_none_or(|arg| arg.get_default_values().is_empty()) {
            continue;
        }
        let argv = [
            "intercessor".to_owned(),
            format!("--{name}"),
            default.clone(),
        ];
        let Ok(Parsed::Relay(options)) = options::parse(&argv) else {
            continue;
        };
        let config = options
            .into_config(None)
            .expect("the stated default is valid");
        assert_eq!(
            format!("{config:?}"),
            defaults,
            "--help says --{name} defaults to {default}, but that is not the default"
        );
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} defaults checked");
}

#[test]
fn the_readme_documents_every_option_with_its_variable_file_key_and_default() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let command = options::command();
    let options = help_defaults();
    assert!(
        options.len() >= 29,
        "only {} options in --help",
        options.len()
    );
    let table: Vec<&str> = readme
        .lines()
        .skip_while(|line| !line.starts_with("| option | environment | file key |"))
        .take_while(|line| line.starts_with('|'))
        .collect();
    for (name, default) in options {
        let row = table
            .iter()
            .find(|line| line.starts_with(&format!("| `--{name}")))
            .unwrap_or_else(|| panic!("the README's options table has no row for --{name}"));
        let variable = options::env_name(&name);
        let key = options::file_key(&name);
        assert!(
            row.contains(&format!("`{variable}`")),
            "{name}: README lacks {variable}"
        );
        assert!(
            row.contains(&format!("`{key}`")),
            "{name}: README lacks file key {key}"
        );
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()));
        let clap_default = arg.is_some_and(|arg| !arg.get_default_values().is_empty());
        if let Some(default) = default.filter(|_| clap_default) {
            let shown = if default == "false" {
                "off".to_owned()
            } else {
                format!("`{default}`")
            };
            assert!(
                row.contains(&shown),
                "{name}: README does not show its default {shown}"
            );
        }
    }
}

/// The JSON log lines of a starting relay up to both "relay listening" and "metrics listening".
fn start_up_log(args: &[&str]) -> Vec<Value> {
    /// Killed on drop, so a failed expectation leaves no relay behind.
    struct Started(std::process::Child);
    impl Drop for Started {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Started(
        relay_command(args, &[])
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts"),
    );
    let stderr = child.0.stderr.take().expect("piped");
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = sender.send(serde_json::from_str::<Value>(&line).expect("a JSON line"));
        }
    });
    let mut log = Vec::new();
    let started = |log: &[Value], message: &str| {
        log.iter()
            .any(|entry: &Value| entry["fields"]["message"] == message)
    };
    while !(started(&log, "relay listening") && started(&log, "metrics listening")) {
        log.push(
            lines
                .recv_timeout(PATIENCE)
                .expect("the relay logs its start"),
        );
    }
    log
}

#[test]
fn start_up_names_the_urls_and_warns_about_origins_no_browser_sends() {
    let log = start_up_log(&[
        "--allowed-origin",
        "https://app.example/,https://ok.example,app.example",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);

    let fields = |message: &str| {
        log.iter()
            .find(|entry| entry["fields"]["message"] == message)
            .map(|entry| entry["fields"].clone())
            .expect(message)
    };
    let relay = fields("relay listening");
    let listen = relay["listen"].as_str().expect("an address");
    assert_eq!(relay["url"], format!("http://{listen}/"));
    let metrics = fields("metrics listening")["url"].to_string();
    assert!(
        metrics.starts_with("\"http://127.0.0.1:") && metrics.ends_with("/metrics\""),
        "{metrics}"
    );
    let warnings: Vec<&str> = log
        .iter()
        .filter(|entry| entry["level"] == "WARN")
        .filter_map(|entry| entry["fields"]["message"].as_str())
        .collect();
    assert_eq!(
        warnings,
        [
            "--allowed-origin \"https://app.example/\" will never match a browser: browsers send no trailing slash",
            "--allowed-origin \"app.example\" will never match a browser: it has no scheme: write https://host or http://host:port",
        ]
    );
}
