//! The WebSocket opening handshake (RFC 6455 §4.2), checked by hand on a hyper request.
//!
//! Pure: it looks at method, version and headers and says either "switch" (with the accept key)
//! or why not, as the HTTP status and one-line reason the client gets.

use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Version, header};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Why a request to a WebSocket path is not a valid upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// `426 Upgrade Required` for a plain request, `400 Bad Request` for a broken handshake.
    pub status: StatusCode,
    /// One line of plain text for the response body.
    pub reason: &'static str,
}

const fn upgrade_required(reason: &'static str) -> Rejection {
    Rejection {
        status: StatusCode::UPGRADE_REQUIRED,
        reason,
    }
}

const fn malformed(reason: &'static str) -> Rejection {
    Rejection {
        status: StatusCode::BAD_REQUEST,
        reason,
    }
}

/// Checks the handshake and returns the `Sec-WebSocket-Accept` value to answer with.
pub fn check<B>(request: &Request<B>) -> Result<String, Rejection> {
    let headers = request.headers();
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(upgrade_required(
            "this path speaks WebSocket only: send Upgrade: websocket",
        ));
    }
    if request.method() != Method::GET {
        return Err(malformed("a WebSocket upgrade must be a GET request"));
    }
    if request.version() < Version::HTTP_11 {
        return Err(malformed("a WebSocket upgrade needs HTTP/1.1"));
    }
    // RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host.
    if headers.get_all(header::HOST).iter().count() != 1 {
        return Err(malformed("a request needs exactly one Host header"));
    }
    // RFC 9112 §6.1 makes Transfer-Encoding beside Content-Length a smuggling attempt; an upgrade
    // has no body at all, so any body framing means the request is not what it claims to be.
    if headers.contains_key(header::TRANSFER_ENCODING)
        || headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err(malformed("a WebSocket upgrade has no body"));
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(malformed("Connection must include \"upgrade\""));
    }
    match only(headers, header::SEC_WEBSOCKET_VERSION) {
        Ok(Some(version)) if version.as_bytes() == b"13" => {}
        Err(()) => return Err(malformed("Sec-WebSocket-Version is given twice")),
        _ => {
            return Err(upgrade_required(
                "only Sec-WebSocket-Version: 13 is supported",
            ));
        }
    }
    let key = only(headers, header::SEC_WEBSOCKET_KEY)
        .map_err(|()| malformed("Sec-WebSocket-Key is given twice"))?
        .ok_or(malformed("Sec-WebSocket-Key is missing"))?;
    if !is_valid_key(key.as_bytes()) {
        return Err(malformed("Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    Ok(derive_accept_key(key.as_bytes()))
}

/// The header's one value; `Err` when it is given more than once (RFC 6455 §4.2.1 allows one
/// `Sec-WebSocket-Key` and one `Sec-WebSocket-Version`).
fn only(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<&HeaderValue>, ()> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (first, None) => Ok(first),
        (_, Some(_)) => Err(()),
    }
}

/// Whether a comma-separated header holds `token`, ignoring case (`Connection: keep-alive, Upgrade`).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// 16 bytes in base64 are 22 significant characters and `==`; the last one carries 2 zero bits,
/// so it is one of the four letters whose 6-bit value is a multiple of 16.
fn is_valid_key(key: &[u8]) -> bool {
    let [body @ .., last, b'=', b'='] = key else {
        return false;
    };
    let in_alphabet = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/');
    body.len() == 21 && body.iter().all(in_alphabet) && matches!(last, b'A' | b'Q' | b'g' | b'w')
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request() -> http::request::Builder {
        Request::builder()
            .uri("/server")
            .header(header::HOST, "relay.example")
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "Upgrade")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, KEY)
    }

    #[test]
    fn accepts_the_rfc_example_with_its_accept_key() {
        let request = request().body(()).expect("valid request");
        assert_eq!(
            check(&request),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_owned())
        );
    }

    #[test]
    fn connection_may_list_several_tokens_in_any_case() {
        let request = request()
            .header(header::CONNECTION, "keep-alive, UPGRADE")
            .body(())
            .expect("valid request");
        assert!(check(&request).is_ok());
    }

    #[test]
    fn a_plain_get_needs_an_upgrade() {
        let request = Request::get("/server").body(()).expect("valid request");
        assert_eq!(
            check(&request).map_err(|r| r.status),
            Err(StatusCode::UPGRADE_REQUIRED)
        );
    }

    #[test]
    fn only_get_may_upgrade() {
        let request = request()
            .method(Method::POST)
            .body(())
            .expect("valid request");
        assert_eq!(
            check(&request).map_err(|r| r.status),
            Err(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn http_10_cannot_upgrade() {
        let request = request()
            .version(Version::HTTP_10)
            .body(())
            .expect("valid request");
        assert_eq!(
            check(&request).map_err(|r| r.status),
            Err(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn connection_must_say_upgrade() {
        let mut request = request().body(()).expect("valid request");
        request
            .headers_mut()
            .insert(header::CONNECTION, "keep-alive".parse().expect("valid"));
        assert_eq!(
            check(&request).map_err(|r| r.status),
            Err(StatusCode::BAD_REQUEST)
        );
    }

    #[rstest]
    #[case(Some("8"))]
    #[case(Some("14"))]
    #[case(None)]
    fn only_version_13(#[case] version: Option<&str>) {
        let mut request = request().body(()).expect("valid request");
        request.headers_mut().remove(header::SEC_WEBSOCKET_VERSION);
        if let Some(version) = version {
            request.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                version.parse().expect("valid"),
            );
        }
        assert_eq!(
            check(&request).map_err(|r| r.status),
            Err(StatusCode::UPGRADE_REQUIRED)
        );
    }

    #[rstest]
    #[case(None)]
    #[case(Some(""))]
    #[case(Some("short=="))]
    #[case(Some("dGhlIHNhbXBsZSBub25jZQ"))]
    #[case(Some("dGhlIHNhbXBsZSBub25jZR=="))]
    #[case(Some("dGhlIHNhbXBsZSBub25j!Q=="))]
    #[case(Some("dGhlIHNhbXBsZSBub25jZQ=x"))]
    fn key_must_be_16_base64_bytes(#[case] key: Option<&str>) {
        let mut request = request().body(()).expect("valid request");
        request.headers_mut().remove(header::SEC_WEBSOCKET_KEY);
        if let Some(key) = key {
            request
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_KEY, key.parse().expect("valid"));
        }
        assert_eq!(
            check(&request).map_err(|r| r.status),
            Err(StatusCode::BAD_REQUEST)
        );
    }

    #[rstest]
    #[case::no_host(&[], "Host")]
    #[case::two_hosts(&[(header::HOST, "other.example")], "Host")]
    #[case::two_keys(&[(header::SEC_WEBSOCKET_KEY, "AQIDBAUGBwgJCgsMDQ4PEA==")], "Key")]
    #[case::two_versions(&[(header::SEC_WEBSOCKET_VERSION, "13")], "Version")]
    #[case::chunked(&[(header::TRANSFER_ENCODING, "chunked")], "body")]
    #[case::content_length(&[(header::CONTENT_LENGTH, "0")], "body")]
    fn repeated_or_missing_headers_and_any_body_are_refused(
        #[case] extra: &[(header::HeaderName, &str)],
        #[case] named: &str,
    ) {
        let mut request = request().body(()).expect("valid request");
        if extra.is_empty() {
            request.headers_mut().remove(header::HOST);
        }
        for (name, value) in extra {
            request
                .headers_mut()
                .append(name.clone(), value.parse().expect("valid"));
        }
        let rejection = check(&request).expect_err("refused");
        assert_eq!(rejection.status, StatusCode::BAD_REQUEST);
        assert!(rejection.reason.contains(named), "{}", rejection.reason);
    }
}
