//! Fuzz target: an HTTP request head, as far as `http` accepts it, through `upgrade::check`.
//!
//! The input is read like a request head: a first line `METHOD PATH VERSION`, then `Name: value`
//! lines. Lines `http` refuses are skipped, so most inputs still make a request.

#![no_main]

use data_encoding::BASE64;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Version, header};
use intercessor::relay::upgrade;
use libfuzzer_sys::fuzz_target;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

fn version(text: &[u8]) -> Option<Version> {
    Some(match text {
        b"HTTP/0.9" => Version::HTTP_09,
        b"HTTP/1.0" => Version::HTTP_10,
        b"HTTP/1.1" => Version::HTTP_11,
        b"HTTP/2" | b"HTTP/2.0" => Version::HTTP_2,
        b"HTTP/3" | b"HTTP/3.0" => Version::HTTP_3,
        _ => return None,
    })
}

/// Builds the request the head describes, or `None` when its first line is not one.
fn request(data: &[u8]) -> Option<Request<()>> {
    let mut lines = data
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let mut first = lines.next()?.split(|b| *b == b' ');
    let method = Method::from_bytes(first.next()?).ok()?;
    let path = first.next()?;
    let version = version(first.next()?)?;
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .version(version)
        .body(())
        .ok()?;
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            request.headers_mut().append(name, value);
        }
    }
    Some(request)
}

/// Whether any comma-separated item of any `name` header is `token`, ignoring case.
fn lists_token(request: &Request<()>, name: HeaderName, token: &str) -> bool {
    request.headers().get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',')
                .any(|item| item.trim().eq_ignore_ascii_case(token))
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(request) = request(data) else {
        return;
    };
    match upgrade::check(&request) {
        Ok(accept) => {
            assert_eq!(request.method(), Method::GET);
            assert!(request.version() >= Version::HTTP_11);
            assert!(lists_token(&request, header::UPGRADE, "websocket"));
            assert!(lists_token(&request, header::CONNECTION, "upgrade"));
            let headers = request.headers();
            assert_eq!(headers.get_all(header::HOST).iter().count(), 1);
            assert!(!headers.contains_key(header::TRANSFER_ENCODING));
            assert!(!headers.contains_key(header::CONTENT_LENGTH));
            assert_eq!(headers.get_all(header::SEC_WEBSOCKET_KEY).iter().count(), 1);
            assert_eq!(
                headers
                    .get_all(header::SEC_WEBSOCKET_VERSION)
                    .iter()
                    .count(),
                1
            );
            assert_eq!(
                headers
                    .get(header::SEC_WEBSOCKET_VERSION)
                    .map(HeaderValue::as_bytes),
                Some(&b"13"[..])
            );
            let key = headers
                .get(header::SEC_WEBSOCKET_KEY)
                .expect("an accepted handshake has a key");
            assert_eq!(
                BASE64.decode(key.as_bytes()).map(|k| k.len()),
                Ok(16),
                "{key:?}"
            );
            assert_eq!(accept, derive_accept_key(key.as_bytes()));
        }
        Err(rejection) => {
            assert!(
                rejection.status == StatusCode::BAD_REQUEST
                    || rejection.status == StatusCode::UPGRADE_REQUIRED,
                "{rejection:?}"
            );
            assert!(!rejection.reason.is_empty() && !rejection.reason.contains('\n'));
        }
    }
});
