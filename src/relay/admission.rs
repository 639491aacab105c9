//! Who may open a WebSocket, decided from the request alone: the route, the handshake, the
//! origin, the passphrase and the client's address. Pure; the stateful bounds (connection caps,
//! failed attempts) are applied after it by the HTTP layer.

use crate::relay::hub::{Resuming, RoomRules};
use crate::relay::ids::JoinCode;
use crate::relay::outcome::{RESUME_FAILED, Refusal, UNAUTHORIZED, UNKNOWN_SERVER};
use crate::relay::resume::Token;
use crate::relay::upgrade::{self, Rejection};
use http::{HeaderName, Method, Request, StatusCode, header};
use std::net::{IpAddr, SocketAddr};
use subtle::ConstantTimeEq;

/// Where servers register.
pub const SERVER_PATH: &str = "/server";
/// Clients join at this prefix followed by a join code.
pub const CLIENT_PREFIX: &str = "/client/";
/// Liveness: answers `200 ok` while the process runs.
pub const HEALTH_PATH: &str = "/healthz";
/// Readiness: `200 ready` until shutdown begins, then `503`, so the edge routes new peers elsewhere.
pub const READY_PATH: &str = "/readyz";

/// What the door checks, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Door {
    /// Browser origins allowed to open WebSockets; empty allows all.
    pub allowed_origins: Vec<String>,
    /// Passphrase required to register at `/server`.
    pub passphrase: Option<String>,
    /// Header holding the client address, set by a trusted proxy; otherwise the socket address.
    pub client_ip_header: Option<HeaderName>,
}

/// What to do with one HTTP request.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/healthz`.
    Health,
    /// `/readyz`.
    Readiness,
    /// Any other GET or HEAD: a demo page, if there is one at this path.
    Page(&'a str),
    /// Nothing here.
    NotFound,
    /// Refused before any upgrade, with an HTTP status.
    Rejected(Rejection),
    /// Upgrade to a WebSocket.
    Upgrade(Upgrade),
}

/// A request that may become a WebSocket session.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// What the session will be.
    pub admission: Admission,
    /// The `Sec-WebSocket-Accept` to answer with.
    pub accept_key: String,
    /// The address the per-address bounds count it against.
    pub client_ip: IpAddr,
    /// A joining client's `?name=`, at most [`MAX_INFO_BYTES`], shown to a knocking room's
    /// server.
    pub info: Option<String>,
}

/// Longest `?name=` a knocker's server is shown.
pub const MAX_INFO_BYTES: usize = 64;

/// What a WebSocket session will be, decided before the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Register as a server, its room starting with these rules (`?locked=1&knock=1`).
    Server(RoomRules),
    /// Register as a server under this code, claimed in the cluster directory beforehand with
    /// the hash of this resume token (when sessions resume).
    ClaimedServer(JoinCode, RoomRules, Option<Token>),
    /// Join the server with this code.
    Client(JoinCode),
    /// Resume a session with its token, after the first `received` frames of it when given.
    Resume {
        /// Who resumes.
        resuming: Resuming,
        /// The token its last HELLO carried.
        token: Token,
        /// Frames the peer received since that HELLO.
        received: Option<u64>,
    },
    /// Upgrade only to say why not.
    Refused(Refusal),
}

/// Refused for its `Origin`.
pub const FORBIDDEN_ORIGIN: Rejection = Rejection {
    status: StatusCode::FORBIDDEN,
    reason: "this origin may not open WebSockets here",
};

impl Door {
    /// Decides what `request`, from the socket address `remote`, gets.
    pub fn route<'a, B>(&self, request: &'a Request<B>, remote: SocketAddr) -> Route<'a> {
        let method = request.method();
        let readable = method == Method::GET || method == Method::HEAD;
        let path = request.uri().path();
        let admission = match path {
            HEALTH_PATH if readable => return Route::Health,
            READY_PATH if readable => return Route::Readiness,
            // A resuming server needs no passphrase: its token is the stronger secret.
            SERVER_PATH => {
                let code = query_value(request, "code").and_then(|code| JoinCode::parse(&code));
                resume(request, Resuming::Server(code))
            }
            .unwrap_or_else(|| {
                if self.authorized(request) {
                    Admission::Server(rules(request))
                } else {
                    Admission::Refused(UNAUTHORIZED)
                }
            }),
            _ => match path.strip_prefix(CLIENT_PREFIX) {
                Some(code) if !code.contains('/') => {
                    let code = percent_encoding::percent_decode_str(code).decode_utf8_lossy();
                    match JoinCode::parse(&code) {
                        Some(code) => resume(request, Resuming::ClientOf(code))
                            .unwrap_or(Admission::Client(code)),
                        None => Admission::Refused(UNKNOWN_SERVER),
                    }
                }
                _ if readable => return Route::Page(path),
                _ => return Route::NotFound,
            },
        };
        let accept_key = match upgrade::check(request) {
            Ok(key) => key,
            Err(rejection) => return Route::Rejected(rejection),
        };
        if !self.origin_allowed(request) {
            return Route::Rejected(FORBIDDEN_ORIGIN);
        }
        let info = match admission {
            Admission::Client(_) => query_value(request, "name").map(|name| clip(&name)),
            _ => None,
        };
        Route::Upgrade(Upgrade {
            admission,
            accept_key,
            client_ip: self.client_ip(request, remote),
            info,
        })
    }

    /// The client's address: from `client_ip_header` when set and parseable (the last entry, the
    /// one the nearest proxy added), else the socket's.
    fn client_ip<B>(&self, request: &Request<B>, remote: SocketAddr) -> IpAddr {
        let from_header = self
            .client_ip_header
            .as_ref()
            .and_then(|name| request.headers().get(name))
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .and_then(|last| last.trim().parse().ok());
        from_header.unwrap_or(remote.ip())
    }

    /// Whether the request may register a server: no passphrase is configured, or it carries the
    /// right one exactly once, as `Authorization: Bearer …` or `?passphrase=…`. Compared in
    /// constant time.
    fn authorized<B>(&self, request: &Request<B>) -> bool {
        let Some(expected) = self.passphrase.as_deref() else {
            return true;
        };
        match secret(request, "Bearer", "passphrase") {
            Secret::One(given) => bool::from(given.as_slice().ct_eq(expected.as_bytes())),
            Secret::Absent | Secret::Repeated => false,
        }
    }

    /// Browsers always send `Origin`; tools usually do not, and are let through.
    pub fn origin_allowed<B>(&self, request: &Request<B>) -> bool {
        match request.headers().get(header::ORIGIN) {
            Some(origin) if !self.allowed_origins.is_empty() => self
                .allowed_origins
                .iter()
                .any(|allowed| allowed.as_bytes() == origin.as_bytes()),
            _ => true,
        }
    }
}

/// Why an `--allowed-origin` entry can never equal the `Origin` a browser sends, if it cannot.
/// Browsers send `scheme://host[:port]` (RFC 6454 §6.1): lower case, no path, no trailing
/// slash, no default port; or `null` from sandboxed and file pages.
pub fn origin_mistake(origin: &str) -> Option<&'static str> {
    if origin == "null" {
        return None;
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return Some("it has no scheme: write https://host or http://host:port");
    };
    if authority.is_empty() {
        return Some("it has no host");
    }
    match authority.find(['/', '?', '#']).map(|at| &authority[at..]) {
        Some("/") => return Some("browsers send no trailing slash"),
        Some(_) => return Some("browsers send no path, query or fragment"),
        None => {}
    }
    if origin.chars().any(char::is_whitespace) {
        return Some("it contains white space");
    }
    if origin.chars().any(|c| c.is_ascii_uppercase()) {
        return Some("browsers send the scheme and host in lower case");
    }
    let default_port = match scheme {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    authority
        .ends_with(default_port)
        .then_some("browsers leave the scheme's default port out")
}

/// The resume a request asks for (`?resume=TOKEN` or `Authorization: Resume TOKEN`, and
/// `&received=N`), if it asks for one; a token that cannot be one, or more than one, fails it.
fn resume<B>(request: &Request<B>, resuming: Resuming) -> Option<Admission> {
    let token = match secret(request, "Resume", "resume") {
        Secret::Absent => return None,
        Secret::Repeated => None,
        Secret::One(token) => Token::parse(&token),
    };
    let Some(token) = token else {
        return Some(Admission::Refused(RESUME_FAILED));
    };
    let received = query_value(request, "received").and_then(|value| value.parse().ok());
    Some(Admission::Resume {
        resuming,
        token,
        received,
    })
}

/// The first value of `key` in the request's query.
fn query_value<B>(request: &Request<B>, key: &str) -> Option<String> {
    let query = request.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.into_owned())
}

/// A registering server's first room rules: `?locked=1` and `?knock=1` (or `true`).
fn rules<B>(request: &Request<B>) -> RoomRules {
    let on = |key| query_value(request, key).is_some_and(|value| value == "1" || value == "true");
    RoomRules {
        locked: on("locked"),
        knock: on("knock"),
    }
}

/// `text` cut to at most [`MAX_INFO_BYTES`], at a character boundary.
fn clip(text: &str) -> String {
    let mut end = text.len().min(MAX_INFO_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// A secret as a request carries it.
#[derive(Debug, PartialEq, Eq)]
pub enum Secret {
    /// Not given.
    Absent,
    /// Given once.
    One(Vec<u8>),
    /// Given more than once, in the query or headers or both: refused whatever the values, or
    /// one request could try as many guesses as its head has room for.
    Repeated,
}

/// Finds a secret given as `Authorization: <scheme> SECRET` (the scheme in any case, RFC 9110
/// §11.1) or as `?<key>=SECRET` (URL-encoded, for browsers, which cannot set headers on a
/// WebSocket).
pub fn secret<B>(request: &Request<B>, scheme: &str, key: &str) -> Secret {
    let in_headers = request
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|value| {
            let (given_scheme, rest) = value.as_bytes().split_at_checked(scheme.len())?;
            let credentials = rest.strip_prefix(b" ")?.trim_ascii_start();
            given_scheme
                .eq_ignore_ascii_case(scheme.as_bytes())
                .then(|| credentials.to_vec())
        });
    let in_query = request
        .uri()
        .query()
        .into_iter()
        .flat_map(|query| form_urlencoded::parse(query.as_bytes()))
        .filter(|(name, _)| name == key)
        .map(|(_, value)| value.as_bytes().to_vec());
    let mut given = in_headers.chain(in_query);
    match (given.next(), given.next()) {
        (None, _) => Secret::Absent,
        (Some(secret), None) => Secret::One(secret),
        (Some(_), Some(_)) => Secret::Repeated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const REMOTE: &str = "192.0.2.7:5000";

    fn remote() -> SocketAddr {
        REMOTE.parse().expect("an address")
    }

    fn door() -> Door {
        Door {
            allowed_origins: vec!["https://app.example".into()],
            passphrase: Some("open sesame".into()),
            client_ip_header: Some(HeaderName::from_static("fly-client-ip")),
        }
    }

    /// A valid WebSocket handshake for `uri`, plus `headers`.
    fn handshake(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::get(uri)
            .header(header::HOST, "relay.example")
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "Upgrade")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("a valid request")
    }

    fn admission(uri: &str, headers: &[(&str, &str)]) -> Admission {
        match door().route(&handshake(uri, headers), remote()) {
            Route::Upgrade(upgrade) => upgrade.admission,
            other => panic!("{uri} should upgrade, got {other:?}"),
        }
    }

    #[rstest]
    #[case("/server?passphrase=open%20sesame", &[])]
    #[case("/server?passphrase=open+sesame", &[])]
    #[case("/server", &[("authorization", "Bearer open sesame")])]
    #[case("/server", &[("authorization", "bearer open sesame")])]
    fn the_passphrase_once_registers(#[case] uri: &str, #[case] headers: &[(&str, &str)]) {
        assert_eq!(
            admission(uri, headers),
            Admission::Server(RoomRules::default())
        );
    }

    #[rstest]
    #[case("/server", &[])]
    #[case("/server?passphrase=open", &[])]
    #[case("/server", &[("authorization", "Basic open sesame")])]
    #[case("/server?passphrase=x&passphrase=open%20sesame", &[])]
    #[case("/server?passphrase=open%20sesame", &[("authorization", "Bearer open sesame")])]
    fn a_wrong_missing_or_repeated_passphrase_is_unauthorized(
        #[case] uri: &str,
        #[case] headers: &[(&str, &str)],
    ) {
        assert_eq!(admission(uri, headers), Admission::Refused(UNAUTHORIZED));
    }

    #[test]
    fn without_a_passphrase_anyone_registers() {
        let open = Door::default();
        let request = handshake("/server", &[]);
        let route = open.route(&request, remote());
        assert!(matches!(
            route,
            Route::Upgrade(Upgrade {
                admission: Admission::Server(_),
                ..
            })
        ));
    }

    #[test]
    fn a_server_sets_its_first_rules_and_a_client_its_name_clipped() {
        let open = Door::default();
        let request = handshake("/server?locked=1&knock=true", &[]);
        let Route::Upgrade(upgrade) = open.route(&request, remote()) else {
            panic!("an upgrade")
        };
        let rules = RoomRules {
            locked: true,
            knock: true,
        };
        assert_eq!(upgrade.admission, Admission::Server(rules));
        let long = format!("/client/7KQ2MX?name={}", "é".repeat(40));
        let Route::Upgrade(upgrade) = open.route(&handshake(&long, &[]), remote()) else {
            panic!("an upgrade")
        };
        assert_eq!(upgrade.info, Some("é".repeat(32)));
    }

    #[rstest]
    #[case("/client/7KQ2MX", "7KQ2MX")]
    #[case("/client/7kq-2mx", "7KQ2MX")]
    #[case("/client/7kq%202mx", "7KQ2MX")]
    fn clients_join_by_any_spelling_of_a_code(#[case] uri: &str, #[case] code: &str) {
        let code = JoinCode::parse(code).expect("a code");
        assert_eq!(admission(uri, &[]), Admission::Client(code));
    }

    #[rstest]
    #[case("/client/ABC")]
    #[case("/client/not%20a%20code!")]
    fn a_path_that_is_no_code_is_an_unknown_server(#[case] uri: &str) {
        assert_eq!(admission(uri, &[]), Admission::Refused(UNKNOWN_SERVER));
    }

    #[rstest]
    #[case(Method::GET, "/healthz", Route::Health)]
    #[case(Method::HEAD, "/readyz", Route::Readiness)]
    #[case(Method::GET, "/", Route::Page("/"))]
    #[case(Method::GET, "/client/7KQ2MX/more", Route::Page("/client/7KQ2MX/more"))]
    #[case(Method::POST, "/healthz", Route::NotFound)]
    #[case(Method::DELETE, "/demo.js", Route::NotFound)]
    fn plain_requests_are_routed_by_method_and_path(
        #[case] method: Method,
        #[case] uri: &str,
        #[case] route: Route<'static>,
    ) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .expect("a valid request");
        assert_eq!(door().route(&request, remote()), route);
    }

    #[test]
    fn a_plain_get_to_a_websocket_path_needs_an_upgrade() {
        let request = Request::get("/server").body(()).expect("a valid request");
        assert!(matches!(
            door().route(&request, remote()),
            Route::Rejected(Rejection {
                status: StatusCode::UPGRADE_REQUIRED,
                ..
            })
        ));
    }

    #[rstest]
    #[case(Some("https://app.example"), true)]
    #[case(Some("https://app.example/"), false)]
    #[case(Some("https://evil.example"), false)]
    #[case(None, true)]
    fn origins_on_the_list_or_none_may_upgrade(#[case] origin: Option<&str>, #[case] ok: bool) {
        let headers: Vec<_> = origin.map(|o| ("origin", o)).into_iter().collect();
        let request = handshake("/client/7KQ2MX", &headers);
        let route = door().route(&request, remote());
        if ok {
            assert!(matches!(route, Route::Upgrade(_)), "{route:?}");
        } else {
            assert_eq!(route, Route::Rejected(FORBIDDEN_ORIGIN));
        }
    }

    #[rstest]
    #[case("https://app.example", None)]
    #[case("http://localhost:8080", None)]
    #[case("http://[::1]:8080", None)]
    #[case("null", None)]
    #[case(
        "app.example",
        Some("it has no scheme: write https://host or http://host:port")
    )]
    #[case("https://", Some("it has no host"))]
    #[case("https://app.example/", Some("browsers send no trailing slash"))]
    #[case(
        "https://app.example/chat",
        Some("browsers send no path, query or fragment")
    )]
    #[case("https://app.example ", Some("it contains white space"))]
    #[case(
        "https://App.example",
        Some("browsers send the scheme and host in lower case")
    )]
    #[case(
        "https://app.example:443",
        Some("browsers leave the scheme's default port out")
    )]
    #[case(
        "http://app.example:80",
        Some("browsers leave the scheme's default port out")
    )]
    #[case("http://app.example:8080", None)]
    fn origins_browsers_never_send_are_named(#[case] origin: &str, #[case] mistake: Option<&str>) {
        assert_eq!(origin_mistake(origin), mistake);
    }

    #[rstest]
    #[case(&[("fly-client-ip", "203.0.113.9")], "203.0.113.9")]
    #[case(&[("fly-client-ip", "10.0.0.1, 203.0.113.9")], "203.0.113.9")]
    #[case(&[("fly-client-ip", "not an address")], "192.0.2.7")]
    #[case(&[("x-forwarded-for", "203.0.113.9")], "192.0.2.7")]
    fn the_client_address_comes_from_the_trusted_header_only(
        #[case] headers: &[(&str, &str)],
        #[case] expected: &str,
    ) {
        let Route::Upgrade(upgrade) = door().route(&handshake("/client/7KQ2MX", headers), remote())
        else {
            panic!("upgrades")
        };
        assert_eq!(
            upgrade.client_ip,
            expected.parse::<IpAddr>().expect("an address")
        );
    }
}
