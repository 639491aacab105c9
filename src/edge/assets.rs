//! The files served to browsers (the demo and the client library), compiled into the binary so that
//! the binary stays the only thing to deploy.

use crate::edge::response::Body;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// Path, content type, contents.
const ASSETS: [(&str, &str, &str); 5] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../demo/index.html"),
    ),
    (
        "/demo.js",
        "text/javascript; charset=utf-8",
        include_str!("../demo/demo.js"),
    ),
    (
        "/demo.css",
        "text/css; charset=utf-8",
        include_str!("../demo/demo.css"),
    ),
    (
        "/qr.js",
        "text/javascript; charset=utf-8",
        include_str!("../demo/qr.js"),
    ),
    (
        LIBRARY,
        "text/javascript; charset=utf-8",
        include_str!("../demo/intercessor.js"),
    ),
];

/// The client library, which pages on other origins import as a module.
const LIBRARY: &str = "/intercessor.js";

/// The asset at `path`, if there is one.
pub fn asset(path: &str) -> Option<Response<Body>> {
    let (_, content_type, contents) = ASSETS.iter().find(|(p, _, _)| *p == path)?;
    let mut response = Response::new(Body::new(Bytes::from_static(contents.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The page must not be framed by other sites, nor load anything from elsewhere.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; \
             media-src 'self' blob: mediastream:; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Module scripts are fetched with CORS, so another origin's page can import the library only
    // with this; it is public and carries no credentials.
    if path == LIBRARY {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    Some(response)
}
