//! Fuzz target: an HTTP request head, as far as `http` accepts it, through `upgrade::check`.
//!
//! The input is read like a request head: a first line `METHOD PATH VERSION`, then `Name: value`
//! lines. Lines `http` refuses are skipped, so most inputs still make a request.

#![no_main]

#[path = "../../tests/common/oracles.rs"]
mod oracles;

use http::{HeaderName, HeaderValue, Method, Request, Version};
use intercessor::relay::upgrade;
use libfuzzer_sys::fuzz_target;

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

fuzz_target!(|data: &[u8]| {
    let Some(request) = request(data) else {
        return;
    };
    match upgrade::check(&request) {
        Ok(accept) => oracles::check_accepted_handshake(&request, &accept),
        Err(rejection) => oracles::check_refusal(&rejection),
    }
});
