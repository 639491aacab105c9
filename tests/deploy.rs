//! The deployment files agree with each other and with the relay, so neither can drift from the
//! code: `Dockerfile` (the image), `fly.toml` (Fly.io) and `scripts/container.sh` (the local image
//! build). Ports, paths, signals and timeouts are compared with the relay's own constants, and every
//! `INTERCESSOR_*` variable they name with the ones the built binary reads (its `--help`).

use intercessor::Config;
use intercessor::edge::CLOSE_GRACE;
use intercessor::edge::admin::METRICS_PATH;
use intercessor::options::Span;
use intercessor::relay::admission::HEALTH_PATH;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The signals the relay drains on (see `main.rs`).
const DRAIN_SIGNALS: [&str; 2] = ["SIGTERM", "SIGINT"];

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ---- fly.toml ----

/// The parts of fly.toml checked here; unknown keys are allowed (Fly has many).
#[derive(Debug, Deserialize)]
struct Fly {
    kill_signal: String,
    /// Seconds, or a duration such as "15s".
    kill_timeout: toml::Value,
    build: FlyBuild,
    #[serde(default)]
    env: BTreeMap<String, String>,
    http_service: HttpService,
    metrics: FlyMetrics,
}

impl Fly {
    fn kill_timeout(&self) -> Duration {
        let text = match &self.kill_timeout {
            toml::Value::Integer(seconds) => seconds.to_string(),
            toml::Value::String(text) => text.clone(),
            other => panic!("kill_timeout should be seconds or a duration, got {other:?}"),
        };
        text.parse::<Span>().expect("kill_timeout parses").0
    }
}

#[derive(Debug, Deserialize)]
struct FlyBuild {
    dockerfile: String,
}

#[derive(Debug, Deserialize)]
struct HttpService {
    internal_port: u16,
    force_https: bool,
    auto_stop_machines: toml::Value,
    min_machines_running: u32,
    concurrency: Concurrency,
    checks: Vec<Check>,
}

#[derive(Debug, Deserialize)]
struct Concurrency {
    #[serde(rename = "type")]
    kind: String,
    soft_limit: usize,
    hard_limit: usize,
}

#[derive(Debug, Deserialize)]
struct Check {
    method: String,
    path: String,
}

#[derive(Debug, Deserialize)]
struct FlyMetrics {
    port: u16,
    path: String,
}

fn fly() -> Fly {
    toml::from_str(&read("fly.toml")).unwrap_or_else(|e| panic!("fly.toml: {e}"))
}

// ---- Dockerfile ----

/// One build stage: its `FROM` image, its `AS` name, and its instructions in order.
#[derive(Debug)]
struct Stage {
    image: String,
    name: Option<String>,
    instructions: Vec<(String, String)>,
}

impl Stage {
    fn all(&self, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, args)| args.as_str())
            .collect()
    }

    fn one(&self, keyword: &str) -> &str {
        let found = self.all(keyword);
        assert_eq!(
            found.len(),
            1,
            "the stage FROM {} should have exactly one {keyword}, has {found:?}",
            self.image
        );
        found[0]
    }

    /// Every `ENV` of the stage, `KEY=value` form (quotes removed) or the legacy `KEY value`.
    fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for args in self.all("ENV") {
            let words = shell_words(args);
            if words.first().is_some_and(|w| w.contains('=')) {
                for word in words {
                    let (key, value) = word
                        .split_once('=')
                        .unwrap_or_else(|| panic!("ENV {args}: `{word}` is not KEY=value"));
                    env.insert(key.to_owned(), value.to_owned());
                }
            } else if let Some((key, value)) = args.split_once(char::is_whitespace) {
                env.insert(key.to_owned(), value.trim().to_owned());
            }
        }
        env
    }
}

/// Splits on whitespace, keeping double-quoted runs together (quotes dropped).
fn shell_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

/// Parses a Dockerfile into stages: comment lines dropped (also inside continuations, as Docker
/// does), `\` continuations joined, keywords upper-cased.
fn dockerfile_stages(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let line = line.trim_end();
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                if !current.trim().is_empty() {
                    logical.push(std::mem::take(&mut current));
                }
                current.clear();
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for instruction in logical {
        let instruction = instruction.trim();
        let (keyword, args) = instruction
            .split_once(char::is_whitespace)
            .unwrap_or((instruction, ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.trim().to_owned();
        if keyword == "FROM" {
            let words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                [_] => None,
                _ => panic!("Dockerfile: cannot read `FROM {args}`"),
            };
            stages.push(Stage {
                image: words[0].to_owned(),
                name,
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .unwrap_or_else(|| panic!("Dockerfile: `{keyword}` before any FROM"))
                .instructions
                .push((keyword, args));
        }
    }
    stages
}

fn dockerfile() -> Vec<Stage> {
    let stages = dockerfile_stages(&read("Dockerfile"));
    assert!(
        stages.len() >= 2,
        "the Dockerfile should have a builder stage and a final stage"
    );
    stages
}

fn port_of(variable: &str, address: &str) -> u16 {
    address
        .parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{variable}={address:?} is not an address the relay takes: {e}"))
        .port()
}

/// The environment the relay gets on Fly: the image's ENV, overridden by fly.toml's [env].
fn fly_environment(fly: &Fly, image: &Stage) -> BTreeMap<String, String> {
    let mut env = image.env();
    env.extend(fly.env.clone());
    env
}

fn variable<'a>(env: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    env.get(name)
        .unwrap_or_else(|| panic!("{name} is set neither in the Dockerfile nor in fly.toml [env]"))
}

// ---- the relay's own view ----

/// The binary's `--help`, with no `INTERCESSOR_*` variable set so that none shows a value.
fn help() -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_intercessor"))
        .arg("--help")
        .env_clear()
        .output()
        .expect("running intercessor --help");
    assert!(output.status.success(), "intercessor --help failed");
    String::from_utf8(output.stdout).expect("--help is UTF-8")
}

/// Variables clap reads, from `[env: NAME=]`, and the secret ones (`hide_env_values`), which it
/// shows as `[env: NAME]`.
fn relay_variables(help: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut all = BTreeSet::new();
    let mut secret = BTreeSet::new();
    for (at, _) in help.match_indices("[env: ") {
        let rest = &help[at + "[env: ".len()..];
        let end = rest.find(['=', ']']).expect("an [env: …] note is closed");
        let name = rest[..end].to_owned();
        if rest[end..].starts_with(']') {
            secret.insert(name.clone());
        }
        all.insert(name);
    }
    (all, secret)
}

/// Every `INTERCESSOR_*` name in a text, comments included (a misspelt name in advice is a bug).
fn named_variables(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("INTERCESSOR_") {
        let name: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        names.insert(name);
    }
    names
}

// ---- the checks ----

#[test]
fn the_image_is_a_static_binary_on_scratch_run_as_non_root() {
    let stages = dockerfile();
    let image = stages.last().expect("a final stage");
    assert_eq!(
        image.image, "scratch",
        "the final stage should be FROM scratch"
    );

    let user = image.one("USER");
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    for (what, id) in [("user", uid), ("group", gid)] {
        let id: u32 = id.parse().unwrap_or_else(|_| {
            panic!("USER {user}: the {what} must be numeric, scratch has no /etc/passwd")
        });
        assert_ne!(id, 0, "USER {user}: the {what} must not be root");
    }

    // The binary is built by a cargo build that honours Cargo.lock, statically linked.
    let builds: Vec<(&Stage, &str)> = stages
        .iter()
        .flat_map(|stage| stage.all("RUN").into_iter().map(move |run| (stage, run)))
        .filter(|(_, run)| run.contains("cargo build"))
        .collect();
    assert_eq!(builds.len(), 1, "exactly one RUN should run cargo build");
    let (builder, run) = builds[0];
    for flag in [
        "--locked",
        "--release",
        "-p intercessor",
        "+crt-static",
        // RUSTFLAGS replaces .cargo/config.toml's: without RELR the binary is over its budget.
        "pack-relative-relocs",
        "--target",
    ] {
        assert!(
            run.contains(flag),
            "the cargo build should use {flag}: {run}"
        );
    }
    let tag = builder.image.rsplit_once(':').map_or("", |(_, tag)| tag);
    assert!(
        tag.starts_with(|c: char| c.is_ascii_digit()),
        "the builder image {} should be pinned to a Rust version",
        builder.image
    );

    // The final stage takes exactly the binary from that stage, and runs it.
    let builder_name = builder.name.as_deref().expect("the builder stage is named");
    let copy = image.one("COPY");
    let words = shell_words(copy);
    assert_eq!(
        words.first().map(String::as_str),
        Some(format!("--from={builder_name}").as_str()),
        "the final stage should COPY from the builder stage: COPY {copy}"
    );
    let destination = words.last().expect("COPY has a destination");
    assert_eq!(
        image.one("ENTRYPOINT"),
        format!("[\"{destination}\"]"),
        "the entrypoint should be the copied binary"
    );

    // scripts/container.sh replaces that stage with a host-built binary, by its name.
    let script = read("scripts/container.sh");
    assert!(
        script.contains(&format!("--build-context {builder_name}=")),
        "scripts/container.sh should pass --build-context {builder_name}=… to replace the builder stage"
    );
}

#[test]
fn the_image_listens_where_fly_sends_traffic() {
    let fly = fly();
    let stages = dockerfile();
    let image = stages.last().expect("a final stage");
    assert_eq!(fly.build.dockerfile, "Dockerfile");

    let env = fly_environment(&fly, image);
    let listen = variable(&env, "INTERCESSOR_LISTEN");
    let address: SocketAddr = listen.parse().expect("INTERCESSOR_LISTEN is an address");
    assert!(
        address.ip().is_unspecified(),
        "INTERCESSOR_LISTEN={listen}: Fly's proxy and `docker run -p` reach the container from outside, not on loopback"
    );
    assert_eq!(
        fly.http_service.internal_port,
        address.port(),
        "fly.toml internal_port should be the port of INTERCESSOR_LISTEN"
    );
    let image_listen = image
        .env()
        .get("INTERCESSOR_LISTEN")
        .cloned()
        .expect("the Dockerfile sets INTERCESSOR_LISTEN (the relay's default is loopback)");
    let exposed: Vec<u16> = image
        .all("EXPOSE")
        .into_iter()
        .flat_map(str::split_whitespace)
        .map(|p| p.trim_end_matches("/tcp").parse().expect("EXPOSE a port"))
        .collect();
    assert!(
        exposed.contains(&port_of("INTERCESSOR_LISTEN", &image_listen)),
        "the Dockerfile should EXPOSE the port of INTERCESSOR_LISTEN={image_listen}, exposes {exposed:?}"
    );
    assert!(fly.http_service.force_https, "Fly should redirect to https");

    assert!(
        !fly.http_service.checks.is_empty(),
        "fly.toml needs an HTTP check"
    );
    for check in &fly.http_service.checks {
        assert_eq!(
            check.path, HEALTH_PATH,
            "the Fly check should GET the relay's health path"
        );
        assert!(check.method.eq_ignore_ascii_case("GET"), "{check:?}");
    }

    assert_eq!(fly.metrics.path, METRICS_PATH, "[metrics] path");
    let metrics_listen = variable(&env, "INTERCESSOR_METRICS_LISTEN");
    assert_eq!(
        fly.metrics.port,
        port_of("INTERCESSOR_METRICS_LISTEN", metrics_listen),
        "[metrics] port should be the port of INTERCESSOR_METRICS_LISTEN={metrics_listen}"
    );
    assert_ne!(
        fly.metrics.port, fly.http_service.internal_port,
        "metrics must stay off the public port"
    );
}

#[test]
fn fly_lets_the_relay_drain_and_never_stops_it_for_idleness() {
    let fly = fly();
    let image = dockerfile().pop().expect("a final stage");
    assert!(
        DRAIN_SIGNALS.contains(&fly.kill_signal.as_str()),
        "kill_signal {} is not one the relay drains on ({DRAIN_SIGNALS:?})",
        fly.kill_signal
    );
    let stop_signal = image.one("STOPSIGNAL");
    assert!(
        DRAIN_SIGNALS.contains(&stop_signal),
        "STOPSIGNAL {stop_signal} is not one the relay drains on"
    );

    let env = fly_environment(&fly, &image);
    let shutdown_timeout = env.get("INTERCESSOR_SHUTDOWN_TIMEOUT").map_or(
        Config::default().shutdown_timeout,
        |text| {
            text.parse::<Span>()
                .expect("INTERCESSOR_SHUTDOWN_TIMEOUT")
                .0
        },
    );
    assert!(
        fly.kill_timeout() > shutdown_timeout + CLOSE_GRACE,
        "kill_timeout {:?} should exceed the shutdown timeout {shutdown_timeout:?} plus {CLOSE_GRACE:?} close grace",
        fly.kill_timeout()
    );

    let service = &fly.http_service;
    assert!(
        matches!(&service.auto_stop_machines, toml::Value::String(s) if s == "off")
            || matches!(service.auto_stop_machines, toml::Value::Boolean(false)),
        "auto_stop_machines should be \"off\": stopping the machine drops every peer and join code, got {:?}",
        service.auto_stop_machines
    );
    assert!(service.min_machines_running >= 1, "min_machines_running");

    let max_connections = env
        .get("INTERCESSOR_MAX_CONNECTIONS")
        .map_or(Config::default().max_connections, |n| {
            n.parse().expect("INTERCESSOR_MAX_CONNECTIONS")
        });
    let concurrency = &service.concurrency;
    assert_eq!(
        concurrency.kind, "connections",
        "each WebSocket peer is one long-lived connection"
    );
    assert!(
        concurrency.hard_limit <= max_connections,
        "hard_limit {} should not exceed the relay's --max-connections {max_connections}",
        concurrency.hard_limit
    );
    assert!(
        concurrency.soft_limit <= concurrency.hard_limit,
        "soft_limit {} above hard_limit {}",
        concurrency.soft_limit,
        concurrency.hard_limit
    );
}

#[test]
fn every_variable_named_is_one_the_relay_reads_and_no_secret_is_baked_in() {
    let help = help();
    let (known, secret) = relay_variables(&help);
    assert!(
        known.contains("INTERCESSOR_LISTEN") && secret.contains("INTERCESSOR_PASSPHRASE"),
        "--help should list the relay's variables, secrets without values: {known:?} {secret:?}"
    );

    let fly = fly();
    let image = dockerfile().pop().expect("a final stage");
    for (file, text) in [
        ("fly.toml", read("fly.toml")),
        ("Dockerfile", read("Dockerfile")),
    ] {
        let named = named_variables(&text);
        assert!(!named.is_empty(), "{file} names no INTERCESSOR_ variable");
        let unknown: Vec<_> = named.difference(&known).collect();
        assert!(
            unknown.is_empty(),
            "{file} names variables the relay does not read: {unknown:?}"
        );
    }
    for key in fly.env.keys().filter(|k| k.starts_with("INTERCESSOR_")) {
        assert!(
            known.contains(key),
            "fly.toml [env] {key} is not read by the relay"
        );
    }
    let image_env = image.env();
    let baked: Vec<_> = fly
        .env
        .keys()
        .chain(image_env.keys())
        .filter(|k| secret.contains(*k))
        .collect();
    assert!(
        baked.is_empty(),
        "secrets belong in `fly secrets set` / `docker run -e`, not in fly.toml or the image: {baked:?}"
    );
}

/// The relay starts with exactly the environment it gets on Fly (listen addresses moved to free
/// loopback ports), and drains and exits 0 on fly.toml's kill_signal within its kill_timeout.
#[test]
fn the_relay_starts_with_the_fly_environment_and_stops_on_the_kill_signal() {
    let fly = fly();
    let image = dockerfile().pop().expect("a final stage");
    let mut env = fly_environment(&fly, &image);
    env.insert("INTERCESSOR_LISTEN".into(), "127.0.0.1:0".into());
    env.insert("INTERCESSOR_METRICS_LISTEN".into(), "127.0.0.1:0".into());
    let mut child = Command::new(env!("CARGO_BIN_EXE_intercessor"))
        .env_clear()
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting intercessor");
    let stderr = child.stderr.take().expect("piped stderr");
    let (lines, log) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let listening = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains("relay listening") => break line,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the relay did not start with the Fly environment {env:?}: {:?}",
                    child.wait()
                );
            }
        }
    };
    if env.get("INTERCESSOR_LOG_FORMAT").map(String::as_str) == Some("json") {
        assert!(
            serde_json::from_str::<serde_json::Value>(&listening).is_ok(),
            "INTERCESSOR_LOG_FORMAT=json, but the log line is not JSON: {listening}"
        );
    }

    // "relay listening" is logged before the signal handlers are surely installed (they are set
    // up in a spawned task), and until then the signal would kill the relay outright. Wait until
    // the process catches it, which is also the point: it must catch it.
    let number = signal_number(&fly.kill_signal);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !catches(child.id(), number) {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "the relay never installed a handler for {}",
                fly.kill_signal
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let signal = fly.kill_signal.trim_start_matches("SIG");
    let sent = Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(sent.success(), "kill -s {signal} failed");
    let deadline = Instant::now() + fly.kill_timeout();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the relay") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "the relay did not exit within kill_timeout {:?} of {}",
                fly.kill_timeout(),
                fly.kill_signal
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "the relay should exit 0 on {}, got {status}",
        fly.kill_signal
    );
}

fn signal_number(name: &str) -> u32 {
    match name {
        "SIGINT" => 2,
        "SIGTERM" => 15,
        other => panic!("{other} is not a signal the relay drains on"),
    }
}

/// Whether process `pid` has a handler for signal `number` (Linux: `SigCgt` in /proc).
fn catches(pid: u32, number: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (number - 1)) != 0)
}

#[test]
fn the_dockerfile_parser_reads_what_docker_reads() {
    let stages = dockerfile_stages(
        "# syntax=docker/dockerfile:1\nFROM rust:1 AS build\nRUN a \\\n  # comment\n  b\nfrom scratch\nENV A=1 B=\"two words\"\nENV C 3\nUSER 1:2\n",
    );
    assert_eq!(stages.len(), 2);
    assert_eq!(stages[0].name.as_deref(), Some("build"));
    assert_eq!(stages[0].one("RUN"), "a    b");
    assert_eq!(stages[1].image, "scratch");
    let env = stages[1].env();
    assert_eq!(env["A"], "1");
    assert_eq!(env["B"], "two words");
    assert_eq!(env["C"], "3");
    assert_eq!(stages[1].one("USER"), "1:2");
}
